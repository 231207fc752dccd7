"""Loader throughput: ready batches per second on the device, from synthetic shards.

    python benchmarks/bench_loader.py --device cuda --out bench_loader.json
    python benchmarks/bench_loader.py --device cpu --ins-samples 64 --det-samples 8 --batches 4 --out /tmp/b.json

Writes its own shards first (nothing to download; needs torch, torchvision, h5py, numpy,
Pillow; not pycocotools or cv2): IN-S stored raw at the original 64x64 and padded on the fly,
IN-S stored raw as the 128x128 canvas (the alternative), and 1280x720 JPEG detection samples
(fit 1333x800, boxes). Then times ``make_loader(..., device=DEVICE)`` batches, synchronised.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from spa_data.loader import ShardDataset, make_loader  # noqa: E402
from spa_data.shards import write_shards  # noqa: E402


def _jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _scene(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Smooth colour field plus noise: compresses like a photo (about 0.2-0.3 bytes per pixel at q90)."""
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([np.sin(2 * np.pi * (f * x + g * y) + p) for f, g, p in rng.uniform(0.5, 4, (3, 3))], -1)
    img = 127 + 90 * base + rng.normal(0, 5, (h, w, 3))
    return img.clip(0, 255).astype(np.uint8)


def synthetic_subset(out: Path, *, name: str, task: str, size: tuple[int, int], geometry: dict, samples: int,
                     unique: int, seed: int = 0) -> Path:
    """A subset directory as `spa-data build` writes it, of ``samples`` entries over ``unique`` image files."""
    rng = np.random.default_rng(seed)
    root = out / f"{name}-images"
    root.mkdir(parents=True)
    w, h = size
    for k in range(unique):
        (root / f"{k}.jpg").write_bytes(_jpeg(_scene(rng, w, h)))
    manifest, annotations = [], []
    for i in range(samples):
        n = 1 if task == "cls" else int(rng.integers(1, 8))
        x1, y1 = rng.uniform(0, w * 0.8, n), rng.uniform(0, h * 0.8, n)
        bw, bh = rng.uniform(0.05, 0.2, n) * w, rng.uniform(0.05, 0.2, n) * h
        objects = [{"category": int(rng.integers(0, 10)), "box": [float(a), float(b), float(a + c), float(b + d)],
                    "iscrowd": 0, "mask": None, "difficult": False} for a, b, c, d in zip(x1, y1, bw, bh)]
        manifest.append({"image_id": i, "file": f"{i % unique}.jpg", "width": w, "height": h, "ratio": 0.0,
                         "num_objects": n, "sha256": None})
        annotations.append({"image_id": i, "label": int(rng.integers(0, 10)) if task == "cls" else None,
                            "objects": objects})
    subset = out / name
    subset.mkdir()
    for file, rows in (("manifest.jsonl", manifest), ("annotations.jsonl", annotations)):
        (subset / file).write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
    summary = {"tool": "spa-data", "version": "bench", "subset": name, "task": task, "root": str(root),
               "recipe": {"name": name, "geometry": geometry, "crowd": True, "ratio_from": "boxes"},
               "classes": [f"c{k}" for k in range(10)], "category_ids": None}
    (subset / "summary.json").write_text(json.dumps(summary))
    return subset


def time_loader(ds: ShardDataset, *, batch_size: int, batches: int, warmup: int, workers: int, device: str) -> dict:
    loader = make_loader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, device=device, drop_last=True)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def endless():
        while True:
            yield from loader

    it = endless()
    for _ in range(warmup):
        next(it)
    sync()
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    sync()
    elapsed = time.perf_counter() - start
    assert batch.images.device.type == torch.device(device).type
    return {"batch_size": batch_size, "workers": workers, "batches": batches, "seconds": elapsed,
            "batches_per_second": batches / elapsed, "images_per_second": batches * batch_size / elapsed,
            "image_shape": list(batch.images.shape)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    parser.add_argument("--ins-samples", type=int, default=20000)
    parser.add_argument("--det-samples", type=int, default=1024)
    parser.add_argument("--ins-batch", type=int, default=256)
    parser.add_argument("--det-batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--work", type=Path, help="Where to write the synthetic shards [default: a temp dir].")
    parser.add_argument("--out", type=Path, default=Path("bench_loader.json"))
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="spa-bench-loader-"))
    cases = {
        "in-s raw64 padded on the fly": dict(name="ins64", task="cls", size=(64, 64), samples=args.ins_samples,
                                             geometry={"mode": "pad", "size": [128, 128]}, unique=256,
                                             batch=args.ins_batch),
        "in-s raw128 stored canvas": dict(name="ins128", task="cls", size=(128, 128), samples=args.ins_samples,
                                          geometry={"mode": "pad", "size": [128, 128]}, unique=256,
                                          batch=args.ins_batch),
        "det jpeg 1280x720 -> 1333x750": dict(name="det", task="det", size=(1280, 720), samples=args.det_samples,
                                              geometry={"mode": "fit", "size": [1333, 800]}, unique=64,
                                              batch=args.det_batch),
    }
    results = {}
    for label, case in cases.items():
        batch = case.pop("batch")
        subset = synthetic_subset(work, **case)
        start = time.perf_counter()
        index = write_shards(subset, strides=(8, 16, 32), shard_size=2048, workers=min(8, os.cpu_count() or 1),
                             progress=False)
        write_s = time.perf_counter() - start
        shard_bytes = sum((subset / "shards" / e["file"]).stat().st_size for e in index["shards"])
        ds = ShardDataset(subset, train=True)
        batches = min(args.batches, max(1, len(ds) // batch - 1))
        results[label] = dict(time_loader(ds, batch_size=batch, batches=batches, warmup=min(args.warmup, batches),
                                          workers=args.workers, device=args.device),
                              samples=len(ds), shard_bytes_per_sample=shard_bytes / len(ds), write_seconds=write_s)
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor()
    report = {
        "benchmark": "ShardDataset + make_loader: ready batches on the device",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"device": args.device, "device_name": device_name, "cpus": os.cpu_count(),
                    "platform": platform.platform(), "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "torchvision": __import__("torchvision").__version__,
                     "h5py": __import__("h5py").__version__, "numpy": np.__version__},
        "results": results,
    }
    print(f"{'case':<32} {'batch':>5} {'batches/s':>10} {'images/s':>10} {'bytes/sample':>13}")
    for label, r in results.items():
        print(f"{label:<32} {r['batch_size']:>5} {r['batches_per_second']:>10.1f} {r['images_per_second']:>10.0f} "
              f"{r['shard_bytes_per_sample']:>13.0f}")
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
