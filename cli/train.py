"""`spa-train`: train, evaluate and benchmark Swin / SPT on spa shards.

    spa-train --shards in-s-train --val-shards in-s-val --task cls --model spt_tiny --out runs/spt lr=1e-3 epochs=30
    spa-train --config runs/spt/config.yaml --resume runs/spt          (continue exactly)
    torchrun --nproc_per_node 2 -m spa_cli.train --config run.yaml        (DDP; batch_size is the global batch)
    spa-train eval --checkpoint runs/spt/best.pt --shards in-s-val
    spa-train bench --model spt_tiny --size 224 224 --batch 64

Without a command name, `spa-train ...` means `spa-train train ...`.
"""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Optional

import click

from .common import OptionsGroup, at_least, debug_option, report_errors
from spa_data.recipes import TASKS
from spa_model.selection import SELECTORS
from spa_train.config import AMP_MODES, DEVICES


class DefaultToTrain(OptionsGroup):
    """A group whose default command is ``train``: ``spa-train --shards ...`` trains."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["train", *args]
        return super().parse_args(ctx, args)


def _config_keys_help() -> str:
    """The config keys with their defaults and comments, in TrainConfig's sections (click prints a
    paragraph that starts with a \\b line as written)."""
    from spa_train.config import describe_keys

    sections: dict[str, list[str]] = {}
    for key in describe_keys():
        head = f"  {key.name}={key.default}"
        sections.setdefault(key.section, []).append(
            textwrap.fill(key.comment, 110, initial_indent=f"{head:31s} ", subsequent_indent=" " * 32)
            if key.comment else head)
    return "\n\n".join(["Config keys, as KEY=VALUE after the options or in a --config file (defaults shown):"] +
                        [f"\b\n{title}\n" + "\n".join(lines) for title, lines in sections.items()])


CONFIG_KEYS_HELP = _config_keys_help()


@click.group(cls=DefaultToTrain, context_settings={"help_option_names": ["-h", "--help"]}, epilog=CONFIG_KEYS_HELP)
def group() -> None:
    """Train and evaluate Swin and SPT (Select and Pack Transformer) on spa shards."""


@group.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog=CONFIG_KEYS_HELP)
@click.option("--shards", help="Training shards (a `spa-data labels` output, or its subset directory).")
@click.option("--val-shards", help="Validation shards.")
@click.option("--task", type=click.Choice(TASKS), help="Task; must match the shards.")
@click.option("--model", help="spa_model name: swin_tiny, spt_tiny, swin_small, ...")
@click.option("--selector", type=click.Choice(list(SELECTORS)),
              help="SPT token selector: gumbel (the paper's gate), topk, gt (oracle labels), all [config: the model's].")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML or TOML config file.")
@click.option("--out", help="Run directory (config.yaml, metrics, checkpoints, curves.png).")
@click.option("--resume", type=click.Path(path_type=Path),
              help="Continue from a checkpoint or run directory (its last.pt); its config is the base.")
@click.option("--device", type=click.Choice(DEVICES), help="Device [config: auto].")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@debug_option
def train(shards: Optional[str], val_shards: Optional[str], task: Optional[str], model: Optional[str],
          selector: Optional[str], config_file: Optional[Path], out: Optional[str], resume: Optional[Path],
          device: Optional[str], overrides: tuple[str, ...], debug: bool) -> None:
    """Train; KEY=VALUE pairs override the config (see spa_train.config.TrainConfig)."""
    from spa_train.config import resolve_config
    from spa_train.engine import config_from_checkpoint, train as run_training

    base = config_from_checkpoint(resume) if resume else None
    config = resolve_config(config_file, overrides, base=base, shards=shards, val_shards=val_shards, task=task,
                            model=model, selector=selector, out=out, device=device)
    row = run_training(config, resume=resume)
    if row and os.environ.get("RANK", "0") == "0":
        click.echo(f"{config.out}: done at step {row['step']}")


@group.command("eval", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path), help="A spa-train checkpoint (.pt).")
@click.option("--shards", required=True, help="Shards to evaluate on (same task and classes).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--batch-size", default=16, show_default=True, callback=at_least(1),
              help="Images per batch (per process).")
@click.option("--num-workers", default=2, show_default=True, callback=at_least(0), help="DataLoader workers.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the metrics to this JSON file.")
@debug_option
def evaluate(checkpoint: Path, shards: str, device: str, batch_size: int, num_workers: int,
             json_out: Optional[Path], debug: bool) -> None:
    """Evaluate a checkpoint (no training)."""
    from spa_train.engine import evaluate_checkpoint

    metrics = evaluate_checkpoint(checkpoint, shards, device=device, batch_size=batch_size, num_workers=num_workers)
    _print_table(metrics)
    if json_out:
        _write_json(json_out, {"checkpoint": str(checkpoint), "shards": shards, **metrics})


@group.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, help="spa_model name.")
@click.option("--size", nargs=2, type=int, default=(224, 224), show_default=True, metavar="H W", help="Input size.")
@click.option("--batch", default=32, show_default=True, help="Batch size.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--selector", type=click.Choice(list(SELECTORS)),
              help="SPT token selector [default: the model's]; gt selects the labels of the scattered objects "
                   "(gate evaluated).")
@click.option("--share", default=0.25, show_default=True, type=click.FloatRange(0, 1),
              help="Share of the stride-16 cells the scattered objects cover.")
@click.option("--steps", default=10, show_default=True, help="Timed steps (median reported).")
@click.option("--warmup", default=3, show_default=True, help="Untimed steps first.")
@click.option("--amp", type=click.Choice(AMP_MODES), default="auto", show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the results to this JSON file.")
@click.argument("model_args", nargs=-1, metavar="[KEY=VALUE]...")
@debug_option
def bench(model: str, size: tuple[int, int], batch: int, device: str, selector: Optional[str], share: float,
          steps: int, warmup: int, amp: str, json_out: Optional[Path], model_args: tuple[str, ...], debug: bool) -> None:
    """Throughput (img/s, inference and training step) and MACs per image of a model config."""
    from spa_train.bench import bench_model
    from spa_train.config import parse_override

    if batch < 1 or steps < 1 or warmup < 0:
        raise click.BadParameter("--batch and --steps must be >= 1, --warmup >= 0")
    result = bench_model(model, size=size, batch=batch, device=device, steps=steps, warmup=warmup, amp=amp,
                         selector=selector, share=share,
                         model_args=dict(parse_override(item) for item in model_args))
    _print_table(result)
    if json_out:
        _write_json(json_out, result)


def _print_table(values: dict) -> None:
    width = max(len(k) for k in values)
    for key, value in values.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        click.echo(f"{key:{width}s}  {shown}")


def _write_json(path: Path, data: dict) -> None:
    from spa_common.io import atomic_write

    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())


main = report_errors(group)

if __name__ == "__main__":  # torchrun -m spa_cli.train ...
    main()
