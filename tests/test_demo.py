"""The demo datasets: readable by every reader, deterministic, a mix of sparse and dense."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from spa_data.demo import write_demo_data
from spa_data.ratio import object_pixel_ratio
from spa_data.sources import open_source

SPLITS = {"coco": ("train", "val"), "bdd": ("train", "val"), "voc": ("train", "val", "trainval"),
          "tiny-imagenet": ("train", "val")}
MIN_IMAGES = {("coco", "train"): 40, ("coco", "val"): 12, ("bdd", "train"): 24, ("bdd", "val"): 8,
              ("voc", "trainval"): 30, ("tiny-imagenet", "train"): 120, ("tiny-imagenet", "val"): 30}


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(demo_root) -> dict[str, Path]:
    return {"coco": demo_root / "coco", "bdd": demo_root / "bdd100k", "voc": demo_root / "VOCdevkit" / "VOC2012",
            "tiny-imagenet": demo_root / "tiny-imagenet-200"}


def test_returns_roots_and_is_deterministic(tmp_path, demo_root, demo):
    roots = write_demo_data(tmp_path / "again")
    assert {k: v.relative_to(tmp_path / "again") for k, v in roots.items()} == {k: v.relative_to(demo_root) for k, v in demo.items()}
    first, second = files(demo_root), files(tmp_path / "again")
    assert first == second and not any(name.endswith(".tmp") for name in first)
    assert sum(len(b) for b in first.values()) < 5_000_000
    assert files(write_demo_data(tmp_path / "other", seed=1)["coco"]) != files(demo["coco"])


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_every_reader_reads_the_demo(demo, name):
    for split in SPLITS[name]:
        source = open_source(name, demo[name], split)
        records = [source.to_record(item) for item in source.items()]
        assert len(records) >= MIN_IMAGES.get((name, split), 1) and source.skipped == {}
        assert all(r.skipped == () for r in records)
        for record in records:
            with Image.open(demo[name] / record.file) as im:
                assert im.size == (record.width, record.height)
        ratios = [object_pixel_ratio(r)[0] for r in records]
        assert any(r < 0.2 for r in ratios) and any(r > 0.5 for r in ratios), (name, split)


def test_demo_has_masks_multipart_polygons_crowd_and_class_images(demo):
    coco = open_source("coco", demo["coco"], "train")
    items = coco.items()
    assert any(len(seg) > 1 for item in items for _, _, _, seg, crowd in item.annotations if not crowd)
    assert any(crowd for item in items for *_, crowd in item.annotations)
    records = [coco.to_record(i) for i in items]
    assert Counter(object_pixel_ratio(r)[1] for r in records) == {"masks": len(records)}

    voc = open_source("voc", demo["voc"], "trainval")
    segmented = [r for r in map(voc.to_record, voc.items()) if r.objects[0].mask is not None]
    assert 0 < len(segmented) < 30
    for record in segmented:   # object k's mask is where SegmentationObject == k (255 void excluded)
        png = np.asarray(Image.open(demo["voc"] / "SegmentationObject" / f"{record.image_id}.png"))
        assert 255 in png
        for k, obj in enumerate(record.objects, 1):
            assert np.array_equal(mask_utils.decode(obj.mask).astype(bool), png == k)

    tiny = open_source("tiny-imagenet", demo["tiny-imagenet"], "train")
    labels = Counter(r.label for r in map(tiny.to_record, tiny.items()))
    assert sorted(labels) == list(range(len(tiny.classes))) and set(labels.values()) == {40}
