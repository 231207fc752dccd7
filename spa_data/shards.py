"""HDF5 shards: images, task targets and selection labels of a subset (format: docs/shards.md).

``write_shards(subset_dir, ...)`` cuts the manifest into consecutive shards of
``shard_size`` samples (a deterministic plan), writes each under a temporary name in the
output directory, renames it into place, records its sha256 in a journal, and finally writes
``index.json`` (shard files, sample counts, sha256). One run at a time holds the directory's
lock. A rerun keeps a shard only when it carries the same plan digest AND still has the
sha256 recorded when it was written, so a killed run resumes and ends with the same bytes as
an uninterrupted one, and a shard damaged since is rewritten, never re-hashed into the index.
``ShardReader`` reads one shard; ``load_index`` checks and loads the index.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import h5py
import numpy as np

from spa_common.errors import ParamError, SpaError
from spa_common.hashing import sha256_bytes, sha256_file
from spa_common.io import (atomic_write, check_apart, directory_lock, foreign_entries, lock_holder, refuse_foreign,
                           remove_quietly)
from spa_common.jsonio import read_json, read_json_or_none
from spa_data.geometry import Geometry, GeometrySpec
from spa_data.images import UnreadableImage, jpeg_problem, read_image
from spa_data.labels import selection_labels
from spa_data.records import check_image_id
from spa_data.workers import process_pool

SCHEMA = "spa-shards"
SCHEMA_VERSION = 1
INDEX = "index.json"
JOURNAL = ".labels-journal.jsonl"   # {"file", "sha256"} of each shard as it is written; gone once index.json is
LOCK = ".labels.lock"
SUBSET_FILES = ("summary.json", "manifest.jsonl", "annotations.jsonl")
ON_BAD_IMAGE = ("error", "skip")
_OUTPUT_NAME = re.compile(r"shard-\d{5,}\.h5|\.shard-\d{5,}\.h5\.tmp-\d+|index\.json|\.index\.json\.tmp-\d+"
                          r"|\.labels-journal\.jsonl|\.labels\.lock")


# ---------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class ShardJob:
    """Everything one worker needs to write one shard (picklable, no open files)."""

    index: int
    num_shards: int
    first: int                         # manifest line (0-based) of the shard's first sample
    out_dir: str
    subset_dir: str
    root: str
    manifest: tuple[str, ...]          # raw manifest lines of this shard
    annotations: tuple[str, ...]       # raw annotation lines of this shard
    header: dict = field(hash=False)   # shard-wide attributes (task, geometry, classes, ...)
    on_bad_image: str = "error"        # error | skip (an image that does not decode)

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}.h5"

    @property
    def plan(self) -> str:
        """Digest of every input of this shard: equal digest -> identical bytes.

        The images enter through their sha256 in the manifest; where the manifest has none
        (built without checksums), through their path under ``root``.
        """
        h = hashlib.sha256(json.dumps(self.header, sort_keys=True).encode())
        hashed = all(json.loads(line).get("sha256") for line in self.manifest)
        h.update(f"{self.index}/{self.num_shards}/{self.first}/{self.on_bad_image}/"
                 f"{'' if hashed else self.root}".encode())
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
    summary = read_json(subset_dir / "summary.json")
    if not isinstance(summary, dict):
        raise SpaError(f"{subset_dir / 'summary.json'}: not a `spa-data build` summary")
    for key in ("tool", "task", "root", "recipe", "classes"):
        if key not in summary:
            raise SpaError(f"{subset_dir / 'summary.json'}: missing key {key!r} (not a `spa-data build` output)")
    if summary["tool"] != "spa-data":
        raise SpaError(f"{subset_dir / 'summary.json'}: tool is {summary['tool']!r}, not 'spa-data'")
    manifest, annotations = (_read_lines(subset_dir / name) for name in ("manifest.jsonl", "annotations.jsonl"))
    if len(manifest) != len(annotations):
        raise SpaError(f"{subset_dir}: manifest.jsonl has {len(manifest)} lines, annotations.jsonl {len(annotations)}")
    if not manifest:
        raise SpaError(f"{subset_dir / 'manifest.jsonl'}: no images")
    return summary, manifest, annotations


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise SpaError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def geometry_for(summary: dict, strides: Sequence[int], size: Optional[tuple[int, int]] = None, *,
                 where: Path) -> Geometry:
    """The recipe's [geometry] (as the subset's summary.json ``where`` records it) at ``strides``,
    with ``size`` overriding its size."""
    table = summary["recipe"].get("geometry")
    if not table:
        raise SpaError(f"{where}: recipe {summary['recipe'].get('name')!r} has no [geometry] table (mode, size)")
    try:
        spec = GeometrySpec.from_table(table)
    except SpaError as e:
        raise SpaError(f"{where}: recipe {e}") from None
    return spec.with_strides(strides, size)


def plan_shards(subset_dir: Path, out_dir: Path, *, strides: Sequence[int], size: Optional[tuple[int, int]] = None,
                shard_size: int = 1000, root: Optional[Path] = None, on_bad_image: str = "error") -> list[ShardJob]:
    """The deterministic partition of a subset into shard jobs (``root``: the dataset root, when it moved)."""
    if shard_size < 1:
        raise ParamError(f"{{shard_size}} {shard_size}: must be at least 1", "shard_size")
    if on_bad_image not in ON_BAD_IMAGE:
        raise SpaError(f"on_bad_image {on_bad_image!r}: expected one of {', '.join(ON_BAD_IMAGE)}")
    summary, manifest, annotations = read_subset(subset_dir)
    geometry = geometry_for(summary, strides, size, where=Path(subset_dir) / "summary.json")
    recipe = summary["recipe"]
    header = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "subset": summary.get("subset"),
        "task": summary["task"], "geometry": geometry.to_json(), "strides": list(geometry.strides),
        "image_format": "raw" if geometry.mode == "pad" else "jpeg",
        "classes": list(summary["classes"]), "category_ids": summary.get("category_ids"),
        "crowd": bool(recipe.get("crowd", True)), "use_masks": recipe.get("ratio_from", "auto") != "boxes",
    }
    root = Path(root) if root is not None else Path(summary["root"])
    if not root.is_dir():
        raise SpaError(f"{root}: dataset root (from {Path(subset_dir) / 'summary.json'}) not found; "
                       "if the dataset moved, give its new root")
    n = len(manifest)
    num_shards = -(-n // shard_size)
    return [ShardJob(k, num_shards, k * shard_size, str(out_dir), str(subset_dir), str(root),
                     tuple(manifest[k * shard_size:(k + 1) * shard_size]),
                     tuple(annotations[k * shard_size:(k + 1) * shard_size]), header, on_bad_image)
            for k in range(num_shards)]


def shard_dir_owned(path: Path) -> Optional[str]:
    """None when ``path`` holds only what `spa-data labels` writes (its index.json a spa-shards index), else why not."""
    foreign = foreign_entries(path, lambda p: _OUTPUT_NAME.fullmatch(p.name) is not None)
    if foreign:
        return f"holds {foreign[0]}, which `spa-data labels` did not write"
    if (path / INDEX).is_file():
        index = read_json_or_none(path / INDEX)
        if not isinstance(index, dict) or index.get("schema") != SCHEMA:
            return f"its {INDEX} is not a {SCHEMA} index"
    return None


# ---------------------------------------------------------------------------------------- write


def write_shards(subset_dir: Path, out_dir: Optional[Path] = None, *, strides: Sequence[int] = (8, 16, 32),
                 size: Optional[tuple[int, int]] = None, shard_size: int = 1000, workers: int = 1,
                 root: Optional[Path] = None, on_bad_image: str = "error", progress: bool = True) -> dict:
    """Write (or finish) the shards of ``subset_dir`` into ``out_dir`` (default ``subset_dir/shards``).

    ``root`` overrides the dataset root recorded in summary.json (a moved dataset);
    ``on_bad_image="skip"`` leaves out images that do not decode (listed in index.json).
    """
    subset_dir = Path(subset_dir)
    out_dir = Path(out_dir) if out_dir is not None else subset_dir / "shards"
    jobs = plan_shards(subset_dir, out_dir, strides=strides, size=size, shard_size=shard_size, root=root,
                       on_bad_image=on_bad_image)
    check_apart(out_dir, Path(jobs[0].root), "dataset root")
    if out_dir.resolve() == subset_dir.resolve():
        raise SpaError(f"{out_dir}: is the subset directory itself; shards need a directory of their own")
    refuse_foreign(out_dir, shard_dir_owned, "write shards there")
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpaError(f"{out_dir}: cannot create the shard directory ({e.strerror or e})") from None
    try:
        with directory_lock(out_dir / LOCK, "`spa-data labels`"):
            try:
                return _write_locked(subset_dir, out_dir, jobs, workers, progress)
            finally:
                for stale in out_dir.glob(".shard-*.tmp-*"):   # ours or a killed run's: we hold the lock
                    remove_quietly(stale)
                if (out_dir / JOURNAL).is_file() and not (out_dir / JOURNAL).stat().st_size:
                    remove_quietly(out_dir / JOURNAL)
    finally:
        if created and not any(out_dir.iterdir()):   # failed before the first shard: as if never run
            out_dir.rmdir()


def _write_locked(subset_dir: Path, out_dir: Path, jobs: list[ShardJob], workers: int, progress: bool) -> dict:
    recorded = _recorded_digests(out_dir)
    remove_quietly(out_dir / INDEX)  # no index = not finished; written last
    done, todo = {}, []
    for job in jobs:
        entry = _finished_entry(job, recorded.get(job.name))
        if entry is not None:
            done[job.index] = entry
        else:
            todo.append(job)
    bar = _progress_bar(total=sum(len(j.manifest) for j in jobs), initial=sum(len(jobs[k].manifest) for k in done),
                        desc=f"labels {subset_dir.name}", enabled=progress)
    try:
        with open(out_dir / JOURNAL, "a", encoding="utf-8") as journal:
            for job, entry in _run(todo, workers):
                journal.write(json.dumps({"file": entry["file"], "sha256": entry["sha256"]}) + "\n")
                journal.flush()
                done[job.index] = entry
                bar.update(len(job.manifest))
    finally:
        bar.close()
    planned = {job.name for job in jobs}
    for old in out_dir.glob("shard-*.h5"):  # left by an earlier plan with more shards
        if old.name not in planned:
            remove_quietly(old)
    entries = [done[k] for k in range(len(jobs))]
    has_masks = any([e.pop("has_masks") for e in entries])
    skipped = [s for e in entries for s in e.pop("skipped")]
    index = dict(jobs[0].header, source=os.path.relpath(subset_dir.resolve(), out_dir.resolve()),
                 num_samples=sum(e["num_samples"] for e in entries), has_masks=has_masks,
                 on_bad_image=jobs[0].on_bad_image, skipped_images=skipped, shards=entries)
    atomic_write(out_dir / INDEX, (json.dumps(index, indent=1, sort_keys=True) + "\n").encode())
    remove_quietly(out_dir / JOURNAL)
    return index


def _run(todo: list[ShardJob], workers: int):
    """(job, index entry) of each written shard, as each finishes."""
    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            yield job, write_shard(job)
        return
    with process_pool(min(workers, len(todo))) as pool:
        yield from pool.imap_unordered(_write_job, todo)


def _write_job(job: ShardJob) -> tuple[ShardJob, dict]:
    return job, write_shard(job)


def _recorded_digests(out_dir: Path) -> dict[str, str]:
    """{shard file: sha256 when written}, from the last finished run's index.json and this run's journal."""
    recorded = {}
    index = read_json_or_none(out_dir / INDEX)
    try:
        recorded.update({e["file"]: e["sha256"] for e in index["shards"]})
    except (KeyError, TypeError):   # no index (None), or not one this tool wrote
        pass
    try:
        lines = (out_dir / JOURNAL).read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:   # the last line may be cut short by a kill: ignored
        try:
            entry = json.loads(line)
            recorded[entry["file"]] = entry["sha256"]
        except (ValueError, KeyError, TypeError):
            continue
    return recorded


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


def _finished_entry(job: ShardJob, recorded_sha256: Optional[str]) -> Optional[dict]:
    """The index entry of a shard this plan already wrote and nothing changed since, else None."""
    path = Path(job.out_dir) / job.name
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("plan") != job.plan:
                return None
            has_masks = bool(f.attrs["has_masks"])
            num_samples = int(f.attrs["num_samples"])
            skipped = json.loads(f.attrs.get("skipped_images", "[]"))
    except (OSError, KeyError, ValueError):
        return None
    if recorded_sha256 is None:
        return None   # renamed into place but never recorded (killed in between): redone
    digest = sha256_file(path)
    if digest != recorded_sha256:
        print(f"{path}: changed since it was written (sha256 {digest[:16]}... was {recorded_sha256[:16]}...); "
              "writing it again", file=sys.stderr)
        return None
    return {"file": job.name, "num_samples": num_samples, "sha256": digest, "has_masks": has_masks,
            "skipped": skipped}


def write_shard(job: ShardJob) -> dict:
    """Build one shard in memory, write it under a temporary name (fsynced), rename it into place."""
    samples, skipped = [], []
    geometry = Geometry.from_json(job.header["geometry"])
    for n, (m, a) in enumerate(zip(job.manifest, job.annotations)):
        try:
            samples.append(_make_sample(job, geometry, job.first + n, m, a))
        except UnreadableImage as e:
            if job.on_bad_image != "skip":
                raise
            entry = json.loads(m)
            skipped.append({"line": job.first + n + 1, "image_id": entry["image_id"], "file": entry["file"],
                            "reason": str(e)})
    # Built in memory (HDF5's core driver: the same bytes as a file) and written by atomic_write: a
    # full disk is then a clean OSError, where HDF5 closing a file after a failed write can crash.
    with h5py.File(f"{job.name}-{os.getpid()}", "w", driver="core", backing_store=False,
                   libver=("earliest", "v110")) as f:
        has_masks = _write_h5(f, job, samples, skipped)
        f.flush()
        image = f.id.get_file_image()
    atomic_write(Path(job.out_dir) / job.name, image, kept="the shards written so far are kept (rerun to resume)")
    return {"file": job.name, "num_samples": len(samples), "sha256": sha256_bytes(image),
            "has_masks": has_masks, "skipped": skipped}


def _make_sample(job: ShardJob, geometry: Geometry, line: int, manifest_line: str, annotation_line: str) -> dict:
    subset = Path(job.subset_dir)
    try:
        entry, ann = json.loads(manifest_line), json.loads(annotation_line)
        image_id, file, width, height = entry["image_id"], entry["file"], entry["width"], entry["height"]
        objects = ann["objects"]
    except (ValueError, KeyError, TypeError) as e:
        raise SpaError(f"{subset}: manifest.jsonl / annotations.jsonl line {line + 1}: not a subset entry "
                       f"({type(e).__name__}: {e})") from None
    check_image_id(image_id, f"{subset / 'manifest.jsonl'}: line {line + 1}")
    if ann.get("image_id") != image_id:
        raise SpaError(f"{subset / 'annotations.jsonl'}: image {image_id!r}: annotations.jsonl has "
                       f"{ann.get('image_id')!r} on that line")
    header = job.header
    layout = geometry.layout(width, height)
    image = read_image(Path(job.root) / file, entry, header["image_format"])
    select = selection_labels(objects, width, height, layout, geometry.strides,
                              use_masks=header["use_masks"], crowd=header["crowd"])
    return {"entry": entry, "ann": ann, "layout": layout, "image": image, "select": select}


def _write_h5(f: h5py.File, job: ShardJob, samples: list[dict], skipped: list[dict]) -> bool:
    """Write every dataset and attribute of one shard; True when some object has a mask."""
    header = job.header
    for key in ("schema", "schema_version", "subset", "task", "image_format"):
        f.attrs[key] = header[key] if header[key] is not None else ""
    for key in ("geometry", "classes", "category_ids"):
        f.attrs[key] = json.dumps(header[key])
    f.attrs["strides"] = np.array(header["strides"], dtype=np.int64)
    f.attrs.update({"num_samples": len(samples), "shard": job.index, "num_shards": job.num_shards,
                    "first_sample": job.first, "plan": job.plan, "skipped_images": json.dumps(skipped)})

    def put(name: str, data: Any, dtype=None) -> None:
        f.create_dataset(name, data=np.asarray(data, dtype=dtype), track_times=False)

    ids = [s["entry"]["image_id"] for s in samples]
    if all(isinstance(i, int) for i in ids):
        put("image_id", ids, np.int64)
    else:
        put("image_id", np.array([str(i).encode() for i in ids], dtype=bytes))  # fixed-length bytes
    put("ratio", [s["entry"].get("ratio") or 0.0 for s in samples], np.float64)
    pairs = {"orig_hw": [(s["entry"]["height"], s["entry"]["width"]) for s in samples],
             "resized_hw": [s["layout"].resized[::-1] for s in samples],
             "canvas_hw": [s["layout"].canvas[::-1] for s in samples]}
    for name, rows in pairs.items():
        put(name, np.array(rows, dtype=np.int32).reshape(-1, 2))
    _put_ragged(put, "image", [s["image"] for s in samples])
    for stride in header["strides"]:
        put(f"select/{stride}", np.concatenate([s["select"][stride].ravel() for s in samples] or [[]]), np.uint8)
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
    for candidate in (path, path / "shards"):
        holder = lock_holder(candidate / LOCK)
        if holder is not None:
            raise SpaError(f"{candidate}: `spa-data labels` (pid {holder}) is still writing these shards")
    if path.is_dir() and (any(path.glob("shard-*.h5")) or any((path / "shards").glob("shard-*.h5"))):
        raise SpaError(f"{path}: no {INDEX} (an interrupted `spa-data labels` run? rerun it to finish)")
    raise SpaError(f"{path}: no shards here (expected {INDEX}; run `spa-data labels` first)")


def load_index(path: Path) -> tuple[Path, dict]:
    """(shard directory, index) after checking the schema and version."""
    shard_dir = resolve_shard_dir(path)
    index = read_json(shard_dir / INDEX)
    if not isinstance(index, dict):
        raise SpaError(f"{shard_dir / INDEX}: not a shard index (expected a JSON object)")
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


def open_listed(shard_dir: Path, index: dict, k: int) -> ShardReader:
    """Shard ``k`` of ``index``, checked to be the shard the index lists (count, task, strides, image format)."""
    entry = index["shards"][k]
    path = shard_dir / entry["file"]
    if not path.is_file():
        raise SpaError(f"{path}: missing (listed in {shard_dir / INDEX}; rerun `spa-data labels`)")
    reader = ShardReader(path)
    for name, found, listed in (("samples", reader.num_samples, entry["num_samples"]),
                                ("task", reader.task, index["task"]), ("strides", reader.strides, index["strides"]),
                                ("image format", reader.image_format, index["image_format"])):
        if found != listed:
            reader.close()
            raise SpaError(f"{path}: {name} {found}, {shard_dir / INDEX} says {listed} (shards of different runs "
                           "mixed? rerun `spa-data labels`)")
    return reader


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


# ---------------------------------------------------------------------------------------- verify, stats


def verify_shards(path: Path, *, sample: int = 16, subset: Optional[Path] = None) -> dict:
    """Check checksums, schema and counts of every shard; re-derive ``sample`` samples' labels
    (and boxes, categories, image bytes, decodability) from the subset's annotations.

    ``subset``: the subset directory, when it is no longer where index.json says (relative to
    the shard directory). Raises SpaError on the first fault.
    """
    if sample < 0:
        raise SpaError(f"sample {sample}: must be >= 0")
    shard_dir, index = load_index(path)
    geometry = Geometry.from_json(index["geometry"])
    total = 0
    for k, entry in enumerate(index["shards"]):
        shard = shard_dir / entry["file"]
        if not shard.is_file():
            raise SpaError(f"{shard}: missing (listed in {shard_dir / INDEX})")
        digest = sha256_file(shard)
        if digest != entry["sha256"]:
            raise SpaError(f"{shard}: sha256 {digest[:16]}... does not match {INDEX} ({entry['sha256'][:16]}...)")
        open_listed(shard_dir, index, k).close()
        total += entry["num_samples"]
    if total != index["num_samples"]:
        raise SpaError(f"{shard_dir / INDEX}: shards hold {total} samples, num_samples says {index['num_samples']}")
    picks = sorted(set(np.linspace(0, total - 1, min(sample, total)).round().astype(int).tolist())) if sample else []
    if picks:
        _rederive(shard_dir, index, geometry, picks, _subset_of(shard_dir, index, subset))
    return {"shards": len(index["shards"]), "samples": total, "rederived": len(picks)}


def _subset_of(shard_dir: Path, index: dict, subset: Optional[Path]) -> Path:
    if subset is not None:
        return Path(subset)
    source = shard_dir / index.get("source", "..")   # relative to the shard directory (absolute before)
    if not (source / "manifest.jsonl").is_file():
        raise SpaError(f"{shard_dir / INDEX}: its subset {source} is not there (moved?); give the subset directory")
    return source


def _rederive(shard_dir: Path, index: dict, geometry: Geometry, picks: list[int], source: Path) -> None:
    _, manifest, annotations = read_subset(source)
    skipped = {s["line"] - 1 for s in index.get("skipped_images", [])}
    lines = [n for n in range(len(manifest)) if n not in skipped]   # manifest line of each sample
    if len(lines) != index["num_samples"]:
        raise SpaError(f"{source / 'manifest.jsonl'}: {len(manifest)} lines less {len(skipped)} skipped are not "
                       f"the {index['num_samples']} samples of {shard_dir / INDEX} (another subset?)")
    starts = np.concatenate([[0], np.cumsum([e["num_samples"] for e in index["shards"]])])
    readers: dict[int, ShardReader] = {}
    try:
        for i in picks:
            k = int(np.searchsorted(starts, i, side="right") - 1)
            reader = readers.get(k) or readers.setdefault(k, open_listed(shard_dir, index, k))
            stored = reader.read(i - int(starts[k]))
            entry, ann = json.loads(manifest[lines[i]]), json.loads(annotations[lines[i]])
            where = f"{reader.path}: sample {i - int(starts[k])} (image {entry['image_id']!r})"
            if stored["image_id"] != entry["image_id"]:
                raise SpaError(f"{where}: image_id differs from {source / 'manifest.jsonl'} line {lines[i] + 1}")
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
            if index["image_format"] == "jpeg":
                if entry.get("sha256") and sha256_bytes(stored["image"].tobytes()) != entry["sha256"]:
                    raise SpaError(f"{where}: image bytes differ from the sha256 in {source / 'manifest.jsonl'}")
                problem = jpeg_problem(np.asarray(stored["image"]))
                if problem is not None:
                    raise SpaError(f"{where}: image does not decode ({problem})")
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
    for k in range(len(index["shards"])):
        reader = open_listed(shard_dir, index, k)
        try:
            ratio.append(reader.ratio)
            rh, rw = reader.resized_hw[:, 0], reader.resized_hw[:, 1]
            for s in strides:
                q = reader.file[f"select/{s}"][()]
                starts = reader.select_offsets[s][:-1]
                cells = np.diff(reader.select_offsets[s])
                if len(q) != reader.select_offsets[s][-1]:
                    raise SpaError(f"{reader.path}: select/{s} holds {len(q)} cells, its canvas sizes "
                                   f"{reader.select_offsets[s][-1]} (damaged shard)")
                positives = np.add.reduceat((q > code).astype(np.int64), starts) if len(q) else np.zeros(len(cells))
                content = np.ceil(rh / s) * np.ceil(rw / s)   # objects never lie outside the content
                canvas_pos[s].append(positives / cells)
                content_pos[s].append(positives / content)
                if s == finest and len(q):
                    covered = np.add.reduceat(q.astype(np.float64), starts) / 255.0 * s * s
                    coverage.append(covered / (rh * rw))
        except (OSError, KeyError) as e:
            raise SpaError(f"{reader.path}: damaged shard ({e})") from None
        finally:
            reader.close()
    if not index["num_samples"]:
        raise SpaError(f"{shard_dir / INDEX}: no samples")
    cat = np.concatenate
    return {
        "subset": index.get("subset"), "num_samples": index["num_samples"], "select_threshold": select_threshold,
        "pixel_ratio_manifest": float(cat(ratio).mean()),
        "pixel_ratio_content": float(cat(coverage).mean()),
        "positive_ratio_canvas": {s: float(cat(canvas_pos[s]).mean()) for s in strides},
        "positive_ratio_content": {s: float(cat(content_pos[s]).mean()) for s in strides},
    }
