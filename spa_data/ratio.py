"""Object-pixel ratio: the fraction of an image covered by the union of its objects.

``ratio = |union of object pixels| / (width * height)``; overlapping objects count
once. Computed on the annotations with pycocotools RLE operations (``frPyObjects``,
``merge``, ``area``); no image is decoded.

Pixels of a box: the box ``(x1, y1, x2, y2)`` is rasterised exactly as
pycocotools rasterises ``frPyObjects`` of the box ``[x1, y1, x2 - x1, y2 - y1]``
(it becomes a 4-corner polygon; coordinates are quantised to 1/5 px), so pixel
column ``j`` is covered iff ``x1 < j + 0.5 <= x2`` (same for rows). Integer boxes
therefore cover exactly columns ``x1 .. x2 - 1``; ``(0.5, 0, 3.5, 1)`` covers 1..3.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from pycocotools import mask as mask_utils

from spa_common.errors import SpaError
from spa_data.records import ImageRecord

RATIO_FROM = ("auto", "masks", "boxes")


def object_pixel_ratio(record: ImageRecord, *, ratio_from: str = "auto", crowd: bool = True,
                       canvas: Optional[tuple[int, int]] = None) -> tuple[float, str]:
    """Return ``(ratio, method)`` for one image.

    ratio_from: ``"auto"`` uses masks when every counted object has one, boxes
        otherwise; ``"masks"`` uses each object's mask and falls back to its box
        where it has none (method ``"masks+boxes"`` then); ``"boxes"`` uses boxes.
        An image without (counted) objects has ratio 0 and method ``"boxes"``
        unless masks were asked for.
    crowd: crowd regions count as object pixels; ``False`` leaves them out.
    canvas: ``(W2, H2)``: the image sits at the upper-left of a W2 x H2 canvas
        (IN-S padding) and the ratio is taken over the canvas area.
    """
    if ratio_from not in RATIO_FROM:
        raise SpaError(f"ratio_from={ratio_from!r}: expected one of {', '.join(RATIO_FROM)}")
    objects = [o for o in record.objects if crowd or not o.iscrowd]
    use_masks = ratio_from == "masks" or (
        ratio_from == "auto" and bool(objects) and all(o.mask is not None for o in objects))
    rles = [o.mask for o in objects if use_masks and o.mask is not None]
    boxes = [o.box for o in objects if not use_masks or o.mask is None]
    if boxes:
        xywh = np.array([[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in boxes], dtype=np.float64)
        rles.extend(mask_utils.frPyObjects(xywh, record.height, record.width))
    union = rles[0] if len(rles) == 1 else mask_utils.merge(rles, intersect=False) if rles else None
    covered = int(mask_utils.area(union)) if union is not None else 0

    width, height = record.width, record.height
    if canvas is not None:
        width, height = int(canvas[0]), int(canvas[1])
        if width < record.width or height < record.height:
            raise SpaError(f"{record.file}: canvas {width}x{height} is smaller than the image "
                           f"{record.width}x{record.height}")
    if width <= 0 or height <= 0:
        raise SpaError(f"{record.file}: image {record.image_id} has size {width}x{height}")
    method = "masks+boxes" if use_masks and boxes else ("masks" if use_masks else "boxes")
    return covered / (width * height), method
