"""Dataset readers: COCO 2017, BDD100K, PASCAL VOC 2012 and Tiny ImageNet.

Every reader turns its dataset's own layout into the same ``ImageRecord`` (see
``spa_data.records``), in two steps so that a builder can parallelise the heavy one::

    source = open_source("coco", Path("/data/coco"), "val")
    items = source.items()                  # fast, light, picklable, sorted by image id
    records = map(source.to_record, items)  # pure; polygon -> RLE etc. (run it in workers)

``source.skipped`` counts what was left out while indexing (e.g. missing images
under ``missing_images="skip"``); ``record.skipped`` counts degenerate objects.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Protocol, runtime_checkable

from spa_common.errors import SpaError
from spa_data.records import ImageRecord
from spa_data.sources.bdd import BddSource
from spa_data.sources.coco import CocoSource
from spa_data.sources.tiny_imagenet import TinyImageNetSource
from spa_data.sources.voc import VocSource

__all__ = ["SOURCES", "Source", "open_source", "BddSource", "CocoSource", "TinyImageNetSource", "VocSource"]


@runtime_checkable
class Source(Protocol):
    """What every reader provides (readers are plain classes, not subclasses of this)."""

    name: str
    root: Path
    split: str
    classes: tuple[str, ...]               # category-index order
    category_ids: Optional[tuple[int, ...]]  # COCO's original ids, else None
    skipped: dict[str, int]                # left out while indexing, by reason

    def items(self) -> list[Any]:
        """Light, picklable per-image raw items, sorted by ``sort_key(image_id)``."""

    @staticmethod
    def to_record(item: Any) -> ImageRecord:
        """Pure per-image conversion (raises SpaError on malformed input)."""


SOURCES: dict[str, type] = {cls.name: cls for cls in (CocoSource, BddSource, VocSource, TinyImageNetSource)}


def open_source(name: str, root: Path, split: str, **options: Any) -> Source:
    """Open dataset ``name`` at ``root`` for ``split``.

    ``options`` are the reader's keyword-only settings, e.g. ``missing_images``
    ("error" | "skip" | "keep", all readers), ``annotations`` (COCO),
    ``labels`` / ``images`` (BDD100K). Raises SpaError for an unknown name or a
    missing root, split or annotation file.
    """
    try:
        reader = SOURCES[name]
    except KeyError:
        raise SpaError(f"unknown source {name!r}: expected one of {', '.join(sorted(SOURCES))}") from None
    root = Path(root)
    if not root.is_dir():
        raise SpaError(f"{root}: dataset root of source {name!r} not found")
    return reader(root, split, **options)
