"""Build sparse subsets (COCO-S, BDD-S, VOC-S, IN-S) and their dense baselines.

One pass over a source split: every image is converted to an ``ImageRecord`` (in
worker processes), its object-pixel ratio is measured on the recipe's canvas, and
it is kept iff it has objects (or ``keep_empty``) and ``min_ratio <= ratio < max_ratio``
(the ratio rounded to 6 decimals, as written, so a manifest can be re-filtered exactly).
The subset directory holds ``manifest.jsonl``, ``annotations.jsonl``, ``summary.json``
and ``ratio_hist.png``; the same inputs give the same bytes for
any number of workers or parts.

Files of dropped images are never read; the files of kept images are hashed
(sha256), or only stat'ed with ``checksums=False``, so a missing image of the subset
is an error that names it. IN-S padding is only *recorded* here (``recipe.pad``, the
ratio taken on the padded canvas); the padded pixels are materialised by the shard
stage (``spa-data labels``).

Scaling out: ``Part(index, count)`` builds one contiguous slice of the sorted items;
:func:`merge_parts` joins all parts into exactly the bytes of a single run.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from tqdm import tqdm

try:  # ~5x faster line encoding; optional (falls back to the stdlib, same bytes)
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None

from spa_common.errors import ParamError, SpaError
from spa_common.hashing import sha256_file
from spa_common.io import check_apart, foreign_entries, staged_dir
from spa_common.jsonio import read_json, read_json_or_none
from spa_data import __version__
from spa_data.ratio import object_pixel_ratio
from spa_data.recipes import Recipe
from spa_data.records import ImageRecord, sort_key
from spa_data.sources import open_source
from spa_data.workers import pool_start_method, process_pool

MANIFEST = "manifest.jsonl"
ANNOTATIONS = "annotations.jsonl"
SUMMARY = "summary.json"
HISTOGRAM_PNG = "ratio_hist.png"
OUTPUTS = (MANIFEST, ANNOTATIONS, SUMMARY, HISTOGRAM_PNG)
HIST_BINS = 50  # fixed bins over [0, 1] so that parts can be summed

# Why an image is left out of a subset (summary.json "counts.dropped").
NO_OBJECTS = "no_objects"
RATIO_AT_OR_ABOVE_MAX = "ratio_at_or_above_max"
RATIO_BELOW_MIN = "ratio_below_min"


@dataclass(frozen=True)
class BuildOptions:
    """Everything besides the recipe that decides a subset's content."""

    root: Path
    split: str
    keep_empty: bool = False
    checksums: bool = True
    missing_images: str = "error"   # the reader's policy for listed images not on disk: error | skip

    def to_dict(self) -> dict:
        return {"keep_empty": self.keep_empty, "checksums": self.checksums, "missing_images": self.missing_images}


@dataclass(frozen=True)
class Part:
    """Slice ``index`` of ``count`` contiguous slices of the sorted items."""

    index: int
    count: int

    def __post_init__(self):
        if self.count < 1:
            raise ParamError(f"{{num_parts}} {self.count}: must be at least 1", "num_parts")
        if not 0 <= self.index < self.count:
            raise ParamError(f"{{part}} {self.index}: must be from 0 to {self.count - 1} ({{num_parts}} {self.count})",
                             "part", "num_parts")

    def bounds(self, total: int) -> tuple[int, int]:
        return self.index * total // self.count, (self.index + 1) * total // self.count


# --------------------------------------------------------------------------- per image (workers)

@dataclass(frozen=True)
class _Job:
    """What a worker needs; pickled once per worker (spawn-safe)."""

    to_record: Any
    root: Path
    recipe: Recipe
    options: BuildOptions
    keep_all: bool = False     # --from-manifest: keep every given id, report missing files


@dataclass(frozen=True)
class ImageResult:
    image_id: Any
    file: str
    ratio: float
    method: str
    dropped: Optional[str]                       # reason, or None when kept
    skipped: tuple[tuple[str, int], ...]
    manifest_line: Optional[str] = None
    annotation_line: Optional[str] = None
    problem: Optional[str] = None                # keep_all only: missing image file


_JOB: Optional[_Job] = None
_ITEMS: Sequence[Any] = ()     # fork only: the items, inherited by the workers instead of pickled


def _init_worker(job: _Job) -> None:
    global _JOB
    _JOB = job


def _process(item: Any) -> ImageResult:
    return process_item(_JOB, item)


def _process_index(index: int) -> ImageResult:
    return process_item(_JOB, _ITEMS[index])


def process_item(job: _Job, item: Any) -> ImageResult:
    """Record, ratio, keep/drop decision and the output lines of one image."""
    record: ImageRecord = job.to_record(item)
    try:
        record.file.encode("utf-8")
    except UnicodeEncodeError:
        raise SpaError(f"{os.fsencode(job.root / record.file)!r}: image {record.image_id!r}: file name is not "
                       "valid UTF-8 (the manifest is UTF-8 JSON); rename the file") from None
    recipe = job.recipe
    raw_ratio, method = object_pixel_ratio(
        record, ratio_from=recipe.ratio_from, crowd=recipe.crowd,
        canvas=recipe.canvas(record.width, record.height))
    ratio = round(float(raw_ratio), 6)
    common = dict(image_id=record.image_id, file=record.file, ratio=ratio, method=method, skipped=record.skipped)
    dropped = None if job.keep_all else _drop_reason(record, ratio, recipe, job.options.keep_empty)
    if dropped is not None:
        return ImageResult(dropped=dropped, **common)
    path = job.root / record.file
    try:
        digest = _image_sha256(path) if job.options.checksums else _stat(path)
    except SpaError as e:
        if not job.keep_all:
            raise
        return ImageResult(dropped=None, problem=str(e), **common)
    return ImageResult(dropped=None, manifest_line=_manifest_line(record, ratio, digest),
                       annotation_line=_annotation_line(record), **common)


def _drop_reason(record: ImageRecord, ratio: float, recipe: Recipe, keep_empty: bool) -> Optional[str]:
    if not record.objects and not keep_empty:
        return NO_OBJECTS
    if recipe.max_ratio is not None and ratio >= recipe.max_ratio:
        return RATIO_AT_OR_ABOVE_MAX
    if ratio < recipe.min_ratio:
        return RATIO_BELOW_MIN
    return None


def _image_sha256(path: Path) -> str:
    try:
        return sha256_file(path)
    except FileNotFoundError:
        raise SpaError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise SpaError(f"{path}: image path is a directory") from None


def _stat(path: Path) -> None:
    try:
        os.stat(path)
    except FileNotFoundError:
        raise SpaError(f"{path}: image file not found") from None


def _dumps(obj: Any) -> str:
    """Compact JSON, exactly the bytes of ``json.dumps(separators=(",", ":"), ensure_ascii=False)``.

    orjson writes the same text except for floats below 1e-4 (``0.00001`` / ``5e-6``
    where the stdlib writes ``1e-05`` / ``5e-06``), so any line holding ``e-`` or
    ``0.0000`` (or that orjson refuses, e.g. an int beyond 64 bits) goes through the
    stdlib. The floats here (boxes, ratios) are always finite.
    """
    if orjson is not None:
        try:
            text = orjson.dumps(obj).decode()
        except TypeError:
            pass
        else:
            if "e-" not in text and "0.0000" not in text:
                return text
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _manifest_line(record: ImageRecord, ratio: float, digest: Optional[str]) -> str:
    return _dumps({"image_id": record.image_id, "file": record.file, "width": record.width,
                   "height": record.height, "ratio": ratio, "num_objects": len(record.objects),
                   "sha256": digest}) + "\n"


def _annotation_line(record: ImageRecord) -> str:
    objects = [{"category": o.category, "box": [float(v) for v in o.box], "iscrowd": int(bool(o.iscrowd)),
                "mask": o.mask, "difficult": bool(o.difficult)} for o in record.objects]
    return _dumps({"image_id": record.image_id, "label": record.label, "objects": objects}) + "\n"


# --------------------------------------------------------------------------- statistics

def _empty_hist() -> list[int]:
    return [0] * HIST_BINS


def hist_bin(ratio: float) -> int:
    """Bin of a ratio in ``HIST_BINS`` equal bins over [0, 1] (1.0 falls in the last)."""
    return min(int(ratio * HIST_BINS), HIST_BINS - 1)


@dataclass
class Stats:
    """Counts over a run of images; parts add up to the whole."""

    seen: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    skipped_objects: Counter = field(default_factory=Counter)
    methods: Counter = field(default_factory=Counter)
    hist_all: list = field(default_factory=_empty_hist)
    hist_kept: list = field(default_factory=_empty_hist)

    def add(self, result: ImageResult) -> None:
        self.seen += 1
        self.methods[result.method] += 1
        self.skipped_objects.update(dict(result.skipped))
        b = hist_bin(result.ratio)
        self.hist_all[b] += 1
        if result.dropped is None:
            self.kept += 1
            self.hist_kept[b] += 1
        else:
            self.dropped[result.dropped] += 1

    def __iadd__(self, other: "Stats") -> "Stats":
        self.seen += other.seen
        self.kept += other.kept
        self.dropped += other.dropped
        self.skipped_objects += other.skipped_objects
        self.methods += other.methods
        self.hist_all = [a + b for a, b in zip(self.hist_all, other.hist_all)]
        self.hist_kept = [a + b for a, b in zip(self.hist_kept, other.hist_kept)]
        return self

    def to_dict(self) -> dict:
        return {"seen": self.seen, "kept": self.kept, "dropped": dict(self.dropped),
                "skipped_objects": dict(self.skipped_objects), "ratio_methods": dict(self.methods),
                "hist_all": list(self.hist_all), "hist_kept": list(self.hist_kept)}

    @classmethod
    def from_dict(cls, d: dict) -> "Stats":
        return cls(seen=d["seen"], kept=d["kept"], dropped=Counter(d["dropped"]),
                   skipped_objects=Counter(d["skipped_objects"]), methods=Counter(d["ratio_methods"]),
                   hist_all=list(d["hist_all"]), hist_kept=list(d["hist_kept"]))


def _summary(meta: dict, stats: Stats, source_skipped: dict, files: dict) -> dict:
    """summary.json of a whole subset: ``seen == kept + sum(dropped)``.

    Images the reader left out while indexing (``source_skipped``) count as seen and
    dropped under the reader's reason.
    """
    dropped = Counter(stats.dropped)
    dropped.update(source_skipped)
    edges = [round(i / HIST_BINS, 6) for i in range(HIST_BINS + 1)]
    return {
        **meta,
        "counts": {"seen": stats.seen + sum(source_skipped.values()), "kept": stats.kept,
                   "dropped": dict(sorted(dropped.items()))},
        "skipped_objects": dict(sorted(stats.skipped_objects.items())),
        "ratio_methods": dict(sorted(stats.methods.items())),
        "histogram": {"edges": edges, "counts": list(stats.hist_all), "kept": list(stats.hist_kept)},
        "files": files,
    }


# --------------------------------------------------------------------------- build

def build_subset(recipe: Recipe, options: BuildOptions, out: Path, *, workers: int = 1,
                 part: Optional[Part] = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Build the subset ``recipe`` of ``options.root`` / ``options.split`` into ``out``.

    Returns the summary written to ``out/summary.json``. On any error nothing is
    left at ``out`` (the build goes to a sibling temporary directory first).
    """
    if options.split not in recipe.splits:
        raise SpaError(f"recipe {recipe.name}: split {options.split!r} is not one of {', '.join(recipe.splits)}")
    check_apart(out, options.root, "dataset root")
    with staged_dir(out, overwrite=overwrite, owned=subset_owned) as tmp, _unfreeze_after():
        source = _open(recipe, options, missing_images=options.missing_images)
        items = _index(source)
        total = len(items)
        if part is not None:
            start, stop = part.bounds(total)
            items = items[start:stop]
        job = _Job(to_record=source.to_record, root=Path(source.root), recipe=recipe, options=options)
        stats = Stats()
        with open(tmp / MANIFEST, "w", encoding="utf-8") as man, open(tmp / ANNOTATIONS, "w", encoding="utf-8") as ann:
            for result in _map(job, items, workers, progress, desc=f"build {recipe.name}/{options.split}"):
                stats.add(result)
                if result.manifest_line is not None:
                    man.write(result.manifest_line)
                    ann.write(result.annotation_line)
        meta = _meta(recipe, options, source)
        if part is None:
            summary = _summary(meta, stats, dict(source.skipped), _file_digests(tmp))
            _refuse_empty(out, summary)
            _write_outputs(tmp, summary)
        else:
            summary = {**meta, "part": {"index": part.index, "count": part.count, "start": start, "stop": stop,
                                        "total": total, "stats": stats.to_dict(),
                                        "source_skipped": dict(sorted(source.skipped.items()))}}
            _write_json(tmp / SUMMARY, summary)
    return summary


def _open(recipe: Recipe, options: BuildOptions, **reader_options: Any):
    return open_source(recipe.source, options.root, options.split, **reader_options)


def _index(source: Any) -> list:
    """``source.items()`` with the cyclic GC paused, then frozen.

    Indexing COCO train allocates millions of long-lived, acyclic objects; the GC
    would rescan them again and again while they are built and during the pass.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        items = source.items()
    finally:
        if enabled:
            gc.enable()
    gc.freeze()   # undone by _unfreeze_after at the end of the build
    return items


@contextmanager
def _unfreeze_after() -> Iterator[None]:
    try:
        yield
    finally:
        gc.unfreeze()


def _meta(recipe: Recipe, options: BuildOptions, source: Any) -> dict:
    ids = getattr(source, "category_ids", None)
    return {"tool": "spa-data", "version": __version__, "subset": recipe.name, "source": recipe.source,
            "task": recipe.task, "split": options.split, "root": str(Path(source.root).resolve()),
            "recipe": recipe.to_dict(), "options": options.to_dict(), "classes": list(source.classes),
            "category_ids": None if ids is None else list(ids)}


def _map(job: _Job, items: Sequence[Any], workers: int, progress: bool, desc: str) -> Iterator[ImageResult]:
    """Process items in order; with ``workers > 1`` in a process pool (chunked, order-preserving imap).

    On Linux the pool forks after the items are indexed (and frozen out of the GC's
    reach), so workers read them from shared memory and only an index travels;
    elsewhere (spawn) the items themselves are pickled to the workers.
    """
    if workers <= 1 or len(items) < 2:
        with _progress(len(items), desc, progress) as bar:
            for item in items:
                yield process_item(job, item)
                bar.update()
        return
    global _ITEMS
    method = pool_start_method()
    chunksize = max(1, min(512, len(items) // (workers * 8)))
    _ITEMS = items if method == "fork" else ()
    try:
        # The pool is created before the progress bar: no other thread exists when it forks.
        with process_pool(workers, _init_worker, (job,), method) as pool:
            tasks = pool.imap(_process_index, range(len(items)), chunksize) if method == "fork" \
                else pool.imap(_process, items, chunksize)
            with _progress(len(items), desc, progress) as bar:
                for result in tasks:
                    yield result
                    bar.update()
    finally:
        _ITEMS = ()


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="img", disable=None if enabled else True, dynamic_ncols=True)


# --------------------------------------------------------------------------- outputs

def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def _file_digests(directory: Path) -> dict:
    out = {}
    for name in (ANNOTATIONS, MANIFEST):
        h, lines = hashlib.sha256(), 0
        with open(directory / name, "rb") as f:
            for line in f:
                h.update(line)
                lines += 1
        out[name] = {"lines": lines, "sha256": h.hexdigest()}
    return out


def _refuse_empty(out: Path, summary: dict) -> None:
    """A subset of no image is nothing to label or train on: SpaError saying why each image was left
    out (a part may keep none; its merge is checked)."""
    counts = summary["counts"]
    if counts["kept"] == 0:
        dropped = ", ".join(f"{reason} {n}" for reason, n in counts["dropped"].items()) or "none"
        raise SpaError(f"{out}: kept 0 of {counts['seen']} images ({summary['subset']}, {summary['split']}; "
                       f"dropped: {dropped}): an empty subset is not written")


def _write_outputs(directory: Path, summary: dict) -> None:
    _write_json(directory / SUMMARY, summary)
    plot_histogram(summary, directory / HISTOGRAM_PNG)


def plot_histogram(summary: dict, path: Path) -> None:
    """Ratio histogram (all images seen vs kept) with the recipe's bounds; deterministic PNG."""
    from matplotlib.figure import Figure   # no pyplot: no global backend state, Agg for PNG

    hist, recipe = summary["histogram"], summary["recipe"]
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.91)  # fixed: no layout engine pass
    ax = fig.add_subplot()
    # stairs: one artist per series, not one patch per bin (rendering stays fast).
    ax.stairs(hist["counts"], hist["edges"], fill=True, color="#c8c8c8", label="seen")
    ax.stairs(hist["kept"], hist["edges"], fill=True, color="#3b75af", label="kept")
    for bound, name in ((recipe.get("max_ratio"), "max_ratio"), (recipe.get("min_ratio") or None, "min_ratio")):
        if bound is not None:
            ax.axvline(bound, color="#c03030", linestyle="--", linewidth=1.2, label=f"{name} = {bound:g}")
    counts = summary["counts"]
    ax.set_title(f"{summary['subset']} / {summary['split']}: kept {counts['kept']} of {counts['seen']} images")
    ax.set_xlabel("object-pixel ratio")
    ax.set_ylabel("images")
    ax.set_xlim(0.0, 1.0)
    ax.legend(loc="upper right")
    fig.savefig(path, format="png", metadata={"Software": None})


def subset_owned(out: Path) -> Optional[str]:
    """None when ``out`` is an earlier ``spa-data build`` output (its summary.json says so and it
    holds nothing else but its shards), else why it is not."""
    from spa_data.shards import shard_dir_owned

    summary = read_json_or_none(out / SUMMARY)
    tool = summary.get("tool") if isinstance(summary, dict) else None
    if tool != "spa-data":
        return f"not a `spa-data build` output (no {SUMMARY} written by spa-data)"
    foreign = foreign_entries(out, lambda p: p.name in OUTPUTS or (p.name == "shards" and p.is_dir()
                                                                   and shard_dir_owned(p) is None))
    return f"holds {foreign[0]}, which `spa-data build` did not write" if foreign else None


# --------------------------------------------------------------------------- merge

_PART_INVARIANT = ("tool", "version", "subset", "source", "task", "split", "recipe", "options", "classes",
                   "category_ids")


def merge_parts(part_dirs: Sequence[Path], out: Path, *, root: Optional[Path] = None,
                overwrite: bool = False) -> dict:
    """Join the parts of one build into ``out``: byte-identical to a single run.

    The parts must be all ``count`` slices of the same recipe, options, source and
    split (in any order on the command line). ``root`` overrides the dataset root
    recorded in summary.json (parts built on machines with different mount points).
    """
    parts = sorted((_read_part(Path(d)) for d in part_dirs), key=lambda p: p[1]["part"]["index"])
    if not parts:
        raise SpaError("merge: no part directories given")
    first = parts[0][1]
    count, total = first["part"]["count"], first["part"]["total"]
    for d, s in parts:
        for key in _PART_INVARIANT:
            if s.get(key) != first.get(key):
                raise SpaError(f"{d / SUMMARY}: {key} differs from {parts[0][0] / SUMMARY}")
        if (s["part"]["count"], s["part"]["total"]) != (count, total):
            raise SpaError(f"{d / SUMMARY}: part of {s['part']['count']} over {s['part']['total']} images; "
                           f"expected {count} over {total}")
        if s["part"]["source_skipped"] != first["part"]["source_skipped"]:
            raise SpaError(f"{d / SUMMARY}: source_skipped differs from {parts[0][0] / SUMMARY}")
    indices = [s["part"]["index"] for _, s in parts]
    if indices != list(range(count)):
        missing = sorted(set(range(count)) - set(indices))
        dup = sorted(i for i, n in Counter(indices).items() if n > 1)
        raise SpaError(f"merge: parts of {count} incomplete: missing {missing or 'none'}, duplicated {dup or 'none'}")
    roots = {s["root"] for _, s in parts}
    if root is None and len(roots) > 1:
        raise ParamError(f"merge: parts were built from different roots ({', '.join(sorted(roots))}); give {{root}}",
                         "root")
    meta = {k: first[k] for k in _PART_INVARIANT}
    meta["root"] = str(Path(root).resolve()) if root is not None else first["root"]
    for d, _ in parts:
        check_apart(out, d, "part directory")
    stats = Stats()
    with staged_dir(out, overwrite=overwrite, owned=subset_owned) as tmp:
        for name in (MANIFEST, ANNOTATIONS):
            with open(tmp / name, "wb") as dst:
                for d, _ in parts:
                    with open(d / name, "rb") as src:
                        shutil.copyfileobj(src, dst)
        for d, s in parts:
            part_stats = Stats.from_dict(s["part"]["stats"])
            lines = _file_digests(d)
            if lines[MANIFEST]["lines"] != part_stats.kept or lines[ANNOTATIONS]["lines"] != part_stats.kept:
                raise SpaError(f"{d}: {MANIFEST}/{ANNOTATIONS} do not hold the {part_stats.kept} images its summary counts")
            stats += part_stats
        summary = _summary(meta, stats, first["part"]["source_skipped"], _file_digests(tmp))
        _refuse_empty(out, summary)
        _write_outputs(tmp, summary)
    return summary


def _read_part(d: Path) -> tuple[Path, dict]:
    summary = read_json(d / SUMMARY)
    if "part" not in summary:
        raise SpaError(f"{d / SUMMARY}: not a part directory (a whole subset, not one part of a build in parts)")
    return d, summary


# --------------------------------------------------------------------------- rebuild from a manifest

class RebuildError(SpaError):
    """Some images of a published manifest are missing or changed; ``problems`` lists each."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message)
        self.problems = problems


def rebuild_from_manifest(manifest: Path, root: Path, out: Path, *, workers: int = 1,
                          overwrite: bool = False, progress: bool = True) -> dict:
    """Rebuild a published subset at ``root`` from its ``manifest.jsonl`` (+ summary.json beside it).

    Exactly the manifest's images are re-read; every one must exist with the same
    sha256 (when the manifest has one) and give the same manifest line. Otherwise
    :class:`RebuildError` lists every missing or changed image and nothing is written.
    The outputs equal the published ones byte for byte, except ``root`` in summary.json.
    """
    manifest = Path(manifest)
    published = read_json(manifest.parent / SUMMARY)
    if "part" in published:
        raise SpaError(f"{manifest.parent / SUMMARY}: is one part of a build; merge the parts first")
    try:
        recipe = Recipe.from_dict(published["recipe"], where=str(manifest.parent / SUMMARY))
        options = BuildOptions(root=Path(root), split=published["split"], **published["options"])
    except (KeyError, TypeError) as e:
        raise SpaError(f"{manifest.parent / SUMMARY}: not a subset summary (missing {e})") from None
    wanted = _read_manifest(manifest)
    check_apart(out, root, "dataset root")
    with staged_dir(out, overwrite=overwrite, owned=subset_owned) as tmp, _unfreeze_after():
        source = _open(recipe, options, missing_images="keep")
        by_id = {item.image_id: item for item in _index(source)}
        problems = [f"missing: image {i} ({line['file']}): not in the source's annotations"
                    for i, line in wanted.items() if i not in by_id]
        items = [by_id[i] for i in sorted(wanted, key=sort_key) if i in by_id]
        job = _Job(to_record=source.to_record, root=Path(source.root), recipe=recipe, options=options, keep_all=True)
        with open(tmp / MANIFEST, "w", encoding="utf-8") as man, open(tmp / ANNOTATIONS, "w", encoding="utf-8") as ann:
            for result in _map(job, items, workers, progress, desc=f"rebuild {recipe.name}/{options.split}"):
                problem = _compare(result, wanted[result.image_id])
                if problem:
                    problems.append(problem)
                    continue
                man.write(result.manifest_line)
                ann.write(result.annotation_line)
        if problems:
            raise RebuildError(f"{manifest}: {len(problems)} of {len(wanted)} images missing or changed "
                               f"under {root} (listed above)", problems)
        summary = {**published, "root": str(Path(source.root).resolve()), "files": _file_digests(tmp)}
        _write_outputs(tmp, summary)
    return summary


def _read_manifest(path: Path) -> dict:
    wanted = {}
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    entry = json.loads(line)
                    wanted[entry["image_id"]] = entry
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise SpaError(f"{path}: line {n}: not a manifest entry") from None
    except FileNotFoundError:
        raise SpaError(f"{path}: manifest not found") from None
    return wanted



def _compare(result: ImageResult, published: dict) -> Optional[str]:
    where = f"image {result.image_id} ({result.file})"
    if result.problem is not None:
        return f"missing: {where}: {result.problem}"
    line = json.loads(result.manifest_line)
    if published.get("sha256") is None:
        line["sha256"] = None
    elif line["sha256"] != published["sha256"]:
        return f"changed: {where}: sha256 {line['sha256'][:12]}... != published {published['sha256'][:12]}..."
    diffs = [k for k in line if line[k] != published.get(k)]
    if diffs:
        return f"changed: {where}: annotations give different {', '.join(diffs)}"
    return None
