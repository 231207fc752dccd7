"""Selection-label generation speed: images/s on one core, COCO-sized annotations.

    python benchmarks/bench_labels.py --images 2000     # writes benchmarks/results/labels.json

Synthetic COCO-like images (640x480, a Poisson(7) number of polygon objects of COCO's
size spread, RLE-encoded with pycocotools as `spa-data build` stores them) at the
coco-s geometry (fit 1333x800, strides 8, 16, 32); the same objects as boxes only
(VOC/BDD without masks); masks with one object's mask missing (BDD-like mixed
annotations); and IN-S (one box, pad 128x128). Times `selection_labels`
(annotation dicts -> quantised grids) in this one process, plus its parts. The headline is
images per CPU second of this process (`time.process_time`): what one core delivers even
when other processes share the machine. Each case runs `--repeats` times; the JSON keeps the
median and the best, and the load average before and after.
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

GOAL = 1000   # images/s per core (the target)


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


def images_per_second(fn, items, repeats: int) -> dict:
    """Median and best rates per wall second and per CPU second of this process over ``repeats`` runs."""
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        for item in items:
            fn(*item)
        wall.append(len(items) / (time.perf_counter() - w))
        cpu.append(len(items) / (time.process_time() - c))
    return {"wall": float(np.median(wall)), "cpu": float(np.median(cpu)), "cpu_best": max(cpu)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "labels.json")
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
    # Some objects without a mask (BDD's detection boxes beside its segmentation masks): the slow,
    # dense path. Fewer images: it runs ~10x slower.
    mixed = [([dict(objs[0], mask=None)] + objs[1:], w, h, lay, strides)
             for (w, h, objs), lay in zip(images[: args.images // 10], layouts) if len(objs) > 1]
    rng = np.random.default_rng(1)
    ins = []
    for _ in range(args.images):
        x1, y1 = rng.integers(0, 48, 2)
        ins.append(([{"box": [x1, y1, x1 + rng.integers(8, 64 - x1), y1 + rng.integers(8, 64 - y1)]}],
                    64, 64, pad.layout(64, 64), strides))
    regions = [(region_from_objects(o, w, h), lay, w, h, st) for o, w, h, lay, st in masks]

    load_before = os.getloadavg()
    cases = {
        "coco_masks_fit1333x800": (selection_labels, masks),
        "coco_boxes_only_fit1333x800": (selection_labels, boxes),
        "ins_box_pad128": (selection_labels, ins),
        "coco_masks_and_one_box_fit1333x800": (selection_labels, mixed),
        "part_region_masks": (lambda o, w, h, *_: region_from_objects(o, w, h), masks),
        "part_coverage_masks": (coverage, regions),
    }
    results = {name: images_per_second(fn, items, args.repeats) for name, (fn, items) in cases.items()}
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
    report["load_average"] = {"before": load_before, "after": os.getloadavg()}
    report["goal_images_per_cpu_second"] = GOAL
    print(f"{'case':<32} {'img/s (wall)':>13} {'img/s (cpu)':>12} {'best (cpu)':>11}")
    for name, value in results.items():
        print(f"{name:<32} {value['wall']:>13.0f} {value['cpu']:>12.0f} {value['cpu_best']:>11.0f}")
    print(f"load average before {load_before[0]:.2f}, after {report['load_average']['after'][0]:.2f}; "
          f"goal {GOAL} img/s per core")
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


def _versions() -> dict:
    from importlib.metadata import version

    import cv2

    return {"opencv": cv2.__version__, "pycocotools": version("pycocotools")}


if __name__ == "__main__":
    main()
