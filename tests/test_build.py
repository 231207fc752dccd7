"""spa_data.subsets: subset builds, determinism, parts + merge, rebuild from a manifest.

Ratios and checksums are checked against independent computations (pycocotools'
own COCO API, the Tiny ImageNet annotation text, hashlib on the image files).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from spa_common.errors import SpaError
from spa_data.geometry import GeometrySpec
from spa_data.recipes import Recipe, load_recipe, recipe_names
from spa_data.subsets import (HIST_BINS, BuildOptions, Part, RebuildError, build_subset, merge_parts,
                              rebuild_from_manifest)

OUTPUTS = ("manifest.jsonl", "annotations.jsonl", "summary.json", "ratio_hist.png")
COCO_JSON = "annotations/instances_val2017.json"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def same_bytes(a: Path, b: Path, names=OUTPUTS) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture()
def coco_root(fixtures_dir, tmp_path) -> Path:
    """A private copy of the COCO val-2img sample (tests modify it)."""
    root = tmp_path / "coco"
    shutil.copytree(fixtures_dir / "coco" / "val-2img", root)
    return root


def coco_reference_ratios(ann_file: Path) -> dict[int, float]:
    """Union-of-masks ratio per image with pycocotools' own COCO API."""
    coco = COCO(str(ann_file))
    ratios = {}
    for image_id, img in coco.imgs.items():
        rles = [coco.annToRLE(a) for a in coco.imgToAnns[image_id]]
        ratios[image_id] = float(mask_utils.area(mask_utils.merge(rles, intersect=False))) / (img["width"] * img["height"])
    return ratios


def build(recipe, root, out, split="val", **kw):
    recipe = load_recipe(recipe) if isinstance(recipe, str) else recipe
    build_kw = {k: kw.pop(k) for k in ("workers", "part", "overwrite") if k in kw}
    return build_subset(recipe, BuildOptions(root=root, split=split, **kw), out, progress=False, **build_kw)


# ---------------------------------------------------------------- recipes

def test_shipped_recipes_match_the_paper():
    names = set(recipe_names())
    assert {"coco-s", "bdd-s", "voc-s", "in-s", "coco", "bdd", "voc", "tiny-in"} <= names
    assert load_recipe("coco-s").max_ratio == 0.20
    assert load_recipe("bdd-s").max_ratio == load_recipe("voc-s").max_ratio == 0.25
    assert load_recipe("in-s").pad == (2, 2) and load_recipe("in-s").canvas(64, 64) == (128, 128)
    assert all(load_recipe(n).max_ratio is None for n in ("coco", "bdd", "voc", "tiny-in"))
    assert load_recipe("coco-s").geometry == GeometrySpec("fit", (1333, 800))
    assert load_recipe("in-s").geometry == GeometrySpec("pad", (128, 128))


def test_user_recipe_file_and_bad_values(tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text('name = "mine"\nsource = "coco"\ntask = "det"\nsplits = ["val"]\nmax_ratio = 0.3\n')
    assert load_recipe(good) == Recipe(name="mine", source="coco", task="det", splits=("val",), max_ratio=0.3)
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nsource = "coco"\ntask = "det"\nsplits = ["val"]\nmax_ratio = 1.5\n')
    with pytest.raises(SpaError, match=r"bad\.toml.*max_ratio 1\.5 is outside \[0, 1\]"):
        load_recipe(bad)
    with pytest.raises(SpaError, match="unknown subset"):
        load_recipe("coco-xl")


# ---------------------------------------------------------------- COCO (real sample)

def test_coco_ratios_checksums_and_threshold_match_pycocotools(coco_root, tmp_path):
    reference = coco_reference_ratios(coco_root / COCO_JSON)
    build("coco", coco_root, tmp_path / "dense")
    manifest = read_jsonl(tmp_path / "dense" / "manifest.jsonl")
    assert [m["image_id"] for m in manifest] == sorted(reference)
    for m in manifest:
        assert m["ratio"] == pytest.approx(reference[m["image_id"]], abs=1e-6)
        assert m["sha256"] == hashlib.sha256((coco_root / m["file"]).read_bytes()).hexdigest()
        assert list(m) == ["image_id", "file", "width", "height", "ratio", "num_objects", "sha256"]

    # A threshold between the two images' ratios keeps exactly those below it.
    threshold = round(sum(reference.values()) / 2, 3)
    summary = build(load_recipe("coco-s").with_overrides(max_ratio=threshold), coco_root, tmp_path / "sparse")
    kept = [m["image_id"] for m in read_jsonl(tmp_path / "sparse" / "manifest.jsonl")]
    assert kept == sorted(i for i, r in reference.items() if r < threshold) and len(kept) == 1
    assert summary["counts"] == {"seen": 2, "kept": 1, "dropped": {"ratio_at_or_above_max": 1}}
    assert summary["recipe"]["max_ratio"] == threshold

    ann = read_jsonl(tmp_path / "dense" / "annotations.jsonl")
    coco = COCO(str(coco_root / COCO_JSON))
    for line, m in zip(ann, manifest):
        assert line["image_id"] == m["image_id"] and len(line["objects"]) == m["num_objects"]
        assert len(line["objects"]) == len(coco.imgToAnns[m["image_id"]])
        x, y, w, h = coco.imgToAnns[m["image_id"]][0]["bbox"]
        assert line["objects"][0]["box"] == pytest.approx([x, y, x + w, y + h])


def test_keep_empty(coco_root, tmp_path):
    data = json.loads((coco_root / COCO_JSON).read_text())
    data["images"].append({"id": 5, "file_name": "000000000005.jpg", "width": 352, "height": 230})
    (coco_root / COCO_JSON).write_text(json.dumps(data))
    shutil.copy(coco_root / "val2017" / "000000037777.jpg", coco_root / "val2017" / "000000000005.jpg")

    summary = build("coco", coco_root, tmp_path / "a")
    assert summary["counts"] == {"seen": 3, "kept": 2, "dropped": {"no_objects": 1}}
    summary = build("coco", coco_root, tmp_path / "b", keep_empty=True)
    first = read_jsonl(tmp_path / "b" / "manifest.jsonl")[0]
    assert summary["counts"]["kept"] == 3
    assert (first["image_id"], first["ratio"], first["num_objects"]) == (5, 0.0, 0)


# ---------------------------------------------------------------- IN-S (real Tiny ImageNet sample)

def test_in_s_ratio_is_taken_on_the_padded_canvas(fixtures_dir, tmp_path):
    root = fixtures_dir / "tiny-imagenet-200"
    summary = build("in-s", root, tmp_path / "ins", missing_images="skip")
    boxes = {}
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        name, _, x1, y1, x2, y2 = line.split("\t")
        boxes[name.split(".")[0]] = (int(x2) - int(x1) + 1) * (int(y2) - int(y1) + 1)
    manifest = read_jsonl(tmp_path / "ins" / "manifest.jsonl")
    assert len(manifest) == 100 and summary["counts"]["dropped"] == {"missing_image": 9900}
    for m in manifest:
        assert (m["width"], m["height"]) == (64, 64)
        assert m["ratio"] == pytest.approx(boxes[m["image_id"]] / (128 * 128), abs=1e-6)
    assert summary["recipe"]["pad"] == [2, 2] and summary["histogram"]["counts"][HIST_BINS // 4 - 1] >= 1


def test_ratio_bounds_are_half_open(fixtures_dir, tmp_path):
    """A whole-image box (0 0 63 63) on the 128x128 canvas is exactly 0.25: kept iff 0.25 < max_ratio."""
    root = fixtures_dir / "tiny-imagenet-200"
    present = {p.stem for p in (root / "val" / "images").iterdir()}
    full = {f.split(".")[0] for f, *box in (line.split("\t") for line in
            (root / "val" / "val_annotations.txt").read_text().splitlines()) if box[1:] == ["0", "0", "63", "63"]}
    full &= present
    assert full, "fixture has whole-image boxes"
    recipe = load_recipe("in-s")
    build(recipe.with_overrides(max_ratio=0.25), root, tmp_path / "lt", missing_images="skip", checksums=False)
    build(recipe.with_overrides(min_ratio=0.25), root, tmp_path / "ge", missing_images="skip", checksums=False)
    below = {m["image_id"] for m in read_jsonl(tmp_path / "lt" / "manifest.jsonl")}
    at_or_above = {m["image_id"]: m["ratio"] for m in read_jsonl(tmp_path / "ge" / "manifest.jsonl")}
    assert len(below) + len(at_or_above) == len(present)
    for name in full:
        assert name not in below and at_or_above[name] == 0.25


# ---------------------------------------------------------------- every subset of the demo data

@pytest.mark.parametrize("subset", ["coco-s", "bdd-s", "voc-s", "in-s", "coco", "tiny-in"])
def test_demo_subsets(demo_subset, subset):
    out = demo_subset(subset)
    summary = json.loads((out / "summary.json").read_text())
    manifest, ann = read_jsonl(out / "manifest.jsonl"), read_jsonl(out / "annotations.jsonl")
    counts = summary["counts"]
    assert counts["kept"] == len(manifest) == len(ann) > 0
    assert counts["seen"] == counts["kept"] + sum(counts["dropped"].values())
    assert sum(summary["histogram"]["counts"]) == counts["seen"] - summary["counts"]["dropped"].get("missing_image", 0)
    assert sum(summary["histogram"]["kept"]) == counts["kept"]
    bound = load_recipe(subset).max_ratio
    assert all(m["ratio"] < (bound if bound is not None else 1.0 + 1e-9) for m in manifest)
    assert [a["image_id"] for a in ann] == [m["image_id"] for m in manifest]
    assert (out / "ratio_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.parent.glob(f"{out.name}.tmp-*"))


# ---------------------------------------------------------------- determinism, parts, merge

def test_same_bytes_whatever_workers(demo_root, tmp_path):
    root = demo_root / "coco"
    build("coco", root, tmp_path / "w1", workers=1)
    build("coco", root, tmp_path / "w2", workers=2)
    same_bytes(tmp_path / "w1", tmp_path / "w2")


def test_merge_of_parts_equals_a_single_run(demo_root, tmp_path):
    root = demo_root / "coco"
    build("coco-s", root, tmp_path / "single")
    parts = [tmp_path / f"part{i}" for i in range(3)]
    for i, d in enumerate(parts):
        build("coco-s", root, d, part=Part(i, 3))
    merge_parts([parts[2], parts[0], parts[1]], tmp_path / "merged")
    same_bytes(tmp_path / "single", tmp_path / "merged")

    with pytest.raises(SpaError, match=r"incomplete: missing \[1\]"):
        merge_parts([parts[0], parts[2]], tmp_path / "m2")
    build("coco", root, tmp_path / "other1", part=Part(1, 3))
    with pytest.raises(SpaError, match="differs from"):
        merge_parts([parts[0], tmp_path / "other1", parts[2]], tmp_path / "m3")
    assert not (tmp_path / "m2").exists() and not (tmp_path / "m3").exists()


# ---------------------------------------------------------------- rebuild from a published manifest

def test_rebuild_from_manifest(coco_root, tmp_path):
    published = tmp_path / "published"
    build("coco", coco_root, published)
    mirror = tmp_path / "elsewhere" / "coco"
    shutil.copytree(coco_root, mirror)

    summary = rebuild_from_manifest(published / "manifest.jsonl", mirror, tmp_path / "rebuilt")
    same_bytes(published, tmp_path / "rebuilt", names=("manifest.jsonl", "annotations.jsonl", "ratio_hist.png"))
    original = json.loads((published / "summary.json").read_text())
    assert summary == {**original, "root": str(mirror.resolve())}

    changed, missing = mirror / "val2017" / "000000037777.jpg", mirror / "val2017" / "000000397133.jpg"
    changed.write_bytes(changed.read_bytes() + b"\0")
    missing.unlink()
    with pytest.raises(RebuildError, match="2 of 2 images missing or changed") as info:
        rebuild_from_manifest(published / "manifest.jsonl", mirror, tmp_path / "broken")
    problems = "\n".join(info.value.problems)
    assert "changed: image 37777" in problems and "000000037777.jpg" in problems
    assert "missing: image 397133" in problems and "000000397133.jpg" in problems
    assert not (tmp_path / "broken").exists() and not list(tmp_path.glob("broken.tmp-*"))


def test_spawned_workers_give_the_same_bytes(demo_root, tmp_path, monkeypatch):
    """The spawn path (items pickled to the workers; the default off Linux) matches the in-process run."""
    root = demo_root / "tiny-imagenet-200"
    build("in-s", root, tmp_path / "w1")
    monkeypatch.setattr("spa_data.subsets.pool_start_method", lambda: "spawn")
    build("in-s", root, tmp_path / "w2", workers=2)
    same_bytes(tmp_path / "w1", tmp_path / "w2")
