"""Generate a COCO train2017-sized annotation file for benchmarking the annotation pass.

    python benchmarks/gen_coco_like.py --out /tmp/coco-like [--images 118287] [--seed 0] [--placeholders]

Writes ``OUT/annotations/instances_train2017.json`` with COCO train2017's scale and
shape: 118,287 images (~640x480, landscape and portrait), ~860,000 instances over
the 80 COCO categories (ids 1..90 with COCO's gaps), star-shaped polygons of 10-60
vertices (about 8% of objects in 2-3 parts), object sizes spread over COCO's
small/medium/large ranges, about 1% crowd objects with UNcompressed RLE, and ~1%
of images without annotations. Deterministic for a given seed.

No pixels are needed for the annotation pass (checksums off), but the COCO reader
checks that every listed image file exists; ``--placeholders`` creates an EMPTY file
for each image under ``OUT/train2017/`` so that check runs for real (stat per file).
"""
from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from spa_common.io import atomic_write

NUM_IMAGES = 118_287
MEAN_INSTANCES = 7.3          # 860k / 118k
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def make_categories() -> list[dict]:
    return [{"id": cid, "name": f"category_{cid}", "supercategory": "thing"} for cid in COCO_IDS]


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height): COCO is mostly 640 on the long side, 4:3 landscape most often."""
    long_side = 640 if rng.random() < 0.93 else int(rng.integers(400, 640))
    short = int(long_side * rng.choice([0.75, 0.75, 0.667, 0.5625, 0.8, 1.0]))
    return (long_side, short) if rng.random() < 0.75 else (short, long_side)


def star_polygon(rng: np.random.Generator, cx: float, cy: float, radius: float, w: int, h: int) -> list[float]:
    """A star-shaped polygon of 10-60 vertices around (cx, cy), clipped to the image."""
    n = int(rng.integers(10, 61))
    angles = np.sort(rng.uniform(0.0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.45, 1.0, n)
    xs = np.clip(cx + radii * np.cos(angles), 0, w - 0.01)
    ys = np.clip(cy + radii * np.sin(angles), 0, h - 0.01)
    return np.round(np.stack([xs, ys], 1).ravel(), 2).tolist()


def crowd_rle(rng: np.random.Generator, x0: int, y0: int, bw: int, bh: int, w: int, h: int) -> dict:
    """Uncompressed column-major RLE of an irregular blob inside the box (as COCO's crowd regions)."""
    counts, run = [], x0 * h        # zeros of the columns left of the blob
    top = y0 + bh // 4
    for _ in range(bw):
        top = int(np.clip(top + rng.integers(-2, 3), y0, y0 + bh // 2))
        height = max(1, min(bh - (top - y0), int(bh * rng.uniform(0.5, 1.0))))
        counts += [run + top, height]
        run = h - top - height
    counts.append(run + (w - x0 - bw) * h)
    return {"counts": counts, "size": [h, w]}


def make_annotation(rng: np.random.Generator, ann_id: int, image_id: int, w: int, h: int) -> dict:
    # Object size: log-uniform side from 8 px to the image's short side (COCO: many small objects).
    side = float(np.exp(rng.uniform(np.log(8), np.log(min(w, h) * 0.9))))
    radius = side / 2
    cx, cy = rng.uniform(radius * 0.5, w - radius * 0.5), rng.uniform(radius * 0.5, h - radius * 0.5)
    category = int(rng.choice(COCO_IDS))
    if rng.random() < 0.01:
        x0, y0 = int(max(0, cx - radius)), int(max(0, cy - radius))
        bw, bh = max(2, int(min(w - x0, side))), max(2, int(min(h - y0, side)))
        seg = crowd_rle(rng, x0, y0, bw, bh, w, h)
        box = [x0, y0, bw, bh]
        return {"id": ann_id, "image_id": image_id, "category_id": category, "iscrowd": 1,
                "segmentation": seg, "bbox": [float(v) for v in box], "area": float(bw * bh * 0.7)}
    parts = [star_polygon(rng, cx, cy, radius, w, h)]
    for _ in range(int(rng.random() < 0.08) * int(rng.integers(1, 3))):
        parts.append(star_polygon(rng, cx + rng.uniform(-radius, radius), cy + rng.uniform(-radius, radius),
                                  radius * 0.4, w, h))
    xy = np.concatenate([np.asarray(p).reshape(-1, 2) for p in parts])
    x1, y1 = xy.min(0)
    x2, y2 = xy.max(0)
    bbox = [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1), 2), round(float(y2 - y1), 2)]
    return {"id": ann_id, "image_id": image_id, "category_id": category, "iscrowd": 0, "segmentation": parts,
            "bbox": bbox, "area": round(float(np.pi * radius * radius * 0.5), 2)}


def generate(num_images: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    images, annotations, ann_id = [], [], 1
    image_ids = np.sort(rng.choice(600_000, size=num_images, replace=False)) + 9
    for image_id in tqdm(image_ids.tolist(), desc="generate", unit="img"):
        w, h = image_size(rng)
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": w, "height": h,
                       "license": 1, "date_captured": "2013-11-14 16:28:13"})
        n = 0 if rng.random() < 0.01 else 1 + int(rng.negative_binomial(1.4, 1.4 / (1.4 + MEAN_INSTANCES - 1)))
        for _ in range(n):
            annotations.append(make_annotation(rng, ann_id, image_id, w, h))
            ann_id += 1
    return {"info": {"description": f"COCO-like benchmark data (seed {seed})"}, "licenses": [],
            "images": images, "annotations": annotations, "categories": make_categories()}


def write_placeholders(out: Path, images: list[dict]) -> None:
    folder = out / "train2017"
    folder.mkdir(parents=True, exist_ok=True)
    for img in tqdm(images, desc="placeholders", unit="file"):
        path = folder / img["file_name"]
        if not path.exists():
            path.touch()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=NUM_IMAGES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--placeholders", action="store_true", help="create an empty file per image")
    args = parser.parse_args(argv)
    gc.disable()   # millions of long-lived dicts and lists: the cyclic GC would only rescan them
    data = generate(args.images, args.seed)
    path = args.out / "annotations" / "instances_train2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, separators=(",", ":")).encode())   # dumps: the C encoder (json.dump is pure Python)
    if args.placeholders:
        write_placeholders(args.out, data["images"])
    print(f"{path}: {len(data['images'])} images, {len(data['annotations'])} annotations "
          f"({sum(a['iscrowd'] for a in data['annotations'])} crowd)")


if __name__ == "__main__":
    main()
