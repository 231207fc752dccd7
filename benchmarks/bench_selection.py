"""How the selected share evolves in training: the paper's gate start against the gate prior.

SPT-T (threshold 0.01, alpha 0.01) from scratch on the real fixture images of each task: COCO and
BDD100K detection (at half the canonical size, 666x400, to keep the run short), VOC multi-label
(448), IN-S classification (128, 1,000 Tiny ImageNet images), for --steps optimizer steps, three
times: the paper's gates (biases at 0), ``gate_prior`` = the labels' positive share at stride 16
(``spa-data stats``), and threshold 0.5 (the IN-S real check's remedy). Every --every steps: the
share of tokens selected per SPA stage in training (Gumbel noise, the batch trained on) and in eval
(deterministic, same batch), and the task and selection losses.

    PYTHONPATH=. python3 benchmarks/bench_selection.py --fixtures ../shared/fixtures --out OUT [--work DIR] [--quick]

Writes OUT/selection.json (machine, date, versions, every record) and OUT/selection.md (the table).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from benchmarks.fixture_sets import bdd_shards, built_shards, coco_shards
from spa_common.io import atomic_write
from spa_data.loader import make_loader
from spa_data.shards import shard_stats
from spa_train.config import resolve_config
from spa_train.engine import open_shards, training_loss
from spa_train.optim import build_optimizer
from spa_train.runtime import autocast, resolve_device, seed_everything, use_amp
from spa_train.tasks import build_task_model

QUICK_MODEL = {"embed_dim": 8, "depths": [1, 1, 2, 2], "num_heads": [1, 1, 2, 2]}


def datasets(fixtures: Path, out: Path) -> dict[str, tuple[str, Path, list[str]]]:
    """name: (task, shards, recipe overrides)."""
    sets = {}
    for name, recipe, root, split in (("in-s", "in-s", fixtures / "tiny-imagenet-200", "train"),
                                      ("voc", "voc", fixtures / "voc2012/VOCdevkit/VOC2012", "trainval")):
        sets[name] = built_shards(recipe, root, split, out / name, build_args=("--missing-images", "skip"))
    det = ["batch_size=2", "lr=2e-4", "fpn_channels=256"]
    return {"coco": ("det", coco_shards(fixtures, out, size="666,400"), det),
            "bdd": ("det", bdd_shards(fixtures, out, size="666,400"), [*det, "batch_size=1", "masks=false"]),
            "voc": ("multilabel", sets["voc"], ["batch_size=1", "lr=2e-4"]),
            "in-s": ("cls", sets["in-s"], ["batch_size=64", "lr=1e-3", "label_smoothing=0.1"])}


def batches(loader):
    while True:
        yield from loader


def run(task: str, shards: Path, overrides: list[str], *, variant: dict, steps: int, every: int,
        quick: bool) -> list[dict]:
    model_args = {**(QUICK_MODEL if quick else {}), **variant}
    config = resolve_config(None, [*overrides, f"model_args={json.dumps(model_args)}", "alpha=0.01", "progress=false"],
                            task=task, model="spt_tiny", shards=str(shards))
    device = resolve_device(config.device)
    seed_everything(0, deterministic=False, device=device)
    dataset = open_shards(config.shards, config, train=True)
    model = build_task_model(config, dataset).to(device)
    optimizer = build_optimizer(model, config)
    amp = use_amp(config.amp, device)
    loader = make_loader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True, device=device)
    records = []
    for step, batch in zip(range(steps + 1), batches(loader)):
        with autocast(device, amp):
            out, loss, task_loss, select_loss = training_loss(model, batch, alpha=config.alpha)
        if step % every == 0 or step == steps:
            model.eval()
            with torch.no_grad(), autocast(device, amp):
                evaluated = model(batch.images, batch.select, None, batch.image_sizes, batch.original_sizes)
            model.train()
            records.append({"step": step, "train": _stage_shares(out), "eval": _stage_shares(evaluated),
                            "task_loss": task_loss.item(), "select_loss": select_loss.item()})
        if step == steps:
            break
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return records


def _stage_shares(out: dict) -> dict[str, float]:
    """Mean selected share of the stage-3 blocks (stride 16) and of the stage-4 blocks."""
    ratios = [r.float().item() for r in out["backbone_output"].select_ratios]
    n3 = len(out["scores"].get(16, []))
    return {"stage3": sum(ratios[:n3]) / max(n3, 1), "stage4": sum(ratios[n3:]) / max(len(ratios) - n3, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="results (JSON and table) go here")
    parser.add_argument("--work", type=Path, help="shards go here; default: a temporary folder")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--only", nargs="*", help="dataset names (coco bdd voc in-s)")
    parser.add_argument("--quick", action="store_true", help="a tiny model and 4 steps (CPU smoke run)")
    args = parser.parse_args()
    steps, every = (4, 2) if args.quick else (args.steps, args.every)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="spa-bench-"))
    results = []
    meta = {"benchmark": "selected share during training", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"},
            "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__},
            "steps": steps, "quick": args.quick}
    for name, (task, shards, overrides) in datasets(args.fixtures, work / "data").items():
        if args.only and name not in args.only:
            continue
        labels = shard_stats(shards)["positive_ratio_canvas"]
        for variant in ({}, {"gate_prior": round(labels[16], 3)}, {"threshold": 0.5}):
            start = time.perf_counter()
            records = run(task, shards, overrides, variant=variant, steps=steps, every=every, quick=args.quick)
            results.append({"dataset": name, "variant": variant, "label_share": {"s16": labels[16], "s32": labels[32]},
                            "records": records, "seconds": time.perf_counter() - start})
            last = records[-1]
            print(f"{name:5s} {_name(variant):18s} step {last['step']}: train {last['train']['stage3']:.3f}/"
                  f"{last['train']['stage4']:.3f} eval {last['eval']['stage3']:.3f}/{last['eval']['stage4']:.3f} "
                  f"labels {labels[16]:.3f}/{labels[32]:.3f}", flush=True)
            write(args.out, results, meta)  # after every run: a run cut short keeps what it measured
    print(table(results, meta))


def write(out: Path, results: list[dict], meta: dict) -> None:
    atomic_write(out / "selection.json", (json.dumps({**meta, "runs": results}, indent=1) + "\n").encode())
    atomic_write(out / "selection.md", table(results, meta).encode())


def table(results: list[dict], meta: dict) -> str:
    steps = sorted({r["step"] for run in results for r in run["records"]})
    shown = [s for s in steps if s in (0, steps[len(steps) // 4], steps[len(steps) // 2], steps[-1])]
    head = " | ".join(f"step {s} train / eval" for s in shown)
    lines = [f"Selected share in SPA stage 3 (stage 4), {meta['machine']['device']}, {meta['date'][:10]}", "",
             f"| data | gates | labels s16 (s32) | {head} |", "|---" * (3 + len(shown)) + "|"]
    for run in results:
        by_step = {r["step"]: r for r in run["records"]}
        cells = [f"{by_step[s]['train']['stage3']:.2f} ({by_step[s]['train']['stage4']:.2f}) / "
                 f"{by_step[s]['eval']['stage3']:.2f} ({by_step[s]['eval']['stage4']:.2f})" for s in shown]
        lines.append(f"| {run['dataset']} | {_name(run['variant'])} | {run['label_share']['s16']:.2f} "
                     f"({run['label_share']['s32']:.2f}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _name(variant: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in variant.items()) or "paper (threshold 0.01)"


if __name__ == "__main__":
    main()
