"""The one COCO RLE reader (spa_data.rle) against pycocotools: run lengths, masks, bad strings."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from spa_common.errors import SpaError
from spa_data.rle import decode_rle, rle_counts

SHAPES = [(37, 53, 0.3), (64, 48, 0.02), (20, 30, 0.0), (16, 16, 1.0), (1, 1, 1.0), (300, 7, 0.5)]


def _runs_to_mask(runs: np.ndarray, h: int, w: int) -> np.ndarray:
    """Runs alternate 0s and 1s over the column-major image (the format, spelled out)."""
    return np.repeat(np.arange(len(runs)) % 2, runs).astype(np.uint8).reshape(w, h).T


@pytest.mark.parametrize("seed", range(3))
def test_random_masks_match_pycocotools(seed):
    rng = np.random.default_rng(seed)
    for h, w, density in SHAPES:
        mask = (rng.random((h, w)) < density).astype(np.uint8)
        rle = mask_utils.encode(np.asfortranarray(mask))
        runs = rle_counts(rle["counts"])
        assert runs.sum() == h * w
        np.testing.assert_array_equal(_runs_to_mask(runs, h, w), mask_utils.decode(rle))
        np.testing.assert_array_equal(decode_rle(rle["counts"], h, w), mask_utils.decode(rle))
        np.testing.assert_array_equal(decode_rle(rle["counts"].decode(), h, w), mask)   # str as JSON holds it


def test_coco_annotations_match_pycocotools(fixtures_dir):
    data = json.loads((fixtures_dir / "coco/val-2img/annotations/instances_val2017.json").read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    for ann in data["annotations"]:
        h, w = sizes[ann["image_id"]]
        segmentation = ann["segmentation"]
        rle = (mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w)) if isinstance(segmentation, list)
               else mask_utils.frPyObjects(segmentation, h, w))
        np.testing.assert_array_equal(decode_rle(rle["counts"], h, w), mask_utils.decode(rle))


def test_empty_string_is_an_empty_mask():
    assert rle_counts(b"").shape == (0,)
    np.testing.assert_array_equal(decode_rle(b"", 3, 4), np.zeros((3, 4), np.uint8))


def test_bad_strings_are_one_line_errors():
    rle = mask_utils.encode(np.asfortranarray(np.eye(6, dtype=np.uint8)))
    with pytest.raises(SpaError, match="does not describe a 5x6 mask"):
        decode_rle(rle["counts"], 5, 6)
    with pytest.raises(SpaError, match="not a COCO compressed RLE string"):
        rle_counts(rle["counts"] + b"`")     # a count whose 'more groups' bit never ends
    with pytest.raises(SpaError, match="not a COCO compressed RLE string"):
        rle_counts(b"12 4")                  # a space is below '0'
