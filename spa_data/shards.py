"""HDF5 shards: images, task targets and selection labels of a subset (format: docs/shards.md).

``write_shards(subset_dir, ...)`` cuts the manifest into consecutive shards of
``shard_size`` samples (a deterministic plan), writes each under a temporary name in the
output directory, renames it into place, and finally writes ``index.json`` (shard files,
sample counts, sha256). A rerun keeps every shard whose file carries the same plan digest,
so a killed run resumes and ends with the same bytes as an uninterrupted one.
``ShardReader`` reads one shard; ``load_index`` checks and loads the index.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import h5py
import numpy as np
from PIL import Image

from spa_data.errors import SpaError
from spa_data.geometry import Geometry
from spa_data.labels import selection_labels

SCHEMA = "spa-shards"
SCHEMA_VERSION = 1
INDEX = "index.json"
SUBSET_FILES = ("summary.json", "manifest.jsonl", "annotations.jsonl")
_HASH_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class ShardJob:
    """Everything one worker needs to write one shard (picklable, no open files)."""

    index: int
    num_shards: int
    first: int
    out_dir: str
    subset_dir: str
    root: str
    manifest: tuple[str, ...]          # raw manifest lines of this shard
    annotations: tuple[str, ...]       # raw annotation lines of this shard
    header: dict = field(hash=False)   # shard-wide attributes (task, geometry, classes, ...)

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}.h5"

    @property
    def plan(self) -> str:
        """Digest of every input of this shard: equal digest -> identical bytes."""
        h = hashlib.sha256(json.dumps(self.header, sort_keys=True).encode())
        h.update(f"{self.index}/{self.num_shards}/{self.first}/{self.root}".encode())
        for line in self.manifest + self.annotations:
            h.update(line.encode())
        return h.hexdigest()


def read_subset(subset_dir: Path) -> tuple[dict, list[str], list[str]]:
    """summary.json and the raw lines of manifest.jsonl and annotations.jsonl, checked for agreement."""
    subset_dir = Path(subset_dir)
    if not subset_dir.is_dir():
        raise SpaError(f"{subset_dir}: not a directory")
    missing = [f for f in SUBSET_FILES if not (subset_dir / f).is_file()]
    if missing:
        raise SpaError(f"{subset_dir}: not a `spa-data build` output (missing {', '.join(missing)})")
    summary = _read_json(subset_dir / "summary.json")
    for key in ("tool", "task", "root", "recipe", "classes"):
        if key not in summary:
            raise SpaError(f"{subset_dir / 'summary.json'}: missing key {key!r} (not a `spa-data build` output)")
    if summary["tool"] != "spa-data":
        raise SpaError(f"{subset_dir / 'summary.json'}: tool is {summary['tool']!r}, not 'spa-data'")
    manifest = (subset_dir / "manifest.jsonl").read_text().splitlines()
    annotations = (subset_dir / "annotations.jsonl").read_text().splitlines()
    if len(manifest) != len(annotations):
        raise SpaError(f"{subset_dir}: manifest.jsonl has {len(manifest)} lines, annotations.jsonl {len(annotations)}")
    if not manifest:
        raise SpaError(f"{subset_dir / 'manifest.jsonl'}: no images")
    return summary, manifest, annotations


def geometry_for(summary: dict, strides: Sequence[int], size: Optional[tuple[int, int]] = None) -> Geometry:
    """The recipe's [geometry] with ``size`` overriding its size."""
    table = summary["recipe"].get("geometry") or {}
    if "mode" not in table or ("size" not in table and size is None):
        raise SpaError(f"summary.json: recipe {summary['recipe'].get('name')!r} has no [geometry] mode/size")
    return Geometry(table["mode"], tuple(size or table["size"]), tuple(strides))


def plan_shards(subset_dir: Path, out_dir: Path, *, strides: Sequence[int], size: Optional[tuple[int, int]] = None,
                shard_size: int = 1000) -> list[ShardJob]:
    """The deterministic partition of a subset into shard jobs."""
    if shard_size < 1:
        raise SpaError(f"--shard-size {shard_size}: must be at least 1")
    summary, manifest, annotations = read_subset(subset_dir)
    geometry = geometry_for(summary, strides, size)
    recipe = summary["recipe"]
    header = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "subset": summary.get("subset"),
        "task": summary["task"], "geometry": geometry.to_json(), "strides": list(geometry.strides),
        "image_format": "raw" if geometry.mode == "pad" else "jpeg",
        "classes": list(summary["classes"]), "category_ids": summary.get("category_ids"),
        "crowd": bool(recipe.get("crowd", True)), "use_masks": recipe.get("ratio_from", "auto") != "boxes",
    }
    n = len(manifest)
    num_shards = -(-n // shard_size)
    return [ShardJob(k, num_shards, k * shard_size, str(out_dir), str(subset_dir), str(summary["root"]),
                     tuple(manifest[k * shard_size:(k + 1) * shard_size]),
                     tuple(annotations[k * shard_size:(k + 1) * shard_size]), header)
            for k in range(num_shards)]


# ---------------------------------------------------------------------------------------- write


def write_shards(subset_dir: Path, out_dir: Optional[Path] = None, *, strides: Sequence[int] = (8, 16, 32),
                 size: Optional[tuple[int, int]] = None, shard_size: int = 1000, workers: int = 1,
                 progress: bool = True) -> dict:
    """Write (or finish) the shards of ``subset_dir`` into ``out_dir`` (default ``subset_dir/shards``)."""
    subset_dir = Path(subset_dir)
    out_dir = Path(out_dir) if out_dir is not None else subset_dir / "shards"
    jobs = plan_shards(subset_dir, out_dir, strides=strides, size=size, shard_size=shard_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove(out_dir / INDEX)  # no index = not finished; written last
    for stale in out_dir.glob(".shard-*.tmp*"):
        _remove(stale)
    done, todo = {}, []
    for job in jobs:
        entry = _finished_entry(job)
        if entry is not None:
            done[job.index] = entry
        else:
            todo.append(job)
    bar = _progress_bar(total=sum(len(j.manifest) for j in jobs), initial=sum(e["num_samples"] for e in done.values()),
                        desc=f"labels {subset_dir.name}", enabled=progress)
    try:
        if workers <= 1 or len(todo) <= 1:
            for job in todo:
                done[job.index] = write_shard(job)
                bar.update(done[job.index]["num_samples"])
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for job, entry in zip(todo, pool.map(write_shard, todo)):
                    done[job.index] = entry
                    bar.update(entry["num_samples"])
    finally:
        bar.close()
    planned = {job.name for job in jobs}
    for old in out_dir.glob("shard-*.h5"):  # left by an earlier plan with more shards
        if old.name not in planned:
            _remove(old)
    header = jobs[0].header
    entries = [done[k] for k in range(len(jobs))]
    has_masks = [e.pop("has_masks") for e in entries]
    index = dict(header, source=str(subset_dir.resolve()), num_samples=sum(len(j.manifest) for j in jobs),
                 has_masks=any(has_masks), shards=entries)
    _atomic_write(out_dir / INDEX, (json.dumps(index, indent=1, sort_keys=True) + "\n").encode())
    return index


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(*, total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()  # tqdm stays optional where nothing is shown (benchmarks on bare GPU hosts)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc=desc)


def _finished_entry(job: ShardJob) -> Optional[dict]:
    """The index entry of a shard already written by this plan, else None."""
    path = Path(job.out_dir) / job.name
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("plan") != job.plan:
                return None
            has_masks = bool(f.attrs["has_masks"])
    except (OSError, KeyError):
        return None
    return {"file": job.name, "num_samples": len(job.manifest), "sha256": file_sha256(path), "has_masks": has_masks}


def write_shard(job: ShardJob) -> dict:
    """Build one shard in memory, write it under a temporary name, rename it into place."""
    samples = [_make_sample(job, m, a) for m, a in zip(job.manifest, job.annotations)]
    final = Path(job.out_dir) / job.name
    tmp = final.with_name(f".{job.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w", libver=("earliest", "v110")) as f:
            has_masks = _write_h5(f, job, samples)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        _remove(tmp)
    return {"file": job.name, "num_samples": len(samples), "sha256": file_sha256(final), "has_masks": has_masks}


def _make_sample(job: ShardJob, manifest_line: str, annotation_line: str) -> dict:
    where = Path(job.subset_dir) / "annotations.jsonl"
    entry = json.loads(manifest_line)
    ann = json.loads(annotation_line)
    if ann.get("image_id") != entry.get("image_id"):
        raise SpaError(f"{where}: image {entry.get('image_id')!r}: annotations.jsonl has {ann.get('image_id')!r} "
                       "on that line")
    header = job.header
    geometry = Geometry.from_json(header["geometry"])
    width, height = entry["width"], entry["height"]
    layout = geometry.layout(width, height)
    path = Path(job.root) / entry["file"]
    image = _read_image(path, entry, header["image_format"])
    select = selection_labels(ann["objects"], width, height, layout, geometry.strides,
                              use_masks=header["use_masks"], crowd=header["crowd"])
    return {"entry": entry, "ann": ann, "layout": layout, "image": image, "select": select}


def _read_image(path: Path, entry: dict, image_format: str) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SpaError(f"{path}: image {entry['image_id']!r}: cannot read ({e.strerror or e})") from None
    if entry.get("sha256") and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise SpaError(f"{path}: image {entry['image_id']!r}: sha256 differs from manifest.jsonl "
                       "(file changed since build)")
    try:
        img = Image.open(io.BytesIO(data))
        size = img.size
        if image_format == "raw":
            pixels = np.asarray(img.convert("RGB"))
    except Exception as e:  # PIL raises many types for corrupt files
        raise SpaError(f"{path}: image {entry['image_id']!r}: unreadable image ({e})") from None
    if size != (entry["width"], entry["height"]):
        raise SpaError(f"{path}: image {entry['image_id']!r}: is {size[0]}x{size[1]}, manifest says "
                       f"{entry['width']}x{entry['height']}")
    if image_format == "raw":
        return np.ascontiguousarray(pixels).reshape(-1)
    if img.format != "JPEG":
        raise SpaError(f"{path}: image {entry['image_id']!r}: is {img.format}, "
                       "shards store JPEG bytes for this geometry")
    return np.frombuffer(data, dtype=np.uint8)


def _write_h5(f: h5py.File, job: ShardJob, samples: list[dict]) -> bool:
    """Write every dataset and attribute of one shard; True when some object has a mask."""
    header = job.header
    for key in ("schema", "schema_version", "subset", "task", "image_format"):
        f.attrs[key] = header[key] if header[key] is not None else ""
    for key in ("geometry", "classes", "category_ids"):
        f.attrs[key] = json.dumps(header[key])
    f.attrs["strides"] = np.array(header["strides"], dtype=np.int64)
    f.attrs.update({"num_samples": len(samples), "shard": job.index, "num_shards": job.num_shards,
                    "first_sample": job.first, "plan": job.plan})

    def put(name: str, data: Any, dtype=None) -> None:
        f.create_dataset(name, data=np.asarray(data, dtype=dtype), track_times=False)

    ids = [s["entry"]["image_id"] for s in samples]
    if all(isinstance(i, int) for i in ids):
        put("image_id", ids, np.int64)
    else:
        put("image_id", np.array([str(i).encode() for i in ids]))  # fixed-length bytes
    put("ratio", [s["entry"].get("ratio") or 0.0 for s in samples], np.float64)
    put("orig_hw", [(s["entry"]["height"], s["entry"]["width"]) for s in samples], np.int32)
    put("resized_hw", [s["layout"].resized[::-1] for s in samples], np.int32)
    put("canvas_hw", [s["layout"].canvas[::-1] for s in samples], np.int32)
    _put_ragged(put, "image", [s["image"] for s in samples])
    for stride in header["strides"]:
        put(f"select/{stride}", np.concatenate([s["select"][stride].ravel() for s in samples]), np.uint8)
    if header["task"] == "cls":
        labels = [s["ann"].get("label") for s in samples]
        bad = [s["entry"]["image_id"] for s, label in zip(samples, labels) if not isinstance(label, int)]
        if bad:
            raise SpaError(f"annotations.jsonl: image {bad[0]!r}: task cls needs an integer label")
        put("label", labels, np.int64)
    objects = [s["ann"]["objects"] for s in samples]
    if header["task"] == "multilabel":
        vectors = np.zeros((len(samples), len(header["classes"])), dtype=np.uint8)
        for row, objs in enumerate(objects):
            vectors[row, [o["category"] for o in objs]] = 1
        put("labels", vectors)
    flat = [o for objs in objects for o in objs]
    put("objects/offsets", np.cumsum([0] + [len(objs) for objs in objects]), np.int64)
    put("objects/box", np.array([o["box"] for o in flat], dtype=np.float64).reshape(-1, 4))
    put("objects/category", [o["category"] for o in flat], np.int64)
    put("objects/iscrowd", [bool(o.get("iscrowd")) for o in flat], np.uint8)
    put("objects/difficult", [bool(o.get("difficult")) for o in flat], np.uint8)
    rles = [np.frombuffer((o["mask"]["counts"] if o.get("mask") else "").encode(), dtype=np.uint8) for o in flat]
    _put_ragged(put, "objects/rle", rles)
    has_masks = any(len(r) for r in rles)
    f.attrs["has_masks"] = has_masks
    return has_masks


def _put_ragged(put, name: str, arrays: list[np.ndarray]) -> None:
    put(f"{name}/offsets", np.cumsum([0] + [len(a) for a in arrays]), np.int64)
    put(f"{name}/data", np.concatenate(arrays) if arrays else np.zeros(0), np.uint8)


# ---------------------------------------------------------------------------------------- read


def resolve_shard_dir(path: Path) -> Path:
    """A shard directory, its index.json, or a subset directory holding ``shards/``."""
    path = Path(path)
    if path.name == INDEX:
        return path.parent
    if (path / INDEX).is_file():
        return path
    if (path / "shards" / INDEX).is_file():
        return path / "shards"
    if path.is_dir() and (any(path.glob("shard-*.h5")) or any((path / "shards").glob("shard-*.h5"))):
        raise SpaError(f"{path}: no {INDEX} (an interrupted `spa-data labels` run? rerun it to finish)")
    raise SpaError(f"{path}: no shards here (expected {INDEX}; run `spa-data labels` first)")


def load_index(path: Path) -> tuple[Path, dict]:
    """(shard directory, index) after checking the schema and version."""
    shard_dir = resolve_shard_dir(path)
    index = _read_json(shard_dir / INDEX)
    check_schema(index.get("schema"), index.get("schema_version"), shard_dir / INDEX)
    for key in ("task", "strides", "geometry", "classes", "shards", "image_format"):
        if key not in index:
            raise SpaError(f"{shard_dir / INDEX}: missing key {key!r}")
    return shard_dir, index


def check_schema(schema: Any, version: Any, where: Path) -> None:
    if schema != SCHEMA:
        raise SpaError(f"{where}: schema {schema!r} is not {SCHEMA!r}")
    if version != SCHEMA_VERSION:
        raise SpaError(f"{where}: schema version {version!r}, this spa_data reads version {SCHEMA_VERSION}")


class ShardReader:
    """One open shard: per-sample raw fields as numpy arrays (image bytes undecoded)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as e:
            raise SpaError(f"{self.path}: not a readable HDF5 shard (truncated or corrupt: {e})") from None
        try:
            f = self.file
            check_schema(_attr(f, "schema"), _attr(f, "schema_version"), self.path)
            self.task = _attr(f, "task")
            self.image_format = _attr(f, "image_format")
            self.strides = [int(s) for s in f.attrs["strides"]]
            self.num_samples = int(f.attrs["num_samples"])
            ids = f["image_id"][()]
            self.image_ids = [int(i) for i in ids] if ids.dtype.kind == "i" else [i.decode() for i in ids]
            self.orig_hw = f["orig_hw"][()]
            self.resized_hw = f["resized_hw"][()]
            self.canvas_hw = f["canvas_hw"][()]
            self.ratio = f["ratio"][()]
            self.image_offsets = f["image/offsets"][()]
            self.object_offsets = f["objects/offsets"][()]
            self.rle_offsets = f["objects/rle/offsets"][()]
            cells = {s: (self.canvas_hw[:, 0] // s) * (self.canvas_hw[:, 1] // s) for s in self.strides}
            self.select_offsets = {s: np.concatenate([[0], np.cumsum(c)]) for s, c in cells.items()}
            self.label = f["label"][()] if "label" in f else None
            self.labels = f["labels"][()] if "labels" in f else None
            names = ["image/data", "objects/rle/data", "objects/box", "objects/category", "objects/iscrowd"]
            self._datasets = {name: f[name] for name in names + [f"select/{s}" for s in self.strides]}
        except SpaError:
            self.close()
            raise
        except (OSError, KeyError, ValueError) as e:
            self.close()
            raise SpaError(f"{self.path}: damaged shard ({e})") from None

    def read(self, i: int, *, objects: bool = True) -> dict:
        """Raw fields of sample ``i`` of this shard (``objects=False`` skips boxes and masks)."""
        d = self._datasets
        try:
            out = {
                "image_id": self.image_ids[i], "image_format": self.image_format,
                "image": d["image/data"][self.image_offsets[i]:self.image_offsets[i + 1]],
                "orig_hw": tuple(int(v) for v in self.orig_hw[i]),
                "resized_hw": tuple(int(v) for v in self.resized_hw[i]),
                "canvas_hw": tuple(int(v) for v in self.canvas_hw[i]),
                "select": {s: d[f"select/{s}"][self.select_offsets[s][i]:self.select_offsets[s][i + 1]].reshape(
                    self.canvas_hw[i, 0] // s, self.canvas_hw[i, 1] // s) for s in self.strides},
            }
            if objects:
                out.update(self._objects(i))
        except (OSError, ValueError) as e:
            raise SpaError(f"{self.path}: sample {i}: unreadable ({e})") from None
        if self.label is not None:
            out["label"] = int(self.label[i])
        if self.labels is not None:
            out["labels"] = self.labels[i]
        return out

    def _objects(self, i: int) -> dict:
        d = self._datasets
        a, b = self.object_offsets[i], self.object_offsets[i + 1]
        if a == b:
            return {"boxes": np.zeros((0, 4)), "categories": np.zeros(0, np.int64), "iscrowd": np.zeros(0, np.uint8),
                    "rles": []}
        rle_data = d["objects/rle/data"][self.rle_offsets[a]:self.rle_offsets[b]]
        starts = self.rle_offsets[a:b + 1] - self.rle_offsets[a]
        return {"boxes": d["objects/box"][a:b], "categories": d["objects/category"][a:b],
                "iscrowd": d["objects/iscrowd"][a:b],
                "rles": [rle_data[starts[k]:starts[k + 1]].tobytes() for k in range(b - a)]}

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _attr(f: h5py.File, key: str) -> Any:
    value = f.attrs.get(key)
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.integer):
        value = int(value)
    return value


# ---------------------------------------------------------------------------------------- util


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SpaError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpaError(f"{path}: malformed JSON ({e})") from None


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------------------------- verify, stats


def verify_shards(path: Path, *, sample: int = 16, progress: bool = False) -> dict:
    """Check checksums, schema and counts of every shard; re-derive ``sample`` samples' labels
    (and boxes, categories, image bytes) from the subset's annotations. Raises SpaError on the first fault."""
    shard_dir, index = load_index(path)
    geometry = Geometry.from_json(index["geometry"])
    total = 0
    for entry in index["shards"]:
        shard = shard_dir / entry["file"]
        if not shard.is_file():
            raise SpaError(f"{shard}: missing (listed in {shard_dir / INDEX})")
        digest = file_sha256(shard)
        if digest != entry["sha256"]:
            raise SpaError(f"{shard}: sha256 {digest[:16]}... does not match {INDEX} ({entry['sha256'][:16]}...)")
        reader = ShardReader(shard)
        reader.close()
        if reader.num_samples != entry["num_samples"]:
            raise SpaError(f"{shard}: holds {reader.num_samples} samples, {INDEX} says {entry['num_samples']}")
        total += reader.num_samples
    if total != index["num_samples"]:
        raise SpaError(f"{shard_dir / INDEX}: shards hold {total} samples, num_samples says {index['num_samples']}")
    picks = sorted(set(np.linspace(0, total - 1, min(sample, total)).round().astype(int).tolist())) if sample else []
    if picks:
        _rederive(shard_dir, index, geometry, picks)
    return {"shards": len(index["shards"]), "samples": total, "rederived": len(picks)}


def _rederive(shard_dir: Path, index: dict, geometry: Geometry, picks: list[int]) -> None:
    source = Path(index["source"])
    _, manifest, annotations = read_subset(source)
    starts = np.concatenate([[0], np.cumsum([e["num_samples"] for e in index["shards"]])])
    readers: dict[int, ShardReader] = {}
    try:
        for i in picks:
            k = int(np.searchsorted(starts, i, side="right") - 1)
            reader = readers.get(k) or readers.setdefault(k, ShardReader(shard_dir / index["shards"][k]["file"]))
            stored = reader.read(i - int(starts[k]))
            entry, ann = json.loads(manifest[i]), json.loads(annotations[i])
            where = f"{reader.path}: sample {i - int(starts[k])} (image {entry['image_id']!r})"
            if stored["image_id"] != entry["image_id"]:
                raise SpaError(f"{where}: image_id differs from {source / 'manifest.jsonl'} line {i + 1}")
            layout = geometry.layout(entry["width"], entry["height"])
            expected = selection_labels(ann["objects"], entry["width"], entry["height"], layout, geometry.strides,
                                        use_masks=index["use_masks"], crowd=index["crowd"])
            for s in geometry.strides:
                if not np.array_equal(expected[s], stored["select"][s]):
                    raise SpaError(f"{where}: stride-{s} selection labels differ from a re-derivation from "
                                   f"{source / 'annotations.jsonl'}")
            boxes = np.array([o["box"] for o in ann["objects"]], dtype=np.float64).reshape(-1, 4)
            categories = [o["category"] for o in ann["objects"]]
            if not (np.array_equal(boxes, stored["boxes"]) and categories == stored["categories"].tolist()):
                raise SpaError(f"{where}: boxes or categories differ from {source / 'annotations.jsonl'}")
            if index["image_format"] == "jpeg" and entry.get("sha256"):
                if hashlib.sha256(stored["image"].tobytes()).hexdigest() != entry["sha256"]:
                    raise SpaError(f"{where}: image bytes differ from the sha256 in {source / 'manifest.jsonl'}")
    finally:
        for reader in readers.values():
            reader.close()


def shard_stats(path: Path, *, select_threshold: float = 0.0) -> dict:
    """Per stride: positive-cell ratio (of canvas cells and of content cells) against the pixel ratio."""
    from spa_data.labels import threshold_code

    shard_dir, index = load_index(path)
    code = threshold_code(select_threshold)
    strides = index["strides"]
    ratio, coverage, canvas_pos, content_pos = [], [], {s: [] for s in strides}, {s: [] for s in strides}
    finest = min(strides)
    for entry in index["shards"]:
        reader = ShardReader(shard_dir / entry["file"])
        try:
            ratio.append(reader.ratio)
            rh, rw = reader.resized_hw[:, 0], reader.resized_hw[:, 1]
            for s in strides:
                q = reader.file[f"select/{s}"][()]
                starts = reader.select_offsets[s][:-1]
                cells = np.diff(reader.select_offsets[s])
                positives = np.add.reduceat((q > code).astype(np.int64), starts) if len(q) else np.zeros(len(cells))
                content = np.ceil(rh / s) * np.ceil(rw / s)   # objects never lie outside the content
                canvas_pos[s].append(positives / cells)
                content_pos[s].append(positives / content)
                if s == finest and len(q):
                    covered = np.add.reduceat(q.astype(np.float64), starts) / 255.0 * s * s
                    coverage.append(covered / (rh * rw))
        finally:
            reader.close()
    cat = np.concatenate
    return {
        "subset": index.get("subset"), "num_samples": index["num_samples"], "select_threshold": select_threshold,
        "pixel_ratio_manifest": float(cat(ratio).mean()),
        "pixel_ratio_content": float(cat(coverage).mean()),
        "positive_ratio_canvas": {s: float(cat(canvas_pos[s]).mean()) for s in strides},
        "positive_ratio_content": {s: float(cat(content_pos[s]).mean()) for s in strides},
    }
