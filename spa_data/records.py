"""The one record type every dataset reader yields.

Box convention (all datasets, after each reader's conversion): ``(x1, y1, x2, y2)``
in continuous pixel coordinates of the original image, pixel ``i`` covering
``[i, i + 1)``; so a box covers ``x2 - x1`` pixels in width. This is COCO's
convention (``[x, y, w, h]`` -> ``(x, y, x + w, y + h)``). Readers convert:
VOC 1-based inclusive ``xmin..xmax`` -> ``(xmin - 1, xmax)``; BDD100K
``x2 - x1 + 1`` wide -> ``(x1, x2 + 1)``; Tiny ImageNet 0-based inclusive
``0..63`` -> ``(x1, x2 + 1)``.

Masks are kept as compressed COCO RLE dicts (``{"size": [h, w], "counts": str}``)
at the original image size; polygons are converted with pycocotools when read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from spa_common.errors import SpaError

ImageId = Union[int, str]
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ObjectRecord:
    category: int                      # 0-based index into the dataset's class list
    box: Box                           # x1, y1, x2, y2 (see module docstring)
    mask: Optional[dict] = None        # compressed RLE at image size, or None
    iscrowd: bool = False
    difficult: bool = False            # VOC
    truncated: bool = False            # VOC / BDD


@dataclass(frozen=True)
class ImageRecord:
    image_id: ImageId                  # COCO: int; others: str (file stem)
    file: str                          # path relative to the dataset root, '/'-separated
    width: int
    height: int
    objects: tuple[ObjectRecord, ...] = ()
    label: Optional[int] = None        # image-level class (Tiny ImageNet), else None
    skipped: tuple[tuple[str, int], ...] = field(default=())  # (reason, count) of dropped degenerate objects


def sort_key(image_id: ImageId) -> tuple[int, Union[int, str]]:
    """Total order over ids: integers numerically, then strings."""
    return (0, image_id) if isinstance(image_id, int) else (1, image_id)


def check_image_id(image_id: Any, where: str) -> Any:
    """A string, or an integer that fits 64 bits (what the shards store), else a SpaError naming ``where``."""
    if isinstance(image_id, str) or (type(image_id) is int and -2**63 <= image_id < 2**63):
        return image_id
    raise SpaError(f"{where}: image id {image_id!r} is neither a string nor an integer within 64 bits")
