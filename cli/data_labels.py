"""spa-data subcommands of the label/shard stage (labels, verify, show, stats).

    spa-data labels subsets/coco-s-val --scales 8,16,32 --workers 8
    spa-data verify subsets/coco-s-val
    spa-data show subsets/coco-s-val --n 16 --out coco-s.png
    spa-data stats subsets/coco-s-val
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from .common import OptionsCommand, at_least, debug_option
from spa_common.errors import SpaError
from spa_data.geometry import parse_scales, parse_size
from spa_common.io import atomic_write


def _threshold(ctx, param, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise SpaError(f"--threshold {value}: must be in [0, 1)")
    return value


@click.command(cls=OptionsCommand)
@click.argument("subset_dir", type=click.Path(path_type=Path))
@click.option("--scales", "strides", default="8,16,32", show_default=True,
              help="Strides of the selection labels: powers of two from 4 to 64.")
@click.option("--size", help="Override the recipe's geometry size: W,H (pad/square) or LONG,SHORT (fit).")
@click.option("--shard-size", default=1000, show_default=True, callback=at_least(1), help="Samples per shard.")
@click.option("--workers", default=1, show_default=True, callback=at_least(1),
              help="Worker processes (one writer per shard).")
@click.option("--out", type=click.Path(path_type=Path), help="Shard directory [default: SUBSET_DIR/shards].")
@click.option("--root", type=click.Path(path_type=Path),
              help="Dataset root, when it is no longer where the subset's summary.json says.")
@click.option("--on-bad-image", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="An image that does not decode: stop with an error, or leave it out (listed in index.json).")
@debug_option
def labels(subset_dir: Path, strides: str, size: Optional[str], shard_size: int, workers: int,
           out: Optional[Path], root: Optional[Path], on_bad_image: str, debug: bool) -> None:
    """Write HDF5 shards (images, targets, selection labels) of a `spa-data build` output."""
    from spa_data.shards import write_shards

    index = write_shards(subset_dir, out, strides=parse_scales(strides), size=parse_size(size) if size else None,
                         shard_size=shard_size, workers=workers, root=root, on_bad_image=on_bad_image)
    skipped = index["skipped_images"]
    for entry in skipped:
        click.echo(f"skipped: {entry['reason']}", err=True)
    click.echo(f"{out or subset_dir / 'shards'}: {index['num_samples']} samples in {len(index['shards'])} shards "
               f"(strides {','.join(map(str, index['strides']))}, {index['geometry']['mode']} "
               f"{'x'.join(map(str, index['geometry']['size']))})"
               + (f"; {len(skipped)} unreadable images left out" if skipped else ""))


@click.command(cls=OptionsCommand)
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--sample", default=16, show_default=True, callback=at_least(0),
              help="Samples whose labels are re-derived from annotations.")
@click.option("--subset", type=click.Path(path_type=Path),
              help="The subset directory, when it is no longer where index.json says.")
@debug_option
def verify(path: Path, sample: int, subset: Optional[Path], debug: bool) -> None:
    """Check shard checksums, schema and counts; re-derive a sample of labels."""
    from spa_data.shards import verify_shards

    report = verify_shards(path, sample=sample, subset=subset)
    click.echo(f"{path}: ok ({report['shards']} shards, {report['samples']} samples, "
               f"{report['rederived']} re-derived)")


def _comma_list(ctx, param, values: tuple[str, ...]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _indices(ctx, param, values: tuple[str, ...]) -> list[int]:
    items = _comma_list(ctx, param, values)
    bad = [item for item in items if not item.isdigit()]
    if bad:
        raise SpaError(f"--index {bad[0]}: not a sample index (0, 1, ...)")
    return [int(item) for item in items]


@click.command(cls=OptionsCommand)
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--n", default=16, show_default=True, help="Number of samples, spread over the shards.")
@click.option("--index", "indices", multiple=True, callback=_indices, metavar="I[,I...]",
              help="Draw these samples (0-based, in shard order) instead.")
@click.option("--id", "image_ids", multiple=True, callback=_comma_list, metavar="ID[,ID...]",
              help="Draw the samples of these image ids instead (with --index: those too).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="PNG file to write.")
@click.option("--threshold", default=0.0, show_default=True, callback=_threshold,
              help="A cell is selected iff its coverage exceeds this.")
@debug_option
def show(path: Path, n: int, indices: list[int], image_ids: list[str], out: Path, threshold: float,
         debug: bool) -> None:
    """Draw samples with their selection labels at each stride, their boxes and classes, and a legend."""
    from spa_data.visualize import show_samples

    click.echo(str(show_samples(path, out, n=n, select_threshold=threshold, indices=indices, image_ids=image_ids)))


@click.command(cls=OptionsCommand)
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--threshold", default=0.0, show_default=True, callback=_threshold,
              help="A cell is positive iff its coverage exceeds this.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the numbers as JSON.")
@debug_option
def stats(path: Path, threshold: float, json_out: Optional[Path], debug: bool) -> None:
    """Positive-cell ratio per stride against the object-pixel ratio."""
    from spa_data.shards import shard_stats

    report = shard_stats(path, select_threshold=threshold)
    click.echo(f"{report['subset']}: {report['num_samples']} images, coverage > {threshold:g}")
    click.echo(f"pixel ratio: {report['pixel_ratio_manifest']:.4f} (manifest), "
               f"{report['pixel_ratio_content']:.4f} (of the resized content, from the finest grid)")
    click.echo(f"{'stride':>6}  {'positive/canvas':>15}  {'positive/content':>16}")
    for s in report["positive_ratio_canvas"]:
        click.echo(f"{s:>6}  {report['positive_ratio_canvas'][s]:>15.4f}  {report['positive_ratio_content'][s]:>16.4f}")
    if json_out is not None:
        atomic_write(json_out, (json.dumps(report, indent=1) + "\n").encode())


COMMANDS: list = [labels, verify, show, stats]
