"""object_pixel_ratio against independent references: per-object masks decoded by
pycocotools' COCO API and OR-ed in numpy, and boxes rasterised by hand in numpy."""
from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from spa_common.errors import SpaError
from spa_data.ratio import object_pixel_ratio
from spa_data.records import ImageRecord, ObjectRecord
from spa_data.sources import open_source


def numpy_box_pixels(box, width, height) -> np.ndarray:
    """The documented box rule: pixel j is covered iff x1 < j + 0.5 <= x2 (same for rows)."""
    x1, y1, x2, y2 = box
    cols = (np.arange(width) + 0.5 > x1) & (np.arange(width) + 0.5 <= x2)
    rows = (np.arange(height) + 0.5 > y1) & (np.arange(height) + 0.5 <= y2)
    return rows[:, None] & cols[None, :]


def rle_of(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def image(objects, width=10, height=10) -> ImageRecord:
    return ImageRecord(image_id="x", file="x.jpg", width=width, height=height, objects=tuple(objects))


@pytest.mark.parametrize("sample, ann_name", [("val-2img", "instances_val2017.json"),
                                               ("person-keypoints-4img", "person_keypoints_val2017.json")])
def test_mask_ratio_matches_numpy_union_of_coco_masks(fixtures_dir, sample, ann_name):
    root = fixtures_dir / "coco" / sample
    coco = COCO(str(root / "annotations" / ann_name))
    source = open_source("coco", root, "val")
    for item in source.items():
        record = source.to_record(item)
        img = coco.imgs[record.image_id]
        union = np.zeros((img["height"], img["width"]), bool)
        for ann in coco.imgToAnns[record.image_id]:
            union |= coco.annToMask(ann).astype(bool)
        assert object_pixel_ratio(record) == (union.sum() / union.size, "masks")


def test_box_ratio_matches_numpy_rasterisation(fixtures_dir):
    root = fixtures_dir / "coco" / "val-2img"
    source = open_source("coco", root, "val")
    for item in source.items():
        record = source.to_record(item)
        union = np.zeros((record.height, record.width), bool)
        for obj in record.objects:
            union |= numpy_box_pixels(obj.box, record.width, record.height)
        ratio, method = object_pixel_ratio(record, ratio_from="boxes")
        # exact here; pycocotools quantises coordinates to 1/5 px, so a box edge within 0.1 px
        # of a pixel centre could differ from the numpy rule (none does in this sample)
        assert (ratio, method) == (union.sum() / union.size, "boxes")


@pytest.mark.parametrize("box, pixels", [
    ((0, 0, 3, 3), 9),             # integer box: columns/rows 0..2
    ((0.5, 0, 3.5, 1), 3),         # columns 1..3 (centre 0.5 is not > 0.5; 3.5 <= 3.5)
    ((0.4, 0, 2.4, 1), 2),         # columns 0..1
    ((0, 0, 0.4, 1), 0),           # no pixel centre inside
])
def test_box_rounding_hand_worked(box, pixels):
    record = image([ObjectRecord(category=0, box=box)])
    assert object_pixel_ratio(record) == (pixels / 100, "boxes")
    assert numpy_box_pixels(box, 10, 10).sum() == pixels


def test_overlaps_count_once_crowd_and_canvas():
    a = ObjectRecord(category=0, box=(0, 0, 4, 4))
    b = ObjectRecord(category=0, box=(2, 2, 6, 6))
    crowd = ObjectRecord(category=0, box=(8, 8, 10, 10), iscrowd=True)
    record = image([a, b, crowd])
    assert object_pixel_ratio(record) == ((16 + 16 - 4 + 4) / 100, "boxes")
    assert object_pixel_ratio(record, crowd=False) == ((16 + 16 - 4) / 100, "boxes")
    assert object_pixel_ratio(record, canvas=(20, 20)) == ((16 + 16 - 4 + 4) / 400, "boxes")
    assert object_pixel_ratio(image([])) == (0.0, "boxes")
    with pytest.raises(SpaError, match="canvas 5x5 is smaller than the image 10x10"):
        object_pixel_ratio(record, canvas=(5, 5))
    with pytest.raises(SpaError, match="ratio_from='pixels'"):
        object_pixel_ratio(record, ratio_from="pixels")


def test_auto_masks_boxes_and_fallback():
    disc = np.zeros((10, 10), bool)
    disc[1:3, 1:4] = True                                 # 6 px, inside its box (0, 0, 5, 5)
    with_mask = ObjectRecord(category=0, box=(0, 0, 5, 5), mask=rle_of(disc))
    box_only = ObjectRecord(category=1, box=(6, 6, 8, 8))  # 4 px
    crowd_mask = ObjectRecord(category=0, box=(0, 8, 10, 10), iscrowd=True, mask=rle_of(np.pad(np.ones((2, 10), bool), ((8, 0), (0, 0)))))
    assert object_pixel_ratio(image([with_mask])) == (6 / 100, "masks")
    assert object_pixel_ratio(image([with_mask]), ratio_from="boxes") == (25 / 100, "boxes")
    assert object_pixel_ratio(image([with_mask, box_only])) == ((25 + 4) / 100, "boxes")   # not every object has a mask
    assert object_pixel_ratio(image([with_mask, box_only]), ratio_from="masks") == ((6 + 4) / 100, "masks+boxes")
    assert object_pixel_ratio(image([with_mask, crowd_mask])) == ((6 + 20) / 100, "masks")
    assert object_pixel_ratio(image([with_mask, crowd_mask]), crowd=False) == (6 / 100, "masks")
