"""spa_data: sparse subsets, selection labels and HDF5 shards for SPA / SPT."""
from spa_data.errors import SpaError
from spa_data.records import ImageRecord, ObjectRecord

__version__ = "0.1.0"
__all__ = ["SpaError", "ImageRecord", "ObjectRecord", "__version__"]
