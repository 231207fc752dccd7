"""ShardDataset and make_loader: contract, masks, flips, workers under spawn, DistributedSampler, GPU path."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DistributedSampler

from spa_data.loader import IMAGENET_MEAN, IMAGENET_STD, ShardDataset, make_loader


@pytest.fixture(scope="module")
def shard_dirs(demo_shards) -> dict[str, Path]:
    """Demo subsets with their shards (4 samples per shard), val split."""
    return {name: demo_shards(name, "val", "--shard-size", "4") for name in ("coco-s", "in-s", "voc-s")}


def _annotations(subset: Path) -> list[dict]:
    return [json.loads(line) for line in (subset / "annotations.jsonl").read_text().splitlines()]


def _manifest(subset: Path) -> list[dict]:
    return [json.loads(line) for line in (subset / "manifest.jsonl").read_text().splitlines()]


def test_det_sample_contract(shard_dirs):
    subset = shard_dirs["coco-s"]
    ds = ShardDataset(subset)
    assert ds.task == "det" and ds.strides == [8, 16, 32] and ds.num_classes == len(ds.classes)
    for i, (entry, ann) in list(enumerate(zip(_manifest(subset), _annotations(subset))))[:4]:
        sample = ds[i]
        image = sample["image"]
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        h, w = image.shape[1:]
        assert h % 32 == 0 and w % 32 == 0 and sample["image_id"] == entry["image_id"]
        for s, grid in sample["select"].items():
            assert grid.shape == (h // s, w // s) and grid.dtype == torch.float32
        scale = min(1333 / max(entry["width"], entry["height"]), 800 / min(entry["width"], entry["height"]))
        rw, rh = round(entry["width"] * scale), round(entry["height"] * scale)
        boxes = np.array([o["box"] for o in ann["objects"]]) * ([rw / entry["width"], rh / entry["height"]] * 2)
        np.testing.assert_allclose(sample["boxes"].numpy(), boxes, rtol=1e-5)
        assert sample["categories"].tolist() == [o["category"] for o in ann["objects"]]
        assert sample["masks"].shape == (len(boxes), h, w)
        for mask, o in zip(sample["masks"].numpy(), ann["objects"]):   # area scales with the resize
            area = mask_utils.area(dict(o["mask"], counts=o["mask"]["counts"].encode()))
            assert mask.sum() == pytest.approx(area * rw * rh / (entry["width"] * entry["height"]), rel=0.15, abs=20)
        # Content pixels are the decoded JPEG, resized; padding is black.
        root = Path(json.loads((subset / "summary.json").read_text())["root"])
        original = np.asarray(Image.open(root / entry["file"]))
        assert image[:, rh:].sum() == 0 and image[:, :, rw:].sum() == 0
        assert abs(image[:, :rh, :rw].float().mean().item() - original.mean()) < 2.0


def test_cls_and_multilabel_targets(shard_dirs):
    for name, key in (("in-s", "label"), ("voc-s", "labels")):
        subset = shard_dirs[name]
        ds = ShardDataset(subset)
        for i, ann in enumerate(_annotations(subset)):
            if key == "label":
                label = ds.encoded(i)["label"]
                assert label.dtype == torch.int64 and label.item() == ann["label"]
            else:
                expected = np.zeros(ds.num_classes, np.float32)
                expected[[o["category"] for o in ann["objects"]]] = 1
                np.testing.assert_array_equal(ds.encoded(i)["labels"].numpy(), expected)


@pytest.mark.parametrize("name", ["coco-s", "in-s", "voc-s"])
def test_flip_moves_image_boxes_masks_and_grids_together(shard_dirs, name):
    plain, flipped = ShardDataset(shard_dirs[name]), ShardDataset(shard_dirs[name], train=True, hflip=1.0)
    for i in range(min(len(plain), 4)):
        a, b = plain[i], flipped[i]
        fw = b["image_size"][1]                               # the stride-aligned content width
        assert fw % 32 == 0 and fw >= a["image_size"][1]
        torch.testing.assert_close(b["image"][..., :fw], a["image"][..., :fw].flip(-1))
        torch.testing.assert_close(b["image"][..., fw:], a["image"][..., fw:])
        for s in plain.strides:
            torch.testing.assert_close(b["select"][s][:, :fw // s], a["select"][s][:, :fw // s].flip(-1))
            assert b["select"][s][:, fw // s:].sum() == 0
        if "boxes" in a:
            torch.testing.assert_close(b["boxes"][:, [0, 2]], fw - a["boxes"][:, [2, 0]])
            torch.testing.assert_close(b["masks"][..., :fw], a["masks"][..., :fw].flip(-1))


def test_threshold_is_a_loader_setting(shard_dirs):
    options = dict(masks=False)
    any_pixel = ShardDataset(shard_dirs["coco-s"], **options)
    half = ShardDataset(shard_dirs["coco-s"], select_threshold=0.5, **options)
    a = [any_pixel.encoded(i)["select"] for i in range(len(any_pixel))]
    b = [half.encoded(i)["select"] for i in range(len(half))]
    for x, y in zip(a, b):
        assert all((y[s] <= x[s]).all() for s in any_pixel.strides)
    assert sum(y[8].sum() for y in b) < sum(x[8].sum() for x in a)


def _batches(ds, **kw) -> list:
    return list(make_loader(ds, batch_size=3, **kw))


def _assert_same_batches(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.image_ids == y.image_ids and x.image_sizes == y.image_sizes
        torch.testing.assert_close(x.images, y.images)
        for s in x.select:
            torch.testing.assert_close(x.select[s], y.select[s])
        torch.testing.assert_close(x.targets, y.targets)


@pytest.mark.slow   # spawned workers import torch afresh
@pytest.mark.parametrize("context", ["spawn", "fork"])
def test_batches_with_two_workers_equal_one_process(shard_dirs, context):
    ds = ShardDataset(shard_dirs["in-s"])
    _assert_same_batches(_batches(ds, num_workers=2, multiprocessing_context=context), _batches(ds))


def test_batch_contract(shard_dirs):
    ds = ShardDataset(shard_dirs["in-s"])
    batch = next(iter(make_loader(ds, batch_size=3)))
    assert batch.images.shape == (3, 3, 128, 128) and batch.images.dtype == torch.float32
    pixel = ds[0]["image"][:, 10, 10].float()
    expected = (pixel / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(batch.images[0, :, 10, 10], expected)
    assert batch.targets.shape == (3,) and {s: tuple(t.shape) for s, t in batch.select.items()} == {
        8: (3, 16, 16), 16: (3, 8, 8), 32: (3, 4, 4)}
    det = next(iter(make_loader(ShardDataset(shard_dirs["coco-s"]), batch_size=3)))
    assert det.images.shape[-1] % 32 == 0 and isinstance(det.targets, list)
    assert all((t["labels"] >= 1).all() and t["boxes"].shape[1] == 4 for t in det.targets)


def test_distributed_sampler_partitions_the_dataset(shard_dirs):
    ds = ShardDataset(shard_dirs["in-s"])
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(1)
        seen += [i for batch in make_loader(ds, batch_size=4, sampler=sampler) for i in batch.image_ids]
    assert sorted(seen) == sorted(ds.image_ids)     # 30 samples: no padding duplicates


@pytest.mark.gpu
def test_gpu_path_matches_cpu_path(shard_dirs):
    for name in ("in-s", "coco-s"):
        ds = ShardDataset(shard_dirs[name])
        cpu, gpu = _batches(ds), _batches(ds, device="cuda", num_workers=2)
        for x, y in zip(cpu, gpu):
            assert x.image_ids == y.image_ids and y.images.is_cuda
            # nvJPEG and libjpeg may differ by a few levels; raw images must be identical.
            tol = 0.0 if name == "in-s" else 0.1
            assert (x.images - y.images.cpu()).abs().mean() <= tol
            for s in x.select:
                torch.testing.assert_close(x.select[s], y.select[s].cpu())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_each_pass_has_one_helper_thread_that_stops_with_it(shard_dirs, device):
    ds = ShardDataset(shard_dirs["coco-s"])
    loader = make_loader(ds, batch_size=2, num_workers=2, device=device)
    first = iter(loader)
    next(first)
    assert first.thread.is_alive()
    second = iter(loader)               # passes share the workers' iterator: a new one stops the old
    assert not first.thread.is_alive() and next(first, None) is None
    assert [i for batch in second for i in batch.image_ids] == list(ds.image_ids)   # every sample, in order
    assert not second.thread.is_alive()
    third = iter(loader)
    next(third)
    helper = third.thread
    del third                           # dropped unclosed: its thread stops by itself
    helper.join(timeout=30)
    assert not helper.is_alive()
    fourth, errors = iter(loader), []

    def consume():
        try:
            for _ in fourth:
                time.sleep(0.05)
        except Exception as error:  # noqa: BLE001 - the test reports it
            errors.append(error)

    consumer = threading.Thread(target=consume)
    consumer.start()
    time.sleep(0.2)
    loader.close()                      # from another thread than the consumer's: both end quietly
    consumer.join(timeout=30)
    assert not consumer.is_alive() and not errors and not fourth.thread.is_alive()


def test_batched_decode_path_equals_per_sample_path(shard_dirs):
    """The GPU path's code (workers return stored bytes, the batch is decoded together) run on the CPU."""
    from spa_data.loader import Collate, finish_batch

    for name in ("in-s", "coco-s"):
        ds = ShardDataset(shard_dirs[name], train=True, hflip=1.0)
        encoded = finish_batch(Collate(ds.task, ds.strides, encoded=True)([ds.encoded(i) for i in range(3)]),
                               torch.device("cpu"))
        _assert_same_batches([encoded], [next(iter(make_loader(ds, batch_size=3)))])
