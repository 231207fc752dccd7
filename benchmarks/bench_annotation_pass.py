"""Time the annotation pass of `spa-data build` on a COCO train2017-sized annotation file.

    python benchmarks/bench_annotation_pass.py [--data /tmp/coco-like] [--workers 1 2] [--repeat N] [--profile]

The pass = read the JSON, convert every image (polygons -> RLE), measure the
object-pixel ratio, filter (COCO-S, ratio < 0.20) and write manifest.jsonl /
annotations.jsonl / summary.json / ratio_hist.png, checksums off (``--no-checksums``;
the reader still stats every image file, which ``gen_coco_like.py --placeholders``
creates empty). Each configuration runs in a fresh process; cpu s is user + system
time of it and its workers (less sensitive than wall time to other load); peak memory is the
largest ``ru_maxrss`` of that process and of its workers. The baseline is the plain
pycocotools loop (``COCO()``, ``annToRLE`` per annotation, ``merge``, ``area``) over
the same file. ``index s`` is the serial part before the workers start (JSON parse with
orjson when installed, grouping annotations per image, a stat of every listed file).
``--profile`` adds a cProfile of the single-worker pass (top functions).

Prints a table and writes benchmarks/results/annotation_pass.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Each measurement runs in its own interpreter so peak RSS is not inherited.
_BUILD = """
import json, resource, sys, time
from pathlib import Path
import spa_data.subsets as subsets
from spa_data.recipes import load_recipe
from spa_data.subsets import BuildOptions, build_subset
root, out, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
phases = {}

def _timed(name, fn):   # where the wall time goes: the serial read + index, then the rest
    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            phases[name] = time.perf_counter() - start
    return run

subsets._index = _timed("index_s", subsets._index)
try:
    import orjson
    json_parser = "orjson " + orjson.__version__
except ImportError:
    json_parser = "json (stdlib)"
t = time.perf_counter()
s = build_subset(load_recipe("coco-s"), BuildOptions(root=root, split="train", checksums=False), out,
                 workers=workers, overwrite=True, progress=False)
wall = time.perf_counter() - t
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall_s": wall, **phases, "after_index_s": wall - phases["index_s"], "json": json_parser,
                  "seen": s["counts"]["seen"], "kept": s["counts"]["kept"],
                  "cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
                  "peak_rss_mib": max(me.ru_maxrss, kids.ru_maxrss) / 1024, "main_rss_mib": me.ru_maxrss / 1024,
                  "worker_rss_mib": kids.ru_maxrss / 1024}))
"""

_BASELINE = """
import json, resource, sys, time
from pycocotools.coco import COCO
from pycocotools import mask as mask_utils
t = time.perf_counter()
coco = COCO(sys.argv[1])
kept = 0
for image_id in sorted(coco.getImgIds()):
    img = coco.imgs[image_id]
    anns = coco.imgToAnns[image_id]
    if not anns:
        continue
    rle = mask_utils.merge([coco.annToRLE(a) for a in anns], intersect=False)
    kept += mask_utils.area(rle) / (img["width"] * img["height"]) < 0.20
wall = time.perf_counter() - t
me = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_s": wall, "seen": len(coco.imgs), "kept": int(kept), "cpu_s": me.ru_utime + me.ru_stime,
                  "peak_rss_mib": me.ru_maxrss / 1024}))
"""

_PROFILE = """
import cProfile, pstats, sys
from pathlib import Path
from spa_data.recipes import load_recipe
from spa_data.subsets import BuildOptions, build_subset
root, out = Path(sys.argv[1]), Path(sys.argv[2])
cProfile.run('build_subset(load_recipe("coco-s"), BuildOptions(root=root, split="train", checksums=False), out, '
             'workers=1, overwrite=True, progress=False)', sys.argv[3])
pstats.Stats(sys.argv[3]).sort_stats("tottime").print_stats(15)
"""


def _run(code: str, *args: str) -> dict:
    load_before = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{proc.stderr[-3000:]}")
    # The 1-minute load average around the run: other work on the machine inflates wall times.
    return {**json.loads(proc.stdout.strip().splitlines()[-1]),
            "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def _versions() -> dict:
    from importlib.metadata import version

    return {"python": platform.python_version(), **{p: version(p) for p in ("numpy", "pycocotools", "spa")}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "coco-like")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each --workers setting")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "annotation_pass.json")
    args = parser.parse_args(argv)

    ann = args.data / "annotations" / "instances_train2017.json"
    if not ann.is_file():
        subprocess.run([sys.executable, str(HERE / "gen_coco_like.py"), "--out", str(args.data), "--placeholders"],
                       check=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):   # interleaved, so slow phases of a shared host hit every setting
            for workers in args.workers:
                r = _run(_BUILD, str(args.data), str(Path(tmp) / f"w{workers}"), str(workers))
                rows.append({"what": f"spa-data build coco-s --workers {workers}", "workers": workers, **r})
                print(rows[-1], flush=True)
        if not args.no_baseline:
            r = _run(_BASELINE, str(ann))
            rows.append({"what": "pycocotools loop (COCO, annToRLE, merge, area)", "workers": 1, **r})
            print(rows[-1], flush=True)
        profile = None
        if args.profile:
            proc = subprocess.run([sys.executable, "-c", _PROFILE, str(args.data), str(Path(tmp) / "prof"),
                                   str(Path(tmp) / "prof.out")], capture_output=True, text=True, check=True)
            profile = proc.stdout

    print(f"\n{'what':<52} {'wall s':>8} {'index s':>8} {'cpu s':>8} {'img/s':>8} {'peak MiB':>9} {'kept':>8} {'load':>10}")
    for r in rows:
        r["images_per_s"] = r["seen"] / r["wall_s"]
        load = "/".join(f"{v:.1f}" for v in r["load_avg_1min"])
        index = f"{r['index_s']:8.1f}" if "index_s" in r else f"{'-':>8}"
        print(f"{r['what']:<52} {r['wall_s']:8.1f} {index} {r['cpu_s']:8.1f} {r['images_per_s']:8.0f} "
              f"{r['peak_rss_mib']:9.0f} {r['kept']:8d} {load:>10}")
    if profile:
        print(profile)

    result = {"benchmark": "annotation_pass", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count()},
              "versions": _versions(), "data": {"annotation_file": str(ann), "bytes": ann.stat().st_size},
              "goal": "<= 60 s wall for the whole pass on a 2-core machine", "rows": rows,
              "profile_workers1_top": profile,
              "notes": "Wall times depend on other work sharing the machine (load_avg_1min before/after each run); "
                       "cpu_s (user + system of the process and its workers) is the stabler number. "
                       "worker_rss_mib under fork counts pages shared copy-on-write with the parent."}
    if args.out.is_file():   # keep the last run's rows for comparison (one level deep)
        last = json.loads(args.out.read_text())
        result["previous"] = {"date": last.get("date"), "rows": last.get("rows")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
