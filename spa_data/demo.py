"""Small procedural datasets in the four official layouts, for demos and tests.

``write_demo_data(out)`` writes COCO 2017, BDD100K (det_20), PASCAL VOC 2012 and
Tiny ImageNet trees under ``out`` in a few seconds. Scenes are textured
backgrounds with coloured shapes as objects (each category has its own shape and
colour, so the demo tasks are learnable); about a third of the images are dense
(object-pixel ratio > 0.5), the rest sparse (< 0.2). Annotations follow each
dataset's own conventions (COCO float xywh + polygons with several parts + crowd
uncompressed RLE; BDD inclusive box2d + poly2d; VOC 1-based inclusive boxes +
palette PNG masks with a void border; Tiny ImageNet inclusive 0..63 boxes).
Output is deterministic for a given seed (same bytes twice). The tree is written to a
temporary sibling and renamed into place, with a marker file (``spa-demo-data.json``); an
existing ``out`` is replaced only when it is such an earlier demo tree, nothing else.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from spa_common.io import foreign_entries, staged_dir
from spa_data.sources.voc import VOC_CLASSES

# Each demo category: (shape, RGB colour).
SHAPES = {"circle": 24, "square": 4, "triangle": 3, "hexagon": 6}
COCO_CATEGORIES = ((1, "person", "circle", (220, 60, 50)), (3, "car", "square", (40, 170, 70)),
                   (18, "dog", "triangle", (50, 80, 220)), (44, "bottle", "hexagon", (230, 200, 40)))
BDD_CATEGORIES = (("car", "square", (40, 170, 70)), ("pedestrian", "circle", (220, 60, 50)),
                  ("traffic sign", "triangle", (50, 80, 220)), ("truck", "hexagon", (230, 200, 40)))
VOC_CATEGORIES = (("dog", "triangle", (50, 80, 220)), ("car", "square", (40, 170, 70)),
                  ("person", "circle", (220, 60, 50)), ("chair", "hexagon", (230, 200, 40)))
TINY_CLASSES = (("n01443537", "goldfish, Carassius auratus", "circle", (230, 120, 20)),
                ("n02124075", "Egyptian cat", "square", (30, 160, 60)),
                ("n04067472", "reel", "triangle", (60, 70, 230)))


@dataclass
class Shape:
    category: int                  # index into the dataset's demo category table
    parts: list[np.ndarray]        # polygon parts, each (K, 2) float x, y


MARKER = "spa-demo-data.json"
ROOTS = {"coco": "coco", "bdd": "bdd100k", "voc": "VOCdevkit/VOC2012", "tiny-imagenet": "tiny-imagenet-200"}


def write_demo_data(out: Path, *, seed: int = 0) -> dict[str, Path]:
    """Write the four demo datasets under ``out``; return {source name: dataset root}."""
    out = Path(out)
    writers = {"coco": _write_coco, "bdd": _write_bdd, "voc": _write_voc, "tiny-imagenet": _write_tiny}
    with staged_dir(out, overwrite=True, owned=demo_owned) as tmp:
        for k, (name, write) in enumerate(writers.items()):
            write(tmp / ROOTS[name], np.random.default_rng([seed, k]))
        _write(tmp / MARKER, _json_bytes({"tool": "spa-data demo-data", "seed": seed}))
    return {name: out / root for name, root in ROOTS.items()}


def demo_owned(out: Path) -> Optional[str]:
    """None when ``out`` is an earlier demo tree (its marker, and nothing else besides the datasets)."""
    if not (out / MARKER).is_file():
        return f"not a `spa-data demo-data` output (no {MARKER})"
    tops = {MARKER} | {root.split("/")[0] for root in ROOTS.values()}
    foreign = foreign_entries(out, lambda p: p.name in tops)
    return f"holds {foreign[0]}, which `spa-data demo-data` did not write" if foreign else None


# ---------------------------------------------------------------- scenes

def _polygon(rng: np.random.Generator, shape: str, cx: float, cy: float, radius: float) -> np.ndarray:
    n = SHAPES[shape]
    angles = rng.uniform(0, 2 * np.pi) + np.arange(n) * 2 * np.pi / n
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)


def _scene(rng: np.random.Generator, width: int, height: int, shapes: list[str], dense: bool) -> list[Shape]:
    """Random objects: dense scenes hold one or two large shapes, sparse ones a few small ones."""
    side = min(width, height)
    objects = []
    count = int(rng.integers(1, 3)) if dense else int(rng.integers(1, 4))
    for _ in range(count):
        category = int(rng.integers(len(shapes)))
        radius = side * (rng.uniform(0.55, 0.75) if dense else rng.uniform(0.06, 0.12))
        cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
        if not dense:
            cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
        parts = [_polygon(rng, shapes[category], cx, cy, radius)]
        if not dense and rng.uniform() < 0.3:   # a second, disjoint part of the same object
            dx = (radius * 2.5) * (1 if cx < width / 2 else -1)
            parts.append(_polygon(rng, shapes[category], cx + dx, cy, radius * 0.6))
        objects.append(Shape(category, [np.clip(p, 0, [width, height]) for p in parts]))
    return objects


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Muted colour with low-frequency waves and pixel noise (uint8 H x W x 3)."""
    y, x = np.ogrid[0:height, 0:width]
    base = rng.uniform(70, 150, size=3).astype(np.float32)
    fx, fy, phase = rng.uniform(0.03, 0.15), rng.uniform(0.03, 0.15), rng.uniform(0, 2 * np.pi)
    wave = (25 * np.sin(fx * x + phase) * np.cos(fy * y)).astype(np.float32)
    noise = rng.random(size=(height, width, 3), dtype=np.float32) * 28 - 14
    return np.clip(base + wave[..., None] + noise, 0, 255).astype(np.uint8)


def _render(rng: np.random.Generator, width: int, height: int, objects: list[Shape],
            colours: list[tuple[int, int, int]], crowd: np.ndarray | None = None) -> Image.Image:
    image = Image.fromarray(_background(rng, width, height))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        colour = tuple(int(c) for c in np.clip(np.array(colours[obj.category]) + rng.integers(-20, 21, 3), 0, 255))
        for part in obj.parts:
            draw.polygon([tuple(p) for p in part.tolist()], fill=colour)
    if crowd is not None:
        pixels = np.array(image)
        pixels[crowd.astype(bool)] = (200, 200, 200)
        image = Image.fromarray(pixels)
    return image


def _crowd_mask(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A cluster of small dots in one corner region (a COCO-style crowd)."""
    mask = np.zeros((height, width), np.uint8)
    x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    for _ in range(int(rng.integers(4, 8))):
        x, y = x0 + int(rng.integers(0, width // 4)), y0 + int(rng.integers(0, height // 4))
        mask[y:y + 3, x:x + 3] = 1
    return mask


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: column-major run lengths, starting with zeros."""
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _bounds(parts: list[np.ndarray]) -> tuple[float, float, float, float]:
    points = np.concatenate(parts)
    return float(points[:, 0].min()), float(points[:, 1].min()), float(points[:, 0].max()), float(points[:, 1].max())


def _inclusive_box(parts: list[np.ndarray], width: int, height: int) -> tuple[int, int, int, int]:
    """Integer inclusive pixel box (VOC, BDD, Tiny style, 0-based) of the polygon parts."""
    x1, y1, x2, y2 = _bounds(parts)
    return (int(np.floor(x1)), int(np.floor(y1)),
            min(int(np.ceil(x2)) - 1, width - 1), min(int(np.ceil(y2)) - 1, height - 1))


# ---------------------------------------------------------------- writing

def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _image_bytes(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _json_bytes(data) -> bytes:
    return json.dumps(data, indent=1).encode()


def _sizes(rng: np.random.Generator, choices: list[tuple[int, int]]) -> tuple[int, int]:
    return choices[int(rng.integers(len(choices)))]


def _write_coco(root: Path, rng: np.random.Generator) -> Path:
    shapes = [c[2] for c in COCO_CATEGORIES]
    colours = [c[3] for c in COCO_CATEGORIES]
    categories = [{"supercategory": "demo", "id": cid, "name": name} for cid, name, _, _ in COCO_CATEGORIES]
    ann_id = 1
    for split, count, first_id in (("train", 40, 1000), ("val", 12, 5000)):
        images, annotations = [], []
        for i in range(count):
            image_id = first_id + 7 * i
            width, height = _sizes(rng, [(160, 120), (240, 180), (320, 240), (200, 150)])
            objects = _scene(rng, width, height, shapes, dense=i % 3 == 0)
            crowd = _crowd_mask(rng, width, height) if i % 5 == 2 else None
            file_name = f"{image_id:012d}.jpg"
            _write(root / f"{split}2017" / file_name, _image_bytes(_render(rng, width, height, objects, colours, crowd), "JPEG"))
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            for obj in objects:
                x1, y1, x2, y2 = _bounds(obj.parts)
                annotations.append({
                    "id": ann_id, "image_id": image_id, "category_id": COCO_CATEGORIES[obj.category][0],
                    "segmentation": [[round(v, 2) for v in part.flatten().tolist()] for part in obj.parts],
                    "area": round((x2 - x1) * (y2 - y1), 2), "bbox": [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)],
                    "iscrowd": 0})
                ann_id += 1
            if crowd is not None:
                ys, xs = np.nonzero(crowd)
                annotations.append({
                    "id": ann_id, "image_id": image_id, "category_id": COCO_CATEGORIES[0][0],
                    "segmentation": _uncompressed_rle(crowd), "area": int(crowd.sum()),
                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                    "iscrowd": 1})
                ann_id += 1
        data = {"info": {"description": "spa demo data (procedural)"}, "licenses": [],
                "images": images, "annotations": annotations, "categories": categories}
        _write(root / "annotations" / f"instances_{split}2017.json", _json_bytes(data))
    return root


def _write_bdd(root: Path, rng: np.random.Generator) -> Path:
    shapes = [c[1] for c in BDD_CATEGORIES]
    colours = [c[2] for c in BDD_CATEGORIES]
    width, height = 320, 180   # BDD100K is 1280x720: same aspect
    label_id = 0
    for split, count, prefix in (("train", 24, "a"), ("val", 8, "b")):
        frames = []
        for i in range(count):
            name = f"{prefix}{i:03d}demo-{int(rng.integers(1 << 30)):08x}.jpg"
            objects = [] if i % 8 == 7 else _scene(rng, width, height, shapes, dense=i % 3 == 0)
            _write(root / "images" / "100k" / split / name, _image_bytes(_render(rng, width, height, objects, colours), "JPEG"))
            frame = {"name": name, "attributes": {"weather": "clear", "timeofday": "daytime", "scene": "city street"}}
            labels = []
            for obj in objects:
                x1, y1, x2, y2 = _inclusive_box(obj.parts, width, height)
                label = {"id": str(label_id), "category": BDD_CATEGORIES[obj.category][0],
                         "attributes": {"occluded": False, "truncated": False, "trafficLightColor": "NA"},
                         "box2d": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}}
                if label_id % 2 == 0:
                    label["poly2d"] = [{"vertices": [[round(x, 2), round(y, 2)] for x, y in part.tolist()],
                                        "types": "L" * len(part), "closed": True} for part in obj.parts]
                labels.append(label)
                label_id += 1
            if i % 8 != 7:   # BDD frames without objects have no "labels" key
                frame["labels"] = labels
            frames.append(frame)
        _write(root / "labels" / "det_20" / f"det_{split}.json", _json_bytes(frames))
    return root


def _voc_palette() -> list[int]:
    """The standard PASCAL VOC colour map (bit-interleaved label index)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def _write_voc(root: Path, rng: np.random.Generator) -> Path:
    shapes = [c[1] for c in VOC_CATEGORIES]
    colours = [c[2] for c in VOC_CATEGORIES]
    class_index = [VOC_CLASSES.index(name) for name, _, _ in VOC_CATEGORIES]
    palette = _voc_palette()
    ids = {"train": [], "val": []}
    for i in range(30):
        image_id = f"2012_{i:06d}"
        ids["train" if i % 4 else "val"].append(image_id)
        width, height = _sizes(rng, [(200, 150), (240, 180), (160, 120), (300, 225)])
        objects = _scene(rng, width, height, shapes, dense=i % 3 == 0)
        _write(root / "JPEGImages" / f"{image_id}.jpg", _image_bytes(_render(rng, width, height, objects, colours), "JPEG"))
        xml_objects = []
        for k, obj in enumerate(objects):
            x1, y1, x2, y2 = _inclusive_box(obj.parts, width, height)
            xml_objects.append(
                f"\t<object>\n\t\t<name>{VOC_CATEGORIES[obj.category][0]}</name>\n\t\t<pose>Unspecified</pose>\n"
                f"\t\t<truncated>{int(x1 == 0 or y1 == 0 or x2 == width - 1 or y2 == height - 1)}</truncated>\n"
                f"\t\t<difficult>{int(k == 2)}</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{x1 + 1}</xmin>\n"
                f"\t\t\t<ymin>{y1 + 1}</ymin>\n\t\t\t<xmax>{x2 + 1}</xmax>\n\t\t\t<ymax>{y2 + 1}</ymax>\n"
                f"\t\t</bndbox>\n\t</object>\n")
        segmented = i % 2 == 0
        xml = (f"<annotation>\n\t<folder>VOC2012</folder>\n\t<filename>{image_id}.jpg</filename>\n"
               f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
               f"\t<segmented>{int(segmented)}</segmented>\n{''.join(xml_objects)}</annotation>\n")
        _write(root / "Annotations" / f"{image_id}.xml", xml.encode())
        if segmented:
            for folder, values in (("SegmentationObject", [k + 1 for k in range(len(objects))]),
                                   ("SegmentationClass", [class_index[o.category] + 1 for o in objects])):
                png = Image.new("P", (width, height), 0)
                png.putpalette(palette)
                draw = ImageDraw.Draw(png)
                for obj, value in zip(objects, values):
                    for part in obj.parts:
                        draw.polygon([tuple(p) for p in part.tolist()], fill=value, outline=255, width=2)
                _write(root / folder / f"{image_id}.png", _image_bytes(png, "PNG"))
    ids["trainval"] = sorted(ids["train"] + ids["val"])
    for split, names in ids.items():
        _write(root / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{n}\n" for n in names).encode())
    return root


def _write_tiny(root: Path, rng: np.random.Generator) -> Path:
    shapes = [c[2] for c in TINY_CLASSES]
    colours = [c[3] for c in TINY_CLASSES]
    size = 64

    def sample(label: int, dense: bool) -> tuple[bytes, tuple[int, int, int, int]]:
        radius = size * (rng.uniform(0.4, 0.55) if dense else rng.uniform(0.1, 0.16))
        cx, cy = rng.uniform(radius, size - radius, size=2) if not dense else rng.uniform(24, 40, size=2)
        obj = Shape(label, [np.clip(_polygon(rng, shapes[label], cx, cy, radius), 0, size)])
        image = _render(rng, size, size, [obj], colours)
        return _image_bytes(image, "JPEG"), _inclusive_box(obj.parts, size, size)

    _write(root / "wnids.txt", "".join(f"{w}\n" for w, _, _, _ in TINY_CLASSES).encode())
    _write(root / "words.txt", "".join(f"{w}\t{words}\n" for w, words, _, _ in TINY_CLASSES).encode())
    for label, (wnid, _, _, _) in enumerate(TINY_CLASSES):
        lines = []
        for i in range(40):
            data, box = sample(label, dense=i % 3 == 0)
            name = f"{wnid}_{i}.JPEG"
            _write(root / "train" / wnid / "images" / name, data)
            lines.append("\t".join([name, *map(str, box)]) + "\n")
        _write(root / "train" / wnid / f"{wnid}_boxes.txt", "".join(lines).encode())
    val_lines = []
    for i in range(10 * len(TINY_CLASSES)):
        label = i % len(TINY_CLASSES)
        data, box = sample(label, dense=i % 3 == 0)
        name = f"val_{i}.JPEG"
        _write(root / "val" / "images" / name, data)
        val_lines.append("\t".join([name, TINY_CLASSES[label][0], *map(str, box)]) + "\n")
    _write(root / "val" / "val_annotations.txt", "".join(val_lines).encode())
    return root
