"""COCO 2017 reader: ``annotations/{kind}_{split}2017.json`` with images in ``{split}2017/``.

Which annotation file: ``annotations="instances"`` (the default when
``instances_{split}2017.json`` exists) or ``annotations="person_keypoints"``
(the default when only ``person_keypoints_{split}2017.json`` exists; it carries
the same boxes and masks for the person category alone). A split that already
ends in a year (``val2014``) is used as is.

Categories are indexed in the order of their original ids (1..90 with gaps ->
0..79); ``category_ids`` keeps the original ids. Boxes are float ``[x, y, w, h]``
-> ``(x, y, x + w, y + h)``. Polygons (one or several parts per object) are
rasterised with pycocotools, all parts of an image in one call, parts of one
object merged; uncompressed crowd RLE is compressed; compressed RLE is kept as is.
Images listed in the JSON without annotations are kept (zero objects). ``classes``
and ``category_ids`` come from the JSON, so they are set by ``items()``. An object
whose polygon parts are all degenerate keeps its box and has no mask.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pycocotools import mask as mask_utils

from spa_common.errors import SpaError
from spa_common.jsonio import read_json
from spa_data.records import ImageRecord, ObjectRecord, check_image_id, sort_key
from spa_data.sources.common import (POLYGON_UNDER_3_POINTS, check_image_size, check_missing_images, clip_box,
                                     count_reasons, polygons_to_rles, require_dir, rle_to_json)

ANNOTATION_KINDS = ("instances", "person_keypoints")


@dataclass(frozen=True)
class CocoItem:
    """One image with its raw annotations: (ann id, category index, bbox, segmentation, iscrowd)."""
    json_file: str
    image_id: int
    file: str
    width: int
    height: int
    annotations: tuple[tuple[Any, int, Any, Any, int], ...]


class CocoSource:
    name = "coco"

    def __init__(self, root: Path, split: str, *, annotations: Optional[str] = None,
                 missing_images: str = "error"):
        self.root, self.split = Path(root), split
        self.missing_images = check_missing_images(missing_images)
        self.split_dir = split if re.search(r"\d{4}$", split) else f"{split}2017"
        self.annotation_file = self._annotation_file(annotations)
        self.image_dir = self.root / self.split_dir
        self.classes: tuple[str, ...] = ()
        self.category_ids: Optional[tuple[int, ...]] = None
        self.skipped: dict[str, int] = {}

    def _annotation_file(self, kind: Optional[str]) -> Path:
        folder = require_dir(self.root / "annotations", "COCO annotations folder")
        candidates = [kind] if kind is not None else list(ANNOTATION_KINDS)
        for k in candidates:
            if k not in ANNOTATION_KINDS:
                raise SpaError(f"annotations={k!r}: expected one of {', '.join(ANNOTATION_KINDS)}")
            path = folder / f"{k}_{self.split_dir}.json"
            if path.is_file():
                return path
        names = " or ".join(f"{k}_{self.split_dir}.json" for k in candidates)
        raise SpaError(f"{folder}: no {names} for split {self.split!r}")

    def items(self) -> list[CocoItem]:
        path = self.annotation_file
        data = read_json(path, "annotation file")
        if not isinstance(data, dict):
            raise SpaError(f"{path}: not a COCO annotation file (the top level is a JSON {type(data).__name__}, "
                           "not an object with images, annotations and categories)")
        try:
            categories = sorted(data["categories"], key=lambda c: c["id"])
            images = data["images"]
            annotations = data.get("annotations", [])
        except (KeyError, TypeError) as e:
            raise SpaError(f"{path}: not a COCO annotation file (missing {e})") from None
        index_of = {c["id"]: i for i, c in enumerate(categories)}
        self.classes = tuple(c["name"] for c in categories)
        self.category_ids = tuple(c["id"] for c in categories)

        per_image: dict[Any, list] = {}
        for img in images:
            if img.get("id") in per_image:
                raise SpaError(f"{path}: image id {img.get('id')!r} listed twice")
            per_image[img.get("id")] = []
        for ann in annotations:   # hot loop (860k annotations in train2017): lookups only
            try:
                bucket, category = per_image[ann["image_id"]], index_of[ann["category_id"]]
                bucket.append((ann["id"], category, ann.get("bbox"), ann.get("segmentation"), ann.get("iscrowd", 0)))
            except (KeyError, TypeError):
                raise SpaError(_bad_annotation(path, ann, per_image, index_of)) from None

        items, missing, root = [], Counter(), str(self.root)
        for img in images:
            try:
                image_id, file_name, width, height = img["id"], img["file_name"], img["width"], img["height"]
            except (KeyError, TypeError):
                raise SpaError(f"{path}: image {img.get('id')!r}: missing file_name, width or height") from None
            check_image_id(image_id, str(path))
            width, height = check_image_size(width, height, f"{path}: image {image_id!r}")
            rel = f"{self.split_dir}/{file_name}"
            if self.missing_images != "keep" and not os.path.isfile(os.path.join(root, rel)):
                if self.missing_images == "error":
                    raise SpaError(f"{self.root / rel}: image {image_id} listed in {path.name} not found")
                missing["missing_image"] += 1
                continue
            items.append(CocoItem(str(path), image_id, rel, width, height, tuple(per_image[image_id])))
        self.skipped = dict(missing)
        items.sort(key=lambda it: sort_key(it.image_id))
        return items

    @staticmethod
    def to_record(item: CocoItem) -> ImageRecord:
        h, w = item.height, item.width
        kept: list[tuple[int, tuple, bool, Any]] = []   # category, box, iscrowd, rle (crowd) or None
        reasons: list[Optional[str]] = []
        polygons: list[list[float]] = []
        owners: list[int] = []
        for ann_id, category, bbox, seg, iscrowd in item.annotations:
            try:
                x, y, bw, bh = map(float, bbox)
            except (TypeError, ValueError):
                raise SpaError(f"{_where(item, ann_id)}: bbox {bbox!r:.60} is not [x, y, w, h]") from None
            box, reason = clip_box((x, y, x + bw, y + bh), w, h)
            reasons.append(reason)
            if box is None:
                continue
            rle = None
            if isinstance(seg, list):
                for part in seg:
                    if len(part) < 6:
                        reasons.append(POLYGON_UNDER_3_POINTS)
                    elif len(part) % 2:
                        raise SpaError(f"{_where(item, ann_id)}: polygon with an odd number of coordinates "
                                       f"({len(part)})")
                    else:
                        polygons.append(part)
                        owners.append(len(kept))
            elif isinstance(seg, dict):
                rle = _crowd_rle(seg, h, w, _where(item, ann_id))
            kept.append((category, box, bool(iscrowd), rle))
        try:
            poly_masks = polygons_to_rles(polygons, owners, len(kept), h, w)
        except (TypeError, ValueError) as e:
            raise SpaError(f"{item.json_file}: image {item.image_id}: bad polygon ({e})") from None
        objects = tuple(ObjectRecord(category=c, box=b, mask=rle if rle is not None else pm, iscrowd=crowd)
                        for (c, b, crowd, rle), pm in zip(kept, poly_masks))
        return ImageRecord(image_id=item.image_id, file=item.file, width=w, height=h,
                           objects=objects, skipped=count_reasons(reasons))


def _where(item: CocoItem, ann_id: Any) -> str:
    """Names an annotation in error messages (built only on the error path: 860k annotations in train)."""
    return f"{item.json_file}: annotation {ann_id} (image {item.image_id})"


def _bad_annotation(path: Path, ann: Any, per_image: dict, index_of: dict) -> str:
    """The one-line message for an annotation that failed the indexing loop."""
    if not isinstance(ann, dict) or not {"id", "image_id", "category_id"} <= ann.keys():
        return f"{path}: annotation {str(ann)[:80]}: missing id, image_id or category_id"
    if ann["category_id"] not in index_of:
        return f"{path}: annotation {ann['id']} (image {ann['image_id']}): unknown category id {ann['category_id']}"
    return f"{path}: annotation {ann['id']}: unknown image id {ann['image_id']}"


def _crowd_rle(seg: dict, height: int, width: int, where: str) -> dict:
    """Uncompressed RLE (list counts) -> compressed; compressed RLE kept as is."""
    size = seg.get("size")
    if not isinstance(size, list) or [int(v) for v in size] != [height, width]:
        raise SpaError(f"{where}: RLE size {size!r} differs from the image size [{height}, {width}]")
    counts = seg.get("counts")
    if isinstance(counts, list):
        if sum(counts) != height * width:
            raise SpaError(f"{where}: uncompressed RLE covers {sum(counts)} pixels, image has {height * width}")
        return rle_to_json(mask_utils.frPyObjects(seg, height, width))
    if isinstance(counts, (str, bytes)):
        return rle_to_json(seg)
    raise SpaError(f"{where}: RLE counts is neither a list nor a string")
