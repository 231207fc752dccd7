"""The real check on IN-S: Swin-T and SPT-T trained the same way from scratch on real Tiny ImageNet.

Builds IN-S (each 64x64 image at the upper left of a black 128x128 canvas) from a Tiny ImageNet
root with `spa-data build` and `spa-data labels`, trains every model with one recipe, and
reports top-1 / top-5, the select ratio per SPA stage against the labels' positive-cell ratio
at that stage's stride (the paper: about 23% selected where a quarter of the canvas is image),
backbone MACs per image (spa_model's counter; Swin's "FLOPs") and img/s. Both models get the
same number of epochs: at most --epochs, and no more than fit --budget-s per model, as measured
by a one-epoch probe run of each (default: ~2.5 minutes per model plus the probes).

    PYTHONPATH=. python3 benchmarks/real_check_ins.py --fixtures /work/shared/fixtures --out /tmp/real
    PYTHONPATH=. python3 benchmarks/real_check_ins.py --fixtures ... --out ... --quick   (CPU smoke run)

Writes OUT/real_check_ins.json and OUT/real_check_ins.md (and OUT/runs/<model>/ with the usual
run files); prints the table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
import torchvision

from spa_cli.data import main as spa_data
from spa_train.config import resolve_config
from spa_train.engine import train

RECIPE = ["lr=1e-3", "min_lr=1e-5", "weight_decay=0.05", "label_smoothing=0.1", "alpha=0.01",
          "clip_grad_norm=5.0", "eval_interval=5", "progress=false"]
QUICK = ["model_args={embed_dim: 8, depths: [1, 1, 2, 2], num_heads: [1, 1, 2, 2]}", "max_steps=2", "num_workers=0",
         "warmup_steps=1"]


def tiny_imagenet_root(fixtures: Path) -> Path:
    for candidate in (fixtures, fixtures / "tiny-imagenet-200"):
        if (candidate / "wnids.txt").is_file():
            return candidate
    sys.exit(f"error: {fixtures}: no Tiny ImageNet here (expected wnids.txt or tiny-imagenet-200/wnids.txt)")


def build_in_s(root: Path, out: Path) -> dict[str, Path]:
    """IN-S train and val shards (val images missing from a partial copy are skipped, and counted)."""
    shards = {}
    for split in ("train", "val"):
        subset = out / f"in-s-{split}"
        if not (subset / "shards" / "index.json").is_file():
            spa_data(["build", "in-s", "--root", str(root), "--split", split, "--out", str(subset),
                      "--missing-images", "skip", "--overwrite"])
            spa_data(["labels", str(subset)])
        shards[split] = subset / "shards"
    return shards


def pick_epochs(models: list[str], shards: dict[str, Path], args) -> int:
    """The most epochs (<= --epochs) that fit --budget-s per model, the same for every model.

    From a one-epoch probe run of each model (wall time, warm-up, validation and checkpoint
    included, so the estimate errs on the short side).
    """
    if args.quick:
        return args.epochs
    probe = argparse.Namespace(**{**vars(args), "epochs": 1})
    slowest = max(train_model(model, shards, args.out / "probe", probe)["wall_s"] for model in models)
    fit = int(args.budget_s / slowest)
    print(f"probe: slowest epoch {slowest:.1f} s -> {fit} epochs fit {args.budget_s:.0f} s", flush=True)
    return max(1, min(args.epochs, fit))


def train_model(model: str, shards: dict[str, Path], out: Path, args) -> dict:
    overrides = [*RECIPE, f"epochs={args.epochs}", f"batch_size={args.batch_size}", f"num_workers={args.num_workers}",
                 *(QUICK if args.quick else []), *args.set]
    run_dir = out / "runs" / model
    shutil.rmtree(run_dir, ignore_errors=True)  # this script's own output: every check starts from scratch
    config = resolve_config(None, overrides, task="cls", model=model, shards=str(shards["train"]),
                            val_shards=str(shards["val"]), out=str(run_dir), device=args.device)
    start = time.perf_counter()
    row = train(config)
    row["wall_s"] = time.perf_counter() - start
    return row


def summarise(model: str, row: dict) -> dict:
    pick = lambda key: row.get(key)  # noqa: E731
    return {
        "model": model, "epochs": row.get("epoch"), "steps": row.get("step"),
        "top1": pick("val/top1"), "top5": pick("val/top5"), "val_images": pick("val/images"),
        "select_stage3": pick("val/select_ratio/stage3"), "label_s16": pick("val/label_ratio/s16"),
        "select_stage4": pick("val/select_ratio/stage4"), "label_s32": pick("val/label_ratio/s32"),
        "label_s8": pick("val/label_ratio/s8"), "gmacs_per_image": pick("val/gmacs_per_image"),
        "train_select_stage3": pick("train/select_ratio/stage3"),   # with Gumbel noise, last epoch
        "train_select_stage4": pick("train/select_ratio/stage4"),
        "train_img_s": pick("img_s"), "eval_img_s": pick("val/img_s"), "peak_mem_mb": pick("peak_mem_mb"),
        "wall_s": row.get("wall_s"),
    }


def machine() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cpu": platform.processor() or platform.machine(), "gpu": gpu, "host": platform.node()}


def markdown(results: list[dict], info: dict, args) -> str:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines = [f"IN-S real check ({info['date']}; {info['gpu'] or 'CPU'}; torch {info['torch']}; "
             f"{args.epochs} epochs, global batch {args.batch_size}{', QUICK' if args.quick else ''})", "",
             "| model | top-1 | top-5 | select s3 / label s16 | select s4 / label s32 | GMACs/img | train img/s | "
             "eval img/s | peak MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {fmt(r['top1'], '.2f')} | {fmt(r['top5'], '.2f')} | "
                     f"{fmt(r['select_stage3'], '.3f')} / {fmt(r['label_s16'], '.3f')} | "
                     f"{fmt(r['select_stage4'], '.3f')} / {fmt(r['label_s32'], '.3f')} | "
                     f"{fmt(r['gmacs_per_image'], '.3f')} | {fmt(r['train_img_s'], '.0f')} | "
                     f"{fmt(r['eval_img_s'], '.0f')} | {fmt(r['peak_mem_mb'], '.0f')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, required=True, help="Tiny ImageNet root or a folder holding one.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=["swin_tiny", "spt_tiny"])
    parser.add_argument("--epochs", type=int, default=100, help="At most this many epochs ...")
    parser.add_argument("--budget-s", type=float, default=150.0, help="... and what fits this many seconds per model.")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="Tiny models, two steps: a CPU smoke run.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="A config override applied to every model (after the recipe); repeatable.")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    shards = build_in_s(tiny_imagenet_root(args.fixtures), args.out / "subsets")
    info = machine()
    args.epochs = pick_epochs(args.models, shards, args)
    results = [summarise(model, train_model(model, shards, args.out, args)) for model in args.models]
    report = {"machine": info, "recipe": RECIPE, "epochs": args.epochs, "budget_s": args.budget_s,
              "batch_size": args.batch_size, "overrides": args.set,
              "quick": args.quick, "results": results}
    (args.out / "real_check_ins.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(results, info, args)
    (args.out / "real_check_ins.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
