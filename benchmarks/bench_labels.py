"""Selection-label generation speed: images/s on one core, COCO-sized annotations.

    python benchmarks/bench_labels.py --images 2000 --out bench_labels.json

Synthetic COCO-like images (640x480, a Poisson(7) number of polygon objects of COCO's
size spread, RLE-encoded with pycocotools as `spa-data build` stores them) at the
coco-s geometry (fit 1333x800, strides 8, 16, 32); the same objects as boxes only
(VOC/BDD without masks); and IN-S (one box, pad 128x128). Times `selection_labels`
(annotation dicts -> quantised grids) in this one process, plus its parts.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spa_data.geometry import Geometry  # noqa: E402
from spa_data.labels import coverage, region_from_objects, selection_labels  # noqa: E402


def coco_like_images(n: int, seed: int = 0) -> list[tuple[int, int, list[dict]]]:
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w, h = 640, 480
        objects = []
        for _ in range(max(1, rng.poisson(7))):
            # COCO's mix: many small objects, a few large (radius 4 .. 150 px, log-uniform).
            r = float(np.exp(rng.uniform(np.log(4), np.log(150))))
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
            radii = r * rng.uniform(0.6, 1.0, 12)
            poly = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).clip(0, [w, h])
            rle = mask_utils.frPyObjects([poly.ravel().tolist()], h, w)[0]
            x1, y1 = poly.min(0)
            x2, y2 = poly.max(0)
            objects.append({"box": [x1, y1, x2, y2], "iscrowd": 0,
                            "mask": {"size": [h, w], "counts": rle["counts"].decode()}})
        out.append((w, h, objects))
    return out


def images_per_second(fn, items) -> dict:
    """Rate per wall second and per CPU second of this process (the latter is what one core
    delivers even when other processes share the machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for item in items:
        fn(*item)
    return {"wall": len(items) / (time.perf_counter() - wall), "cpu": len(items) / (time.process_time() - cpu)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("bench_labels.json"))
    args = parser.parse_args(argv)

    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, honestly
    except (AttributeError, OSError):
        pass
    images = coco_like_images(args.images)
    strides = (8, 16, 32)
    fit = Geometry("fit", (1333, 800), strides)
    pad = Geometry("pad", (128, 128), strides)
    layouts = [fit.layout(w, h) for w, h, _ in images]
    masks = [(objs, w, h, lay, strides) for (w, h, objs), lay in zip(images, layouts)]
    boxes = [([dict(o, mask=None) for o in objs], w, h, lay, strides) for (w, h, objs), lay in zip(images, layouts)]
    rng = np.random.default_rng(1)
    ins = []
    for _ in range(args.images):
        x1, y1 = rng.integers(0, 48, 2)
        ins.append(([{"box": [x1, y1, x1 + rng.integers(8, 64 - x1), y1 + rng.integers(8, 64 - y1)]}],
                    64, 64, pad.layout(64, 64), strides))
    regions = [(region_from_objects(o, w, h), lay, w, h, st) for o, w, h, lay, st in masks]

    results = {
        "coco_masks_fit1333x800": images_per_second(selection_labels, masks),
        "coco_boxes_only_fit1333x800": images_per_second(selection_labels, boxes),
        "ins_box_pad128": images_per_second(selection_labels, ins),
        "part_region_masks": images_per_second(lambda o, w, h, *_: region_from_objects(o, w, h), masks),
        "part_coverage_masks": images_per_second(coverage, regions),
    }
    objects = np.array([len(o) for _, _, o in images])
    report = {
        "benchmark": "selection-label generation, one core",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {"numpy": np.__version__, **_versions()},
        "images": args.images, "objects_per_image": float(objects.mean()), "strides": list(strides),
        "images_per_second": results,
    }
    report["load_average"] = os.getloadavg()
    print(f"{'case':<32} {'img/s (wall)':>13} {'img/s (cpu)':>12}")
    for name, value in results.items():
        print(f"{name:<32} {value['wall']:>13.0f} {value['cpu']:>12.0f}")
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


def _versions() -> dict:
    import cv2
    import pycocotools

    return {"opencv": cv2.__version__, "pycocotools": getattr(pycocotools, "__version__", "?")}


if __name__ == "__main__":
    main()
