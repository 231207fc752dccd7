"""Tiny ImageNet reader: ``wnids.txt``, ``words.txt``, ``train/<wnid>/<wnid>_boxes.txt``,
``val/val_annotations.txt``.

Classes are the 200 wnids in ``wnids.txt`` order (``classes``); ``class_words``
holds their ``words.txt`` descriptions. Each image has one object, its box, with
the image's class; ``record.label`` is the class index. Boxes are integer,
0-based and inclusive (``0 0 63 63`` is the whole 64x64 image) -> ``(x1, y1, x2 + 1, y2 + 1)``;
a box with ``x2 == x1`` is one pixel wide, not degenerate. Image sizes come from
the image header (never decoded).

The annotation lists are the index. A listed image (or a train class folder)
that is not on disk is an error naming it under ``missing_images="error"`` (the
default); ``"skip"`` leaves it out and counts it in ``source.skipped``
(``missing_image``, ``missing_class``); ``"keep"`` indexes it anyway at Tiny
ImageNet's fixed 64x64. The ``test`` split has no labels and is not readable.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from spa_common.errors import SpaError
from spa_data.records import ImageRecord, ObjectRecord, sort_key
from spa_data.sources.common import check_missing_images, clip_box, count_reasons, image_size, require_dir

IMAGE_SIZE = 64  # every Tiny ImageNet image is 64x64; used only under missing_images="keep"
SPLITS = ("train", "val")


@dataclass(frozen=True)
class TinyItem:
    list_file: str        # the annotation list this image comes from (for messages)
    image_id: str
    file: str             # relative to the root
    path: Optional[str]   # absolute image path for the header read; None when missing and kept
    label: int
    box: tuple[str, ...]  # raw inclusive x1 y1 x2 y2


class TinyImageNetSource:
    name = "tiny-imagenet"
    category_ids = None

    def __init__(self, root: Path, split: str, *, missing_images: str = "error"):
        self.root, self.split = Path(root), split
        self.missing_images = check_missing_images(missing_images)
        if split not in SPLITS:
            raise SpaError(f"{self.root}: split {split!r} of tiny-imagenet: expected one of {', '.join(SPLITS)}")
        require_dir(self.root / split, f"split folder {split!r}")
        self.classes = tuple(self._read_lines(self.root / "wnids.txt"))
        if not self.classes:
            raise SpaError(f"{self.root / 'wnids.txt'}: no class ids")
        self.index_of = {wnid: i for i, wnid in enumerate(self.classes)}
        words = self._words(self.root / "words.txt")
        self.class_words = tuple(words.get(wnid, "") for wnid in self.classes)
        self.skipped: dict[str, int] = {}

    @staticmethod
    def _read_lines(path: Path) -> list[str]:
        try:
            return [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            raise SpaError(f"{path}: annotation file not found") from None

    @staticmethod
    def _words(path: Path) -> dict[str, str]:
        if not path.is_file():   # descriptions only; the wnids are the class ids
            return {}
        return dict(line.split("\t", 1) for line in path.read_text().splitlines() if "\t" in line)

    def items(self) -> list[TinyItem]:
        missing: Counter = Counter()
        if self.split == "train":
            rows = []
            for label, wnid in enumerate(self.classes):
                boxes = self.root / "train" / wnid / f"{wnid}_boxes.txt"
                if not boxes.is_file() and self.missing_images == "skip":
                    missing["missing_class"] += 1
                    continue
                for line_no, fields in self._rows(boxes, 5):
                    rows.append((boxes, line_no, f"train/{wnid}/images/{fields[0]}", label, fields[1:]))
        else:
            listing = self.root / "val" / "val_annotations.txt"
            rows = []
            for line_no, fields in self._rows(listing, 6):
                if fields[1] not in self.index_of:
                    raise SpaError(f"{listing}: line {line_no} ({fields[0]}): unknown wnid {fields[1]}")
                rows.append((listing, line_no, f"val/images/{fields[0]}", self.index_of[fields[1]], fields[2:]))

        items = []
        for list_file, line_no, rel, label, box in rows:
            path: Optional[str] = str(self.root / rel)
            if not os.path.isfile(path):
                if self.missing_images == "error":
                    raise SpaError(f"{path}: image listed in {list_file} line {line_no} not found")
                if self.missing_images == "skip":
                    missing["missing_image"] += 1
                    continue
                path = None
            items.append(TinyItem(str(list_file), Path(rel).stem, rel, path, label, tuple(box)))
        self.skipped = dict(missing)
        items.sort(key=lambda it: sort_key(it.image_id))
        return items

    @staticmethod
    def _rows(path: Path, num_fields: int) -> list[tuple[int, list[str]]]:
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            raise SpaError(f"{path}: annotation file not found") from None
        rows = []
        for line_no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != num_fields:
                raise SpaError(f"{path}: line {line_no}: expected {num_fields} fields, got {len(fields)}")
            rows.append((line_no, fields))
        return rows

    @staticmethod
    def to_record(item: TinyItem) -> ImageRecord:
        width, height = image_size(Path(item.path)) if item.path is not None else (IMAGE_SIZE, IMAGE_SIZE)
        try:
            x1, y1, x2, y2 = (float(v) for v in item.box)
        except ValueError:
            raise SpaError(f"{item.list_file}: {item.image_id}: box {' '.join(item.box)} is not four numbers") from None
        box, reason = clip_box((x1, y1, x2 + 1, y2 + 1), width, height)  # inclusive -> exclusive
        objects = (ObjectRecord(category=item.label, box=box),) if box is not None else ()
        return ImageRecord(image_id=item.image_id, file=item.file, width=width, height=height,
                           objects=objects, label=item.label, skipped=count_reasons([reason]))
