"""The detection trainer's img/s against a bare model step on the same GPU.

Swin-T and SPT-T Mask R-CNN at 1333x800, batch 2, bf16, on the COCO fixture images listed --copies
times (benchmarks/fixture_sets.py; an epoch is copies steps):
- trainer: `spa-train`'s loop (``spa_train.engine.train``, --epochs epochs, --workers loader workers,
  no validation); its own img/s per epoch, the first epoch (warm-up) left out; and the whole run's
  wall time per image, epoch ends (checkpoints) included;
- bare step: the same model and optimizer on the trainer's first --steps batches, already on the GPU
  (the same mix of image shapes), forward + backward + optimizer step in a loop, synchronised only at
  the end;
- loader: the training loader alone (batches ready on the GPU), for scale.

    PYTHONPATH=. python3 benchmarks/bench_trainer.py --fixtures ../shared/fixtures --out OUT [--work DIR] [--quick]

Writes OUT/trainer.json (machine, date, versions, numbers) and prints the table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch
import torchvision

from benchmarks.fixture_sets import coco_shards
from spa_data.loader import make_loader
from spa_train.config import resolve_config
from spa_train.engine import open_shards, train, training_loss
from spa_train.optim import build_optimizer
from spa_train.runtime import autocast, resolve_device, seed_everything, synchronize, use_amp
from spa_train.tasks import build_task_model

QUICK = ["model_args={embed_dim: 8, depths: [1, 1, 2, 2], num_heads: [1, 1, 2, 2]}", "fpn_channels=16",
         "mask_head_channels=8"]


def bare_step_img_s(config, *, steps: int, warmup: int) -> float:
    """The same model and optimizer stepping over ``steps`` batches already on the GPU (the trainer's
    first batches: the same mix of image shapes), synchronised only at the end."""
    device = resolve_device(config.device)
    seed_everything(config.seed, deterministic=config.deterministic, device=device)
    dataset = open_shards(config.shards, config, train=True)
    model = build_task_model(config, dataset).to(device).train()
    optimizer = build_optimizer(model, config)
    amp = use_amp(config.amp, device)
    loader = make_loader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True, device=device)
    batches = list(islice(iter(loader), steps))
    start = None
    for step in range(warmup + len(batches)):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        with autocast(device, amp):
            _, loss, _, _ = training_loss(model, batches[step % len(batches)], alpha=config.alpha)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return len(batches) * config.batch_size / (time.perf_counter() - start)


def loader_img_s(config, *, batches: int) -> float:
    device = resolve_device(config.device)
    dataset = open_shards(config.shards, config, train=True)
    loader = make_loader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
                         num_workers=config.num_workers, device=device)
    iterator = iter(loader)
    next(iterator)
    synchronize(device)
    start = time.perf_counter()
    count = sum(len(b.image_ids) for b in islice(iterator, batches))
    synchronize(device)
    return count / (time.perf_counter() - start)


def trainer_img_s(config) -> dict:
    start = time.perf_counter()
    train(config)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (Path(config.out) / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    images = epochs[-1]["step"] * config.batch_size
    steady = epochs[1:] or epochs
    return {"img_s": sum(r["img_s"] for r in steady) / len(steady), "img_s_per_epoch": [r["img_s"] for r in epochs],
            "wall_img_s": images / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="results (JSON and table) go here")
    parser.add_argument("--work", type=Path, help="shards and runs (checkpoints) go here; default: a temporary folder")
    parser.add_argument("--models", nargs="+", default=["swin_tiny", "spt_tiny"])
    parser.add_argument("--copies", type=int, default=32, help="each fixture image this many times per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30, help="timed bare steps")
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps (CPU smoke run)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="spa-bench-"))
    copies, epochs, steps = (2, 2, 2) if args.quick else (args.copies, args.epochs, args.steps)
    shards = coco_shards(args.fixtures, work / "data", copies=copies)
    results = []
    for model in args.models:
        overrides = ["batch_size=2", f"epochs={epochs}", "lr=1e-4", f"num_workers={args.workers}", "progress=false",
                     "curves=false", *(QUICK if args.quick else [])]
        config = resolve_config(None, overrides, task="det", model=model, shards=str(shards),
                                out=str(work / "runs" / model))
        row = {"model": model, **trainer_img_s(config),
               "bare_img_s": bare_step_img_s(config, steps=steps, warmup=1 if args.quick else 10),
               "loader_img_s": loader_img_s(config, batches=steps)}
        row["trainer_over_bare"] = row["img_s"] / row["bare_img_s"]
        results.append(row)
        print(f"{model}: trainer {row['img_s']:.1f} img/s (whole run {row['wall_img_s']:.1f}), bare step "
              f"{row['bare_img_s']:.1f}, ratio {row['trainer_over_bare']:.3f}; loader alone {row['loader_img_s']:.0f}",
              flush=True)
    meta = {"benchmark": "detection trainer vs bare step", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"},
            "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__},
            "settings": {"copies": copies, "epochs": epochs, "workers": args.workers, "bare_steps": steps,
                         "batch_size": 2, "size": "1333x800 fit", "quick": args.quick}}
    (args.out / "trainer.json").write_text(json.dumps({**meta, "results": results}, indent=1) + "\n")
    print("| model | trainer img/s | whole run img/s | bare step img/s | trainer / bare | loader alone img/s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['img_s']:.1f} | {r['wall_img_s']:.1f} | {r['bare_img_s']:.1f} | "
              f"{r['trainer_over_bare']:.3f} | {r['loader_img_s']:.0f} |")


if __name__ == "__main__":
    main()
