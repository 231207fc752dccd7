"""PASCAL VOC 2012 reader: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/{split}.txt``,
``SegmentationObject/`` (per-object masks where present).

``root`` may be the ``VOC2012`` folder itself, or ``VOCdevkit`` / its parent (the
reader descends to ``VOC2012``; ``source.root`` is the folder it reads). The split
list is ``ImageSets/Main/{split}.txt`` when ``ImageSets/Main`` exists; without it
every ``Annotations/*.xml`` is read, whatever the split.

Boxes are 1-based and inclusive (``xmin=1, xmax=3`` covers pixels 0..2) ->
``(xmin - 1, ymin - 1, xmax, ymax)``; float coordinates, missing ``truncated`` /
``difficult`` / ``pose`` and any element order are accepted. Masks: index ``k``
of ``SegmentationObject/<id>.png`` is the ``k``-th ``<object>`` of the XML (1-based,
counting every object, also skipped ones); 255 is the void border and belongs to
no object. ``SegmentationClass`` holds the same pixels by class and is not needed
for records (the tests use it as an independent check). Image size comes from
``<size>``, or the image header when that is absent or zero.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from spa_common.errors import SpaError
from spa_data.records import ImageRecord, ObjectRecord, sort_key
from spa_data.sources.common import (check_image_size, check_missing_images, clip_box, count_reasons, encode_masks,
                                     image_size)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
CLASS_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}
VOID = 255


@dataclass(frozen=True)
class VocItem:
    image_id: str
    xml: str                  # absolute path of the annotation
    file: str                 # image relative to the root
    image_path: str           # absolute image path (header read when <size> is missing)
    object_png: Optional[str]  # SegmentationObject PNG, None where the image is not segmented


class VocSource:
    name = "voc"
    classes = VOC_CLASSES
    category_ids = None

    def __init__(self, root: Path, split: str, *, missing_images: str = "error"):
        self.root = _voc2012_folder(Path(root))
        self.split = split
        self.missing_images = check_missing_images(missing_images)
        if not (self.root / "Annotations").is_dir():
            raise SpaError(f"{self.root / 'Annotations'}: VOC annotation folder not found")
        self.skipped: dict[str, int] = {}

    def _image_ids(self) -> list[str]:
        sets = self.root / "ImageSets" / "Main"
        if not sets.is_dir():
            return [p.stem for p in (self.root / "Annotations").glob("*.xml")]
        listing = sets / f"{self.split}.txt"
        if not listing.is_file():
            raise SpaError(f"{listing}: split {self.split!r} not found")
        return [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]

    def items(self) -> list[VocItem]:
        missing: Counter = Counter()
        items = []
        for image_id in sorted(set(self._image_ids())):
            xml = self.root / "Annotations" / f"{image_id}.xml"
            if not xml.is_file():
                raise SpaError(f"{xml}: annotation of image {image_id} (split {self.split}) not found")
            rel = f"JPEGImages/{image_id}.jpg"
            if self.missing_images != "keep" and not os.path.isfile(self.root / rel):
                if self.missing_images == "error":
                    raise SpaError(f"{self.root / rel}: image {image_id} not found")
                missing["missing_image"] += 1
                continue
            png = self.root / "SegmentationObject" / f"{image_id}.png"
            items.append(VocItem(image_id, str(xml), rel, str(self.root / rel),
                                 str(png) if png.is_file() else None))
        self.skipped = dict(missing)
        items.sort(key=lambda it: sort_key(it.image_id))
        return items

    @staticmethod
    def to_record(item: VocItem) -> ImageRecord:
        try:
            tree = ET.parse(item.xml).getroot()
        except ET.ParseError as e:
            raise SpaError(f"{item.xml}: malformed XML ({e})") from None
        width, height = _size(tree, item)
        objects, reasons, png_indices = [], [], []
        for k, obj in enumerate(tree.findall("object"), 1):
            where = f"{item.xml}: object {k}"
            name = obj.findtext("name")
            if name is None or not name.strip():
                raise SpaError(f"{where}: no <name> (the class of the object)")
            name = name.strip()
            if name not in CLASS_INDEX:
                raise SpaError(f"{where}: unknown class {name!r}")
            box, reason = clip_box(_voc_box(obj, where), width, height)
            reasons.append(reason)
            if box is None:
                continue
            objects.append(ObjectRecord(category=CLASS_INDEX[name], box=box,
                                        difficult=_flag(obj, "difficult", where),
                                        truncated=_flag(obj, "truncated", where)))
            png_indices.append(k)
        if item.object_png is not None and objects:
            masks = _object_masks(item, png_indices, width, height, num_xml_objects=len(reasons))
            objects = [replace(o, mask=m) for o, m in zip(objects, masks)]
        return ImageRecord(image_id=item.image_id, file=item.file, width=width, height=height,
                           objects=tuple(objects), skipped=count_reasons(reasons))


def _voc2012_folder(root: Path) -> Path:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "Annotations").is_dir():
            return candidate
    return root


def _number(elem: ET.Element, tag: str, where: str) -> float:
    text = elem.findtext(tag)
    try:
        return float(text)
    except (TypeError, ValueError):
        raise SpaError(f"{where}: <{tag}> is {text!r}, not a number") from None


def _voc_box(obj: ET.Element, where: str) -> tuple[float, float, float, float]:
    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise SpaError(f"{where}: no <bndbox>")
    xmin, ymin, xmax, ymax = (_number(bndbox, t, where) for t in ("xmin", "ymin", "xmax", "ymax"))
    return xmin - 1, ymin - 1, xmax, ymax   # 1-based inclusive -> 0-based exclusive


def _flag(obj: ET.Element, tag: str, where: str) -> bool:
    return obj.find(tag) is not None and bool(_number(obj, tag, where))


def _size(tree: ET.Element, item: VocItem) -> tuple[int, int]:
    size = tree.find("size")
    if size is not None:
        width, height = (_number(size, t, item.xml) if size.findtext(t) else 0 for t in ("width", "height"))
        if width > 0 and height > 0:
            return check_image_size(width, height, f"{item.xml}: <size>")
    return image_size(Path(item.image_path))


def _object_masks(item: VocItem, png_indices: list[int], width: int, height: int,
                  num_xml_objects: int) -> list[dict]:
    try:
        with Image.open(item.object_png) as im:
            if im.mode not in ("P", "L"):
                raise SpaError(f"{item.object_png}: expected a palette PNG of object indices, got mode {im.mode}")
            indices = np.asarray(im)
    except OSError as e:
        raise SpaError(f"{item.object_png}: unreadable PNG ({e})") from None
    if indices.shape != (height, width):
        raise SpaError(f"{item.object_png}: size {indices.shape[1]}x{indices.shape[0]} differs from "
                       f"the annotation's {width}x{height}")
    present = np.unique(indices)
    extra = present[(present != 0) & (present != VOID) & (present > num_xml_objects)]
    if extra.size:
        raise SpaError(f"{item.object_png}: object index {int(extra[0])} but the XML has {num_xml_objects} objects")
    return encode_masks(indices[None] == np.asarray(png_indices, dtype=indices.dtype)[:, None, None])
