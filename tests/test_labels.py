"""Selection labels: grid alignment, coverage against pycocotools rasterisation, quantisation, scales."""
from __future__ import annotations

import json
import re
import math

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from spa_common.errors import SpaError
from spa_data.geometry import Geometry, Layout, parse_scales, parse_size
from spa_data.labels import coverage, quantize, region_from_objects, selection_labels, threshold_code
from spa_data.loader import ShardDataset
from spa_data.shards import write_shards

STRIDES = (8, 16, 32)


def touched_cells(box, stride: int, shape) -> np.ndarray:
    """Hand rule: cells whose [j*s, (j+1)*s) x [i*s, (i+1)*s) overlaps the box with positive area."""
    x1, y1, x2, y2 = box
    grid = np.zeros(shape, dtype=bool)
    grid[math.floor(y1 / stride):math.ceil(y2 / stride), math.floor(x1 / stride):math.ceil(x2 / stride)] = True
    return grid


def write_subset(root, out, *, images, task="det", geometry=None, classes=("thing",), name="hand"):
    """A subset directory as `spa-data build` writes it (manifest.jsonl, annotations.jsonl, summary.json).

    ``images``: list of (image_id, relative file, width, height, objects, label).
    """
    out.mkdir(parents=True)
    manifest, annotations = [], []
    for image_id, file, width, height, objects, label in images:
        manifest.append({"image_id": image_id, "file": file, "width": width, "height": height, "ratio": 0.0,
                         "num_objects": len(objects), "sha256": None})
        annotations.append({"image_id": image_id, "label": label, "objects": [
            {"category": 0, "iscrowd": 0, "mask": None, "difficult": False, **o} for o in objects]})
    dump = lambda rows: "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)  # noqa: E731
    (out / "manifest.jsonl").write_text(dump(manifest))
    (out / "annotations.jsonl").write_text(dump(annotations))
    recipe = {"name": name, "task": task, "crowd": True, "ratio_from": "auto",
              "geometry": geometry or {"mode": "fit", "size": [800, 500]}}
    summary = {"tool": "spa-data", "version": "test", "subset": name, "task": task, "root": str(root),
               "recipe": recipe, "classes": list(classes), "category_ids": None}
    (out / "summary.json").write_text(json.dumps(summary, sort_keys=True))
    return out


# ---------------------------------------------------------------------------------------------- geometry


def test_geometry_layouts_by_hand():
    fit = Geometry("fit", (1333, 800), (8, 16, 32))
    assert fit.layout(640, 480) == Layout((1067, 800), (1088, 800))      # scale 800/480
    assert fit.layout(1280, 720) == Layout((1333, 750), (1344, 768))     # scale 1333/1280
    assert Geometry("square", (448, 448), STRIDES).layout(500, 375) == Layout((448, 336), (448, 448))
    assert Geometry("pad", (128, 128), STRIDES).layout(64, 64) == Layout((64, 64), (128, 128))


@pytest.mark.parametrize("text", ["8,16,x", "8,12", "2,4", "128", "8,8", "", "-8"])
def test_bad_scales_are_clear_errors(text):
    with pytest.raises(SpaError, match=f"^strides {text}: "):   # the library's word; `spa-data labels` says --scales
        parse_scales(text)


def test_scales_and_sizes_parse():
    assert parse_scales("32,8,16") == (8, 16, 32)
    assert parse_scales("4,64") == (4, 64)
    assert parse_size("1333,800") == (1333, 800) and parse_size("448") == (448, 448)
    for text in ("448,abc", "0", "16385,800", "1,2,3"):
        with pytest.raises(SpaError, match=f"^size {text}: expected N or W,H, integers from 1 to 16384"):
            parse_size(text)


@pytest.mark.parametrize("geometry, message", [
    ({"mode": "fitt", "size": [800, 500]}, "recipe geometry.mode 'fitt' is not one of fit, square, pad"),
    ({"mode": "fit", "size": [800]}, "recipe geometry.size [800]: need two integers from 1 to 16384"),
    ({"mode": "fit"}, "recipe geometry.size is missing"),
])
def test_a_summary_with_a_broken_geometry_names_the_file(tmp_path, geometry, message):
    """A summary.json edited by hand (or from an older build) fails at `spa-data labels`, naming itself."""
    subset = write_subset(tmp_path, tmp_path / "subset", images=[(1, "a.jpg", 8, 8, [], None)], geometry=geometry)
    with pytest.raises(SpaError, match=re.escape(f"{subset / 'summary.json'}: {message}")):
        write_shards(subset, progress=False)


def test_scale_that_does_not_divide_the_geometry():
    with pytest.raises(SpaError, match="scale 16 does not divide the square geometry 440x440"):
        Geometry("square", (440, 440), (8, 16))


# ---------------------------------------------------------------------------------------------- coverage


def test_box_coverage_worked_by_hand():
    """A box [8, 16, 24, 40] on IN-S's 128x128 pad canvas, coverage computed on paper."""
    layout = Geometry("pad", (128, 128), STRIDES).layout(64, 64)
    cov = coverage(region_from_objects([{"box": [8, 16, 24, 40]}], 64, 64), layout, 64, 64, STRIDES)
    expected8 = np.zeros((16, 16))
    expected8[2:5, 1:3] = 1.0
    np.testing.assert_allclose(cov[8], expected8, atol=1e-12)
    expected16 = np.zeros((8, 8))
    expected16[1, 0:2] = 0.5          # 8 px wide x 16 px tall of 256
    expected16[2, 0:2] = 0.25         # 8 x 8 of 256
    np.testing.assert_allclose(cov[16], expected16, atol=1e-12)
    expected32 = np.zeros((4, 4))
    expected32[0, 0], expected32[1, 0] = 256 / 1024, 128 / 1024
    np.testing.assert_allclose(cov[32], expected32, atol=1e-12)


def test_union_of_overlapping_boxes_is_not_double_counted():
    layout = Layout((32, 32), (32, 32))
    objects = [{"box": [0, 0, 6, 8]}, {"box": [2, 0, 8, 8]}, {"box": [0.5, 0.5, 1.5, 1.5]}]
    cov = coverage(region_from_objects(objects, 32, 32), layout, 32, 32, (8,))
    assert cov[8][0, 0] == pytest.approx(1.0) and cov[8].sum() == pytest.approx(1.0)


@pytest.fixture(scope="module")
def coco_objects(fixtures_dir):
    """Real COCO val2017 objects (polygons -> RLE with pycocotools), per image."""
    data = json.loads((fixtures_dir / "coco/val-2img/annotations/instances_val2017.json").read_text())
    images = {im["id"]: im for im in data["images"]}
    out = {}
    for ann in data["annotations"]:
        im = images[ann["image_id"]]
        h, w = im["height"], im["width"]
        seg = ann["segmentation"]
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w)) if isinstance(seg, list) else \
            mask_utils.frPyObjects(seg, h, w)
        x, y, bw, bh = ann["bbox"]
        obj = {"box": [x, y, x + bw, y + bh], "iscrowd": ann["iscrowd"],
               "mask": {"size": [h, w], "counts": rle["counts"].decode()}}
        out.setdefault(ann["image_id"], (w, h, []))[2].append(obj)
    return out


def _reference_union(objects, h, w):
    """Union mask by OR-ing pycocotools' per-object decodes (no merge)."""
    m = np.zeros((h, w), dtype=bool)
    for o in objects:
        m |= mask_utils.decode(dict(o["mask"], counts=o["mask"]["counts"].encode())).astype(bool)
    return m.astype(np.float64)


@pytest.mark.parametrize("factor", [1, 2])
def test_mask_coverage_equals_reshape_mean_at_integer_scales(coco_objects, factor):
    """At scale 1 and 2 the canvas mask is the (repeated) pixel mask: reshape-mean is exact."""
    for w, h, objects in coco_objects.values():
        layout = Layout((w * factor, h * factor), (math.ceil(w * factor / 32) * 32, math.ceil(h * factor / 32) * 32))
        canvas = np.zeros(layout.canvas[::-1])
        canvas[:h * factor, :w * factor] = np.kron(_reference_union(objects, h, w), np.ones((factor, factor)))
        cov = coverage(region_from_objects(objects, w, h), layout, w, h, STRIDES)
        for s in STRIDES:
            ref = canvas.reshape(canvas.shape[0] // s, s, canvas.shape[1] // s, s).mean((1, 3))
            np.testing.assert_allclose(cov[s], ref, atol=1e-9)
            assert ((quantize(cov[s]) > 0) == (ref > 0)).all()


def test_mask_coverage_at_coco_geometry_matches_supersampled_raster(coco_objects):
    """Fit 1333x800 (non-integer scale): compare with point sampling at 2x2 per canvas pixel."""
    geometry = Geometry("fit", (1333, 800), STRIDES)
    ss = 2
    for w, h, objects in coco_objects.values():
        layout = geometry.layout(w, h)
        kx, ky = layout.scale(w, h)
        cw, ch = layout.canvas
        xs = (np.arange(cw * ss) + 0.5) / ss / kx
        ys = (np.arange(ch * ss) + 0.5) / ss / ky
        union = _reference_union(objects, h, w)
        sampled = union[np.minimum(ys.astype(int), h - 1)][:, np.minimum(xs.astype(int), w - 1)]
        sampled *= (ys < h)[:, None] & (xs < w)[None, :]
        cov = coverage(region_from_objects(objects, w, h), layout, w, h, STRIDES)
        for s in STRIDES:
            ref = sampled.reshape(ch // s, s * ss, cw // s, s * ss).mean((1, 3))
            assert np.abs(cov[s] - ref).max() < 1.0 / s   # midpoint sampling: <= 1/(2 ss) px per cell edge


def test_crowd_and_box_fallback(coco_objects):
    w, h, objects = next(iter(coco_objects.values()))
    no_masks = [dict(o, mask=None) for o in objects]
    region = region_from_objects(objects, w, h, use_masks=False)
    layout = Layout((w, h), (math.ceil(w / 32) * 32, math.ceil(h / 32) * 32))
    a = coverage(region, layout, w, h, (8,))[8]
    b = coverage(region_from_objects(no_masks, w, h), layout, w, h, (8,))[8]
    np.testing.assert_array_equal(a, b)
    crowd = [{"box": [0, 0, 8, 8], "iscrowd": 1}]
    assert selection_labels(crowd, 32, 32, Layout((32, 32), (32, 32)), (8,), crowd=False)[8].sum() == 0
    assert selection_labels(crowd, 32, 32, Layout((32, 32), (32, 32)), (8,))[8][0, 0] == 255


def test_quantisation_rule():
    cov = np.array([0.0, 1e-4, 1 / 255, 0.5, 1.0 - 1e-12, 1.0])
    np.testing.assert_array_equal(quantize(cov), [0, 1, 1, 128, 255, 255])
    assert threshold_code(0.0) == 0 and threshold_code(0.5) == 127
    with pytest.raises(ValueError):
        threshold_code(1.0)


# ---------------------------------------------------------------------------------------------- end to end


def _box_image(path, width, height, box):
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    x1, y1, x2, y2 = box
    pixels[y1:y2, x1:x2] = 255
    Image.fromarray(pixels).save(path, quality=95)


def test_object_lands_in_expected_cells_after_resize_pad_and_flip(tmp_path):
    """400x250 image, fit 800x500 (scale 2), canvas 800x512; box [100, 50, 140, 90] -> canvas [200, 100, 280, 180]."""
    root = tmp_path / "data"
    root.mkdir()
    box = (100, 50, 140, 90)
    _box_image(root / "a.jpg", 400, 250, box)
    subset = write_subset(root, tmp_path / "subset", images=[(1, "a.jpg", 400, 250, [{"box": list(box)}], None)])
    write_shards(subset, strides=STRIDES, progress=False)
    canvas_box = (200, 100, 280, 180)
    flipped_box = (800 - 280, 100, 800 - 200, 180)    # mirrored in the stride-aligned width 800
    plain = ShardDataset(subset)[0]
    flipped = ShardDataset(subset, train=True, hflip=1.0)[0]
    assert plain["image"].shape == (3, 512, 800)
    for s in STRIDES:
        shape = (512 // s, 800 // s)
        np.testing.assert_array_equal(plain["select"][s].numpy().astype(bool), touched_cells(canvas_box, s, shape))
        np.testing.assert_array_equal(flipped["select"][s].numpy().astype(bool), touched_cells(flipped_box, s, shape))
    np.testing.assert_allclose(plain["boxes"].numpy(), [canvas_box])
    np.testing.assert_allclose(flipped["boxes"].numpy(), [flipped_box])
    # The pixels moved with the labels: the bright block is where the boxes say.
    for sample, (x1, y1, x2, y2) in ((plain, canvas_box), (flipped, flipped_box)):
        bright = sample["image"][0].numpy() > 128
        ys, xs = np.nonzero(bright)
        assert abs(xs.min() - x1) <= 1 and abs(xs.max() + 1 - x2) <= 1
        assert abs(ys.min() - y1) <= 1 and abs(ys.max() + 1 - y2) <= 1


def _tiny_imagenet_train(fixtures_dir, wnid, n):
    root = fixtures_dir / "tiny-imagenet-200"
    rows = (root / f"train/{wnid}/{wnid}_boxes.txt").read_text().split("\n")[:n]
    out = []
    for row in rows:
        name, x0, y0, x1, y1 = row.split("\t")
        # Tiny ImageNet boxes are 0-based inclusive: pixels x0..x1.
        box = [int(x0), int(y0), int(x1) + 1, int(y1) + 1]
        out.append((name.split(".")[0], f"train/{wnid}/images/{name}", 64, 64, [{"box": box}], 0))
    return root, out


def test_in_s_labels_from_real_tiny_imagenet(fixtures_dir, tmp_path):
    root, images = _tiny_imagenet_train(fixtures_dir, "n02124075", 24)
    subset = write_subset(root, tmp_path / "in-s", images=images, task="cls", name="in-s",
                          geometry={"mode": "pad", "size": [128, 128]}, classes=("n02124075",))
    write_shards(subset, strides=(8, 16, 32, 64), shard_size=10, progress=False)
    ds = ShardDataset(subset)
    assert len(ds) == 24
    for i, (_, file, _, _, objects, _) in enumerate(images):
        sample = ds[i]
        for s in (8, 16, 32, 64):
            expected = touched_cells(objects[0]["box"], s, (128 // s, 128 // s))
            np.testing.assert_array_equal(sample["select"][s].numpy().astype(bool), expected)
        original = np.asarray(Image.open(root / file).convert("RGB"))
        np.testing.assert_array_equal(sample["image"][:, :64, :64].permute(1, 2, 0).numpy(), original)
        assert sample["image"][:, 64:].sum() == 0 and sample["image"][:, :, 64:].sum() == 0
        assert sample["label"].item() == 0


def test_masks_and_boxes_without_masks_are_united(coco_objects):
    """Objects without a mask contribute their box, on top of the other objects' masks."""
    w, h, objects = next(iter(coco_objects.values()))
    extra = {"box": [10.0, 20.0, 30.5, 40.0]}            # half a pixel column at x = 30
    layout = Layout((w, h), (math.ceil(w / 32) * 32, math.ceil(h / 32) * 32))
    canvas = np.zeros(layout.canvas[::-1])
    canvas[:h, :w] = _reference_union(objects, h, w)
    canvas[20:40, 10:30] = 1.0
    canvas[20:40, 30] = np.maximum(canvas[20:40, 30], 0.5)  # per-pixel area of the half column
    cov = coverage(region_from_objects(objects + [extra], w, h), layout, w, h, STRIDES)
    for s in STRIDES:
        ref = canvas.reshape(canvas.shape[0] // s, s, canvas.shape[1] // s, s).mean((1, 3))
        np.testing.assert_allclose(cov[s], ref, atol=1e-9)
