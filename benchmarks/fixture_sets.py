"""Real fixture images as datasets of any length, for GPU checks and benchmarks that train on them.

The fixtures hold a handful of real images (../shared/fixtures). Training on them for a few hundred
steps with `spa-train` would make every epoch one or two steps long (and write a checkpoint each
time); these helpers write a copy of a fixture's annotation file listing its images ``copies``
times (new ids and file names, symlinked to the real files), so an epoch is ``copies`` passes.
Each returns shards made by `spa-data build` and `spa-data labels`, as a user makes them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from spa_cli.data import main as spa_data

COCO = "coco/val-2img"
BDD = "bdd100k/bdd100k"


def built_shards(recipe: str, root: Path, split: str, out: Path, size: Optional[str] = None,
                 build_args: tuple[str, ...] = ()) -> Path:
    """`spa-data build RECIPE` then `spa-data labels` into ``out`` (once: kept when already built)."""
    if not (out / "shards" / "index.json").is_file():
        spa_data(["build", recipe, "--root", str(root), "--split", split, "--out", str(out), "--overwrite",
                  *build_args])
        spa_data(["labels", str(out), *(["--size", size] if size else [])])
    return out / "shards"


def coco_shards(fixtures: Path, out: Path, *, copies: int = 1, size: Optional[str] = None) -> Path:
    """COCO val2017 fixture images (2 images, 33 objects) as `coco` shards, each image ``copies`` times."""
    source = (fixtures / COCO).resolve()  # symlinks need an absolute target
    if copies == 1:
        return built_shards("coco", source, "val", out / "coco", size)
    data = json.loads((source / "annotations/instances_val2017.json").read_text())
    root = out / f"coco-x{copies}-root"
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for k in range(copies):
        for image in data["images"]:
            name = f"{k:04d}_{image['file_name']}"
            link = root / "val2017" / name
            if not link.exists():
                link.symlink_to(source / "val2017" / image["file_name"])
            images.append({**image, "id": k * 10**7 + image["id"], "file_name": name})
        annotations += [{**a, "id": k * 10**7 + a["id"], "image_id": k * 10**7 + a["image_id"]}
                        for a in data["annotations"]]
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations/instances_val2017.json").write_text(
        json.dumps({**data, "images": images, "annotations": annotations}))
    return built_shards("coco", root, "val", out / f"coco-x{copies}", size)


def bdd_shards(fixtures: Path, out: Path, *, copies: int = 1, size: Optional[str] = None) -> Path:
    """The BDD100K fixture frame (1280x720, 10 detection labels) as `bdd` shards, ``copies`` times."""
    source = (fixtures / BDD).resolve()
    if copies == 1:
        return built_shards("bdd", source, "train", out / "bdd", size)
    frames = json.loads((source / "labels/det_20/det_train.json").read_text())
    root = out / f"bdd-x{copies}-root"
    (root / "images/100k/train").mkdir(parents=True, exist_ok=True)
    (root / "labels/det_20").mkdir(parents=True, exist_ok=True)
    copied = []
    for k in range(copies):
        for frame in frames:
            name = f"{k:04d}-{frame['name']}"
            link = root / "images/100k/train" / name
            if not link.exists():
                link.symlink_to(source / "images/100k/train" / frame["name"])
            copied.append({**frame, "name": name})
    (root / "labels/det_20/det_train.json").write_text(json.dumps(copied))
    return built_shards("bdd", root, "train", out / f"bdd-x{copies}", size)
