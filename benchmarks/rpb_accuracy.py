"""The accuracy cost of the relative-position bias inside containers, as paired seeds.

Trains SPT-T on IN-S with and without the bias (``relative_position``) for each seed, with
``real_check_ins.py``'s recipe (threshold 0.5, 60 epochs), several runs at a time on one GPU (a
128x128 batch of 64 leaves most of it idle), and reports the per-seed top-1 pairs, their mean
difference and its exact sign-flip p-value. Earlier runs' JSON files can be pooled in with --include.

    PYTHONPATH=. python3 benchmarks/rpb_accuracy.py --fixtures .fixtures --seeds 2 3 4 5 6 7 --out OUT \
        [--include benchmarks/results/real_check/rpb_*_seed*_h200.json] [--parallel 6]

Writes OUT/rpb_accuracy.json and OUT/rpb_accuracy.md (each run's own files stay under --work).
"""
from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from real_check_ins import machine

SETTING = "model_args={{threshold: 0.5, relative_position: {rpb}}}"


def run(args: argparse.Namespace, seed: int, rpb: bool) -> Path | None:
    """One real_check_ins.py run of SPT-T; its JSON report, or None (and the log's tail) if it failed."""
    out = args.work / f"seed{seed}_{'on' if rpb else 'off'}"
    command = [sys.executable, str(Path(__file__).with_name("real_check_ins.py")), "--fixtures", str(args.fixtures),
               "--models", "spt_tiny", "--epochs", "60", "--budget-s", "1000", "--num-workers", "2",
               "--set", SETTING.format(rpb=str(rpb).lower()), "--set", f"seed={seed}", "--out", str(out),
               *(["--quick"] if args.quick else [])]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.txt", "w") as log:
        failed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    if failed:  # the other runs still count
        tail = (out / "log.txt").read_text().strip().splitlines()[-1:]
        print(f"error: seed {seed} relative_position={rpb} exited {failed}: {' '.join(tail)}", file=sys.stderr)
        return None
    return out / "real_check_ins.json"


def results_by_seed(reports: list[Path]) -> dict[tuple[int, bool], dict]:
    """{(seed, with bias): SPT-T's result row} from real_check_ins.py reports (seed 0 when none was set)."""
    table = {}
    for path in reports:
        report = json.loads(path.read_text())
        overrides = " ".join(report["overrides"])
        seed = int(m.group(1)) if (m := re.search(r"seed=(\d+)", overrides)) else 0
        table[seed, "relative_position: true" in overrides] = report["results"][0]
    return table


def sign_flip_p(differences: list[float]) -> float:
    """Two-sided exact p-value of a zero mean difference: all 2^n sign flips of the pairs."""
    observed = abs(sum(differences))
    flips = [abs(sum(s * d for s, d in zip(signs, differences)))
             for signs in itertools.product((1, -1), repeat=len(differences))]
    return sum(f >= observed - 1e-9 for f in flips) / len(flips)


def summarise(table: dict[tuple[int, bool], dict]) -> dict:
    seeds = sorted(seed for seed, rpb in table if rpb and (seed, False) in table)
    with_bias, without = [table[s, True]["top1"] for s in seeds], [table[s, False]["top1"] for s in seeds]
    differences = [a - b for a, b in zip(with_bias, without)]
    return {"seeds": seeds, "with_bias": with_bias, "without_bias": without, "difference": differences,
            "mean_difference": statistics.fmean(differences) if differences else None,
            "sd_difference": statistics.stdev(differences) if len(differences) > 1 else None,
            "sign_flip_p": sign_flip_p(differences) if differences else None,
            "runs": {f"seed{s}_{'on' if rpb else 'off'}": row for (s, rpb), row in sorted(table.items())}}


def markdown(summary: dict) -> str:
    lines = ["| seed | with the bias (default) | without (`relative_position=False`) | difference |",
             "|---|---|---|---|"]
    lines += [f"| {s} | {a:.1f} | {b:.1f} | {d:+.1f} |" for s, a, b, d in
              zip(summary["seeds"], summary["with_bias"], summary["without_bias"], summary["difference"])]
    if summary["seeds"]:
        lines.append(f"| mean | {statistics.fmean(summary['with_bias']):.1f} | "
                     f"{statistics.fmean(summary['without_bias']):.1f} | {summary['mean_difference']:+.1f} "
                     f"(SD {summary['sd_difference'] or 0:.1f}, sign-flip p = {summary['sign_flip_p']:.2f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, required=True, help="Tiny ImageNet root or a folder holding one.")
    parser.add_argument("--seeds", type=int, nargs="*", default=[])
    parser.add_argument("--include", type=Path, nargs="*", default=[], help="earlier real_check_ins.py reports")
    parser.add_argument("--parallel", type=int, default=6, help="runs at a time")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rpb_accuracy"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny models, two steps: a CPU smoke run")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    reports = list(args.include)
    with ThreadPoolExecutor(args.parallel) as pool:
        runs = [pool.submit(run, args, seed, rpb) for seed in args.seeds for rpb in (True, False)]
        for done in as_completed(runs):  # the summary is rewritten as runs finish: a cut-off call keeps it
            reports += [done.result()] if done.result() else []
            save(summarise(results_by_seed(reports)), args.out)
    summary = summarise(results_by_seed(reports))
    save(summary, args.out)
    print(markdown(summary))


def save(summary: dict, out: Path) -> None:
    """OUT/rpb_accuracy.{json,md}, each replaced whole (no half-written file)."""
    for name, text in (("rpb_accuracy.json", json.dumps({"machine": machine(), **summary}, indent=2) + "\n"),
                       ("rpb_accuracy.md", markdown(summary))):
        partial = out / f".{name}.partial"
        partial.write_text(text)
        partial.replace(out / name)

if __name__ == "__main__":
    main()
