"""BDD100K reader: det_20, the 2018 labels and the ins_seg (10k) labels, in Scalabel format.

Label file for a split, the first that exists (``labels=`` names another, relative
to the root or absolute; ``images=`` overrides the image folder):

==============================================  ======================
``labels/det_20/det_{split}.json``              ``images/100k/{split}``
``labels/bdd100k_labels_images_{split}.json``   ``images/100k/{split}``
``labels/ins_seg/rles/ins_seg_{split}.json``    ``images/10k/{split}``
``labels/ins_seg/polygons/ins_seg_{split}.json``  ``images/10k/{split}``
``labels/ins_seg/bitmasks/{split}/`` (folder)     ``images/10k/{split}``
==============================================  ======================

The file is a bare list of frames or ``{"frames": [...]}``; frames without a
``labels`` key have no objects. Classes are the 10 detection classes; older names
map as in bdd100k's ``det`` config (person -> pedestrian, bike -> bicycle, motor ->
motorcycle, van/caravan -> car) and its ignored classes (other person, other
vehicle, trailer) become crowd regions of pedestrian/car/truck, as bdd100k's
``to_coco`` does. Lane and drivable-area labels are not objects: they are
counted per image (``not_an_object``) and left out; any other category is an error.

Boxes: ``box2d`` is inclusive (``x2 - x1 + 1`` wide) -> ``(x1, y1, x2 + 1, y2 + 1)``;
labels without ``box2d`` get the bounding box of their mask. Masks: ``rle``
(kept as is) or closed ``poly2d`` (all parts of an image rasterised in one
pycocotools call); Bezier control points (type ``C``) are used as polygon vertices,
a piecewise-linear approximation of the curve. Open poly2d (lines) carry no area.
Bitmasks (RGBA PNGs, one per image, ``<stem>.png``): R is the ins_seg category
id (1 pedestrian .. 8 bicycle), G the attribute bits (1 ignore, 2 crowd, 4 occluded,
8 truncated; ignore or crowd -> iscrowd), B * 256 + A the instance id; each
(category, attributes, instance) triple is one object, its box the mask's bounding
box. The PNG is an annotation, so it is decoded (in ``to_record``). Image size: the frame's ``size``, else an RLE's ``size``,
else the image header; a missing image under ``missing_images="keep"`` gets
BDD100K's fixed 1280x720.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from spa_common.errors import SpaError
from spa_common.jsonio import read_json
from spa_data.records import ImageRecord, ObjectRecord, sort_key
from spa_data.sources.common import (POLYGON_UNDER_3_POINTS, check_image_size, check_missing_images, clip_box,
                                     count_reasons, encode_masks, image_size, polygons_to_rles)

BDD_CLASSES = ("pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
               "traffic light", "traffic sign")
NAME_MAPPING = {"person": "pedestrian", "bike": "bicycle", "motor": "motorcycle", "van": "car", "caravan": "car"}
IGNORED_MAPPING = {"other person": "pedestrian", "other vehicle": "car", "trailer": "truck"}
NON_OBJECT_PREFIXES = ("lane", "area", "drivable area")
IMAGE_SIZE = (1280, 720)   # every BDD100K image; used only under missing_images="keep"
NOT_AN_OBJECT = "not_an_object"
OPEN_POLY2D = "poly2d_open_ignored"

INS_SEG_CLASSES = BDD_CLASSES[:8]   # bitmask category ids 1..8, in this order
BITMASK_IGNORE, BITMASK_CROWD, BITMASK_TRUNCATED = 1, 2, 8

LABEL_FILES = (("labels/det_20/det_{split}.json", "images/100k/{split}"),
               ("labels/bdd100k_labels_images_{split}.json", "images/100k/{split}"),
               ("labels/ins_seg/rles/ins_seg_{split}.json", "images/10k/{split}"),
               ("labels/ins_seg/polygons/ins_seg_{split}.json", "images/10k/{split}"),
               ("labels/ins_seg/bitmasks/{split}", "images/10k/{split}"))


@dataclass(frozen=True)
class BddItem:
    """One frame; labels are (id, category index, iscrowd, truncated, box2d, poly2d, rle)."""
    labels_file: str
    image_id: str
    file: str
    image_path: Optional[str]          # None: missing on disk and kept
    size: Optional[tuple[int, int]]    # (width, height) from the frame, if it has one
    labels: tuple[tuple[Any, int, bool, bool, Any, Any, Any], ...]
    not_objects: int = 0               # lane / drivable-area labels left out
    bitmask: Optional[str] = None      # ins_seg bitmask PNG (then ``labels`` is empty)


class BddSource:
    name = "bdd"
    classes = BDD_CLASSES
    category_ids = None

    def __init__(self, root: Path, split: str, *, labels: Optional[str | Path] = None,
                 images: Optional[str] = None, missing_images: str = "error"):
        self.root, self.split = Path(root), split
        self.missing_images = check_missing_images(missing_images)
        self.labels_file, image_dir = self._label_file(labels)
        self.image_dir = images if images is not None else image_dir
        self.skipped: dict[str, int] = {}

    def _label_file(self, labels: Optional[str | Path]) -> tuple[Path, str]:
        if labels is not None:
            path = Path(labels) if Path(labels).is_absolute() else self.root / labels
            if not path.exists():
                raise SpaError(f"{path}: BDD100K label file not found")
            return path, LABEL_FILES[2 if "ins_seg" in str(labels) else 0][1].format(split=self.split)
        for label_pattern, image_pattern in LABEL_FILES:
            path = self.root / label_pattern.format(split=self.split)
            if path.exists():
                return path, image_pattern.format(split=self.split)
        raise SpaError(f"{self.root}: no BDD100K label file for split {self.split!r} "
                       f"(looked for {', '.join(p.format(split=self.split) for p, _ in LABEL_FILES)})")

    def items(self) -> list[BddItem]:
        path = self.labels_file
        if path.is_dir():
            return self._bitmask_items(path)
        data = read_json(path, "annotation file")
        frames = data.get("frames") if isinstance(data, dict) else data
        if not isinstance(frames, list):
            raise SpaError(f"{path}: expected a list of frames or {{\"frames\": [...]}}")
        items, skipped = [], Counter()
        for frame in frames:
            if not isinstance(frame, dict) or not isinstance(frame.get("name"), str):
                raise SpaError(f"{path}: frame {str(frame)[:60]!r} has no name")
            name = frame["name"]
            found = self._image_path(name, skipped, path)
            if found is None:
                continue
            rel, image_path = found
            converted = [_label(label, f"{path}: frame {name}") for label in frame.get("labels") or ()]
            labels = tuple(c for c in converted if c is not None)
            items.append(BddItem(str(path), Path(name).stem, rel, image_path, _frame_size(frame, path), labels,
                                 not_objects=len(converted) - len(labels)))
        self.skipped = dict(skipped)
        items.sort(key=lambda it: sort_key(it.image_id))
        return items

    def _image_path(self, name: str, skipped: Counter, where: Path) -> tuple[str, Optional[str]] | None:
        """(relative file, absolute path or None when kept missing); None when skipped."""
        rel = f"{self.image_dir}/{name}"
        image_path = str(self.root / rel)
        if os.path.isfile(image_path):
            return rel, image_path
        if self.missing_images == "error":
            raise SpaError(f"{image_path}: image of frame {name} in {where.name} not found")
        if self.missing_images == "skip":
            skipped["missing_image"] += 1
            return None
        return rel, None

    def _bitmask_items(self, folder: Path) -> list[BddItem]:
        items, skipped = [], Counter()
        for png in sorted(folder.glob("*.png")):
            found = self._image_path(f"{png.stem}.jpg", skipped, folder)
            if found is not None:
                items.append(BddItem(str(folder), png.stem, found[0], found[1], None, (), bitmask=str(png)))
        self.skipped = dict(skipped)
        items.sort(key=lambda it: sort_key(it.image_id))
        return items

    @staticmethod
    def to_record(item: BddItem) -> ImageRecord:
        if item.bitmask is not None:
            return _bitmask_record(item)
        width, height = _record_size(item)
        pending, polygons, owners = [], [], []
        reasons = [NOT_AN_OBJECT] * item.not_objects
        for label_id, category, crowd, truncated, box2d, poly2d, rle in item.labels:
            where = f"{item.labels_file}: frame {item.file.rsplit('/', 1)[-1]} label {label_id}"
            mask = _rle(rle, width, height, where) if rle else None
            parts = _poly2d_parts(poly2d, where, reasons) if mask is None and poly2d else []
            if not (box2d or mask or parts) and poly2d:
                continue   # only degenerate or open poly2d parts: counted above
            raw = _label_box(box2d, mask, parts, where)
            box, reason = clip_box(raw, width, height)
            reasons.append(reason)
            if box is None:
                continue
            for part in parts:
                polygons.append(part)
                owners.append(len(pending))
            pending.append((category, box, mask, crowd, truncated))
        poly_masks = polygons_to_rles(polygons, owners, len(pending), height, width)
        objects = tuple(ObjectRecord(category=c, box=b, mask=m if m is not None else pm, iscrowd=crowd,
                                     truncated=t) for (c, b, m, crowd, t), pm in zip(pending, poly_masks))
        return ImageRecord(image_id=item.image_id, file=item.file, width=width, height=height,
                           objects=objects, skipped=count_reasons(reasons))


def _label(label: dict, where: str) -> Optional[tuple]:
    """Raw Scalabel label -> light tuple; None for lane / drivable-area labels."""
    category = label.get("category")
    if not isinstance(category, str):
        raise SpaError(f"{where} label {label.get('id')}: no category")
    crowd = category in IGNORED_MAPPING
    name = IGNORED_MAPPING.get(category) or NAME_MAPPING.get(category, category)
    if name not in BDD_CLASSES:
        if category.startswith(NON_OBJECT_PREFIXES):
            return None
        raise SpaError(f"{where} label {label.get('id')}: unknown category {category!r}")
    attributes = label.get("attributes") or {}
    return (label.get("id"), BDD_CLASSES.index(name), crowd or bool(attributes.get("crowd", False)),
            bool(attributes.get("truncated", False)), label.get("box2d"), label.get("poly2d"), label.get("rle"))


def _poly2d_parts(poly2d: Any, where: str, reasons: list) -> list[list[float]]:
    """Closed poly2d parts as flat [x0, y0, x1, y1, ...] lists ('C' control points kept as vertices)."""
    parts = []
    for part in poly2d:
        if not isinstance(part, dict):
            raise SpaError(f"{where}: poly2d part {part!r:.60} is not {{vertices, types, closed}}")
        vertices = part.get("vertices") or []
        if not part.get("closed", True):
            reasons.append(OPEN_POLY2D)
        elif len(vertices) < 3:
            reasons.append(POLYGON_UNDER_3_POINTS)
        else:
            try:
                parts.append([float(v) for x, y in vertices for v in (x, y)])
            except (TypeError, ValueError):
                raise SpaError(f"{where}: poly2d vertices are not [x, y] pairs") from None
    return parts


def _label_box(box2d: Any, mask: Optional[dict], parts: list[list[float]], where: str) -> tuple:
    """x1, y1, x2, y2 (unclipped): from the inclusive box2d, else the mask's or the polygon's extent."""
    if box2d:
        try:
            return float(box2d["x1"]), float(box2d["y1"]), float(box2d["x2"]) + 1, float(box2d["y2"]) + 1
        except (KeyError, TypeError, ValueError):
            raise SpaError(f"{where}: box2d {box2d!r:.80} lacks x1, y1, x2, y2") from None
    if mask is not None:
        x, y, w, h = mask_utils.toBbox(mask).tolist()
        return x, y, x + w, y + h
    if parts:
        xs = [v for p in parts for v in p[0::2]]
        ys = [v for p in parts for v in p[1::2]]
        return min(xs), min(ys), max(xs), max(ys)
    raise SpaError(f"{where}: label has no box2d, closed poly2d or rle")


def _frame_size(frame: dict, path: Path) -> Optional[tuple[int, int]]:
    size = frame.get("size")
    if not size:
        return None
    try:
        width, height = size["width"], size["height"]
    except (KeyError, TypeError):
        raise SpaError(f"{path}: frame {frame['name']}: size {size!r} is not {{width, height}}") from None
    return check_image_size(width, height, f"{path}: frame {frame['name']}")


def _record_size(item: BddItem) -> tuple[int, int]:
    if item.size is not None:
        return item.size
    for label in item.labels:
        rle = label[6]
        if rle and isinstance(rle.get("size"), list) and len(rle["size"]) == 2:
            return int(rle["size"][1]), int(rle["size"][0])
    if item.image_path is not None:
        return image_size(Path(item.image_path))
    return IMAGE_SIZE


def _rle(rle: dict, width: int, height: int, where: str) -> dict:
    size, counts = rle.get("size"), rle.get("counts")
    if not isinstance(size, list) or [int(v) for v in size] != [height, width]:
        raise SpaError(f"{where}: RLE size {size!r} differs from the image size [{height}, {width}]")
    if not isinstance(counts, str):
        raise SpaError(f"{where}: RLE counts is not a compressed string")
    return {"size": [height, width], "counts": counts}


def _bitmask_record(item: BddItem) -> ImageRecord:
    """Objects of an ins_seg bitmask PNG: one per (category, attributes, instance id)."""
    try:
        with Image.open(item.bitmask) as im:
            bitmask = np.asarray(im.convert("RGBA") if im.mode != "RGBA" else im, dtype=np.int32)
    except OSError as e:
        raise SpaError(f"{item.bitmask}: unreadable bitmask PNG ({e})") from None
    height, width = bitmask.shape[:2]
    identity = (bitmask[..., 0] << 24) | (bitmask[..., 1] << 16) | (bitmask[..., 2] << 8) | bitmask[..., 3]
    ids = np.unique(identity)
    ids = ids[(ids >> 24) > 0]                     # category 0 is background
    bad = ids[(ids >> 24) > len(INS_SEG_CLASSES)]
    if bad.size:
        raise SpaError(f"{item.bitmask}: unknown ins_seg category id {int(bad[0] >> 24)}")
    rles = encode_masks(identity[None] == ids[:, None, None])
    objects, reasons = [], []
    for value, rle in zip(ids.tolist(), rles):
        x, y, w, h = mask_utils.toBbox(rle).tolist()
        box, reason = clip_box((x, y, x + w, y + h), width, height)
        reasons.append(reason)
        attributes = (value >> 16) & 255
        objects.append(ObjectRecord(category=(value >> 24) - 1, box=box, mask=rle,
                                    iscrowd=bool(attributes & (BITMASK_IGNORE | BITMASK_CROWD)),
                                    truncated=bool(attributes & BITMASK_TRUNCATED)))
    return ImageRecord(image_id=item.image_id, file=item.file, width=width, height=height,
                       objects=tuple(objects), skipped=count_reasons(reasons))
