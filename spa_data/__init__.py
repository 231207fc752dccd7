"""spa_data: sparse subsets, selection labels and HDF5 shards for SPA / SPT.

``import spa_data`` stays light (no torch): the loader is imported on first use.
"""
from spa_data.records import ImageRecord, ObjectRecord

__version__ = "0.1.0"
__all__ = ["ImageRecord", "ObjectRecord", "ShardDataset", "make_loader", "__version__"]


def __getattr__(name: str):
    if name in ("ShardDataset", "make_loader"):
        from spa_data import loader
        return getattr(loader, name)
    raise AttributeError(f"module 'spa_data' has no attribute {name!r}")
