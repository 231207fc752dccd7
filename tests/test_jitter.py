"""Resize jitter (multi-scale training): image, labels, boxes and masks follow one layout.

Checks: a rectangle whose cells are known by hand at a jittered size (and flipped); on real COCO
images, a jittered sample equals the sample of shards built by `spa-data labels` at that size
(same labels, boxes, masks, image); the training batch sampler's draws are a function of
(seed, epoch, rank) and a resumed iteration continues them exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spa_cli.data import main as spa_data
from spa_common.errors import SpaError
from spa_data.geometry import Geometry
from spa_data.jitter import check_short_sides, draw_short_sides
from spa_data.loader import Collate, ShardDataset, finish_batch, make_loader
from spa_train.distributed import DistInfo, ResumableSampler, RunBatchSampler


@pytest.fixture(scope="module")
def rectangle(tmp_path_factory) -> Path:
    """A COCO-layout dataset of one 200x100 image: black, with a white object at x 40..80, y 20..60
    annotated by its polygon; shards at fit 256x128 (scale 1.28)."""
    root = tmp_path_factory.mktemp("rectangle")
    (root / "val2017").mkdir()
    (root / "annotations").mkdir()
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[20:60, 40:80] = 255
    Image.fromarray(pixels).save(root / "val2017/000000000001.jpg", quality=100)
    (root / "annotations/instances_val2017.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 200, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 1600.0,
                         "bbox": [40, 20, 40, 40], "segmentation": [[40, 20, 80, 20, 80, 60, 40, 60]]}],
        "categories": [{"id": 1, "name": "box"}]}))
    out = tmp_path_factory.mktemp("rectangle-shards")
    spa_data(["build", "coco", "--root", str(root), "--split", "val", "--out", str(out / "subset")])
    spa_data(["labels", str(out / "subset"), "--size", "256,128"])
    return out / "subset" / "shards"


def _bounds(mask: torch.Tensor) -> list[int]:
    """(x1, y1, x2, y2) of a 2-D mask's nonzero pixels, end exclusive."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_a_rectangle_at_a_jittered_size_has_the_labels_worked_by_hand(rectangle):
    # Short side 64: scale 0.64, the 200x100 image becomes 128x64 (canvas 128x64); the object
    # x [40, 80) y [20, 60) lands on x [25.6, 51.2) y [12.8, 38.4). Cells touched: stride 8
    # columns 3-6, rows 1-4; stride 16 columns 1-3, rows 0-2; stride 32 columns 0-1, rows 0-1.
    sample = ShardDataset(rectangle)[(0, 0, 64)]
    assert sample["image"].shape == (3, 64, 128) and sample["image_size"] == (64, 128)
    expected = {8: (slice(1, 5), slice(3, 7)), 16: (slice(0, 3), slice(1, 4)), 32: (slice(0, 2), slice(0, 2))}
    for stride, (rows, cols) in expected.items():
        grid = torch.zeros(64 // stride, 128 // stride)
        grid[rows, cols] = 1
        assert torch.equal(sample["select"][stride], grid), stride
    assert sample["boxes"][0].tolist() == pytest.approx([25.6, 12.8, 51.2, 38.4])
    image_object = sample["image"].float().mean(0) > 128
    assert _bounds(sample["masks"][0]) == _bounds(image_object) == [26, 13, 51, 38]   # pixel centres inside

    # flipped too: mirrored about the stride-aligned content width (128): x -> 128 - x
    flipped = ShardDataset(rectangle, train=True, hflip=1.0)[(0, 0, 64)]
    assert flipped["boxes"][0].tolist() == pytest.approx([128 - 51.2, 12.8, 128 - 25.6, 38.4])
    assert _bounds(flipped["masks"][0]) == _bounds(flipped["image"].float().mean(0) > 128) == [77, 13, 102, 38]
    for stride in expected:
        assert torch.equal(flipped["select"][stride], sample["select"][stride].flip(-1)), stride


def test_the_canonical_size_keeps_the_stored_labels(rectangle):
    dataset = ShardDataset(rectangle)
    stored, again = dataset[0], dataset[(0, 0, 128)]
    for key in ("image", "boxes", "masks"):
        assert torch.equal(stored[key], again[key]), key
    assert all(torch.equal(stored["select"][s], again["select"][s]) for s in stored["select"])


@pytest.mark.parametrize("short_side", [480, 640])
def test_jittered_real_images_equal_shards_built_at_that_size(fixtures_dir, tmp_path, short_side):
    root = fixtures_dir / "coco/val-2img"
    spa_data(["build", "coco", "--root", str(root), "--split", "val", "--out", str(tmp_path / "subset")])
    spa_data(["labels", str(tmp_path / "subset")])                                        # 1333x800
    spa_data(["labels", str(tmp_path / "subset"), "--size", f"1333,{short_side}", "--out", str(tmp_path / "small")])
    canonical, reference = ShardDataset(tmp_path / "subset" / "shards"), ShardDataset(tmp_path / "small")
    for i in range(len(canonical)):
        jittered, expected = canonical[(0, i, short_side)], reference[i]
        assert jittered["image"].shape[-2:] != canonical[i]["image"].shape[-2:]
        for key in ("image", "boxes", "masks", "categories", "iscrowd"):
            assert torch.equal(jittered[key], expected[key]), key
        assert jittered["image_size"] == expected["image_size"]
        for stride, grid in expected["select"].items():
            assert torch.equal(jittered["select"][stride], grid), stride


def test_only_detection_shards_with_a_fit_geometry_take_jitter():
    check_short_sides(Geometry("fit", (1333, 800), (8, 16, 32)), (480, 800), where="x")
    with pytest.raises(SpaError, match="fit geometry"):
        check_short_sides(Geometry("square", (448, 448), (8, 16, 32)), (384,), where="x")
    with pytest.raises(SpaError, match="positive integer"):
        check_short_sides(Geometry("fit", (1333, 800), (8, 16, 32)), (0,), where="x")


def _batches(sampler: RunBatchSampler, start=(0, 0)) -> list:
    sampler.start_at(*start)
    return list(sampler)


def test_run_batches_span_epochs_and_resume_exactly():
    dataset = list(range(23))
    make = lambda: RunBatchSampler(ResumableSampler(dataset, info=DistInfo(), shuffle=True, seed=3, drop_last=True),
                                   batch_size=4, batches_per_epoch=5, epochs=3, seed=3,
                                   short_sides=(480, 512, 544, 576, 608))
    whole = _batches(make())
    assert len(whole) == len(make()) == 15 and all(len(b) == 4 for b in whole)
    assert all(key[0] == k // 5 for k, batch in enumerate(whole) for key in batch)   # (epoch, index, side)
    epochs = [sorted(i for batch in whole[5 * e:5 * e + 5] for _, i, _ in batch) for e in range(3)]
    assert all(len(set(e)) == 20 for e in epochs) and epochs[0] != epochs[1]   # a fresh order each epoch
    sides = [s for batch in whole for _, _, s in batch]
    assert set(sides) == {480, 512, 544, 576, 608}                             # 60 draws cover the 5 choices
    # resumed in epoch 1 after 2 of its batches: the same batches, the same draws
    assert _batches(make(), start=(1, 2)) == whole[7:]
    assert sides[:20] == draw_short_sides((480, 512, 544, 576, 608), 20, seed=3, epoch=0, rank=0)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_the_batched_decode_path_lays_out_jittered_flipped_images_as_the_per_sample_path(fixtures_dir, tmp_path,
                                                                                          device):
    """The GPU path's code (stored bytes decoded and resized as a batch; on the CPU too) against ds[i]."""
    spa_data(["build", "coco", "--root", str(fixtures_dir / "coco/val-2img"), "--split", "val",
              "--out", str(tmp_path / "subset")])
    spa_data(["labels", str(tmp_path / "subset")])
    dataset = ShardDataset(tmp_path / "subset" / "shards", train=True, hflip=1.0)
    picks = [[(0, 0, 480), (0, 1, 800)], [(0, 1, 544), (0, 0, 544)]]  # mixed sizes, then one size for both
    per_sample = list(make_loader(dataset, batch_sampler=picks))
    batched = [finish_batch(Collate(dataset.task, dataset.strides, encoded=True)([dataset.encoded(k) for k in pick]),
                            torch.device(device)) for pick in picks]
    for x, y in zip(per_sample, batched):
        assert x.image_sizes == y.image_sizes and x.images.shape == y.images.shape
        tolerance = 0.0 if device == "cpu" else 0.1           # nvJPEG and libjpeg differ by a few levels
        assert (x.images - y.images.cpu()).abs().mean() <= tolerance
        for s in x.select:
            assert torch.equal(x.select[s], y.select[s].cpu())
        for a, b in zip(x.targets, y.targets):
            assert all(torch.equal(a[k], b[k].cpu()) for k in a)
