"""Helpers shared by the dataset readers: box clipping, mask encoding, size and id checks.

Everything here is a pure function so that ``Source.to_record`` can run in worker
processes. Degenerate objects are never dropped silently: the helpers return a
reason string that the readers count into ``ImageRecord.skipped``.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from PIL import Image

from pycocotools import mask as mask_utils

from spa_common.errors import SpaError
from spa_data.records import Box

# Reasons counted in ImageRecord.skipped. "box_clipped" objects are KEPT (with the
# clipped box); every other reason means the object or polygon part was dropped.
BOX_ZERO_SIZE = "box_zero_size"
BOX_OUTSIDE = "box_outside_image"
BOX_CLIPPED = "box_clipped"
POLYGON_UNDER_3_POINTS = "polygon_part_under_3_points"

MISSING_IMAGE_POLICIES = ("error", "skip", "keep")
MAX_SIDE = 65535        # the largest JPEG side; also keeps h * w within pycocotools' 32-bit run lengths


def check_image_size(width: Any, height: Any, where: str) -> tuple[int, int]:
    """(width, height) as ints in 1..MAX_SIDE, else a SpaError naming ``where`` (before any mask is rasterised)."""
    try:
        w, h = int(width), int(height)
    except (TypeError, ValueError, OverflowError):
        raise SpaError(f"{where}: width/height {width!r} x {height!r} are not integers") from None
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE) or (w, h) != (width, height):
        raise SpaError(f"{where}: image size {width!r} x {height!r} is not two integers from 1 to {MAX_SIDE}")
    return w, h


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise SpaError(f"{path}: {what} not found")
    return path


def check_missing_images(policy: str) -> str:
    if policy not in MISSING_IMAGE_POLICIES:
        raise SpaError(f"missing_images={policy!r}: expected one of {', '.join(MISSING_IMAGE_POLICIES)}")
    return policy


def clip_box(box: Sequence[float], width: int, height: int) -> tuple[Optional[Box], Optional[str]]:
    """Clip an (x1, y1, x2, y2) box to the image.

    Returns ``(box, None)`` when it lies inside, ``(clipped, BOX_CLIPPED)`` when it
    stuck out, and ``(None, reason)`` when it has no area before or after clipping.
    """
    x1, y1, x2, y2 = map(float, box)
    if not (x2 > x1 and y2 > y1):  # also catches NaN
        return None, BOX_ZERO_SIZE
    cx1, cy1 = max(x1, 0.0), max(y1, 0.0)
    cx2, cy2 = min(x2, float(width)), min(y2, float(height))
    if not (cx2 > cx1 and cy2 > cy1):
        return None, BOX_OUTSIDE
    if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
        return (cx1, cy1, cx2, cy2), BOX_CLIPPED
    return (x1, y1, x2, y2), None


def rle_to_json(rle: dict) -> dict:
    """pycocotools RLE (bytes counts) -> the records' JSON form (str counts)."""
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def polygons_to_rles(polygons: Sequence[Sequence[float]], owners: Sequence[int], num_objects: int,
                     height: int, width: int) -> list[Optional[dict]]:
    """Rasterise every polygon part of one image in ONE pycocotools call.

    ``owners[i]`` is the object index of ``polygons[i]``; parts of one object are
    merged (union). Returns one JSON RLE per object, None for objects with no part.
    """
    masks: list[Optional[dict]] = [None] * num_objects
    if not polygons:
        return masks
    rles = mask_utils.frPyObjects(list(polygons), height, width)
    parts: list[list[dict]] = [[] for _ in range(num_objects)]
    for owner, rle in zip(owners, rles):
        parts[owner].append(rle)
    for i, obj_parts in enumerate(parts):
        if obj_parts:
            rle = obj_parts[0] if len(obj_parts) == 1 else mask_utils.merge(obj_parts, intersect=False)
            masks[i] = rle_to_json(rle)
    return masks


def encode_masks(masks: np.ndarray) -> list[dict]:
    """Binary masks (N, H, W) -> JSON RLEs with pycocotools (Fortran-order uint8)."""
    if len(masks) == 0:
        return []
    stacked = np.asfortranarray(np.moveaxis(masks.astype(np.uint8, copy=False), 0, -1))
    return [rle_to_json(r) for r in mask_utils.encode(stacked)]


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise SpaError(f"{path}: image not found") from None
    except OSError as e:
        raise SpaError(f"{path}: unreadable image header ({e})") from None


def count_reasons(reasons: Iterable[Optional[str]]) -> tuple[tuple[str, int], ...]:
    """Sorted (reason, count) pairs for ImageRecord.skipped; None entries ignored."""
    counts = Counter(r for r in reasons if r is not None)
    return tuple(sorted(counts.items()))
