"""`spa-data`: build sparse subsets, then selection labels and shards.

    spa-data demo-data --out /tmp/demo
    spa-data build coco-s --root /data/coco --split val --out subsets/coco-s-val
    spa-data build --from-manifest published/manifest.jsonl --root /data/coco --out subsets/coco-s-val
    spa-data build coco-s ... --num-parts 4 --part 0 --out part0   (then: spa-data merge part* --out DIR)

The label/shard commands (labels, verify, show, stats) live in ``spa_cli.data_labels``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from .common import OptionsGroup, at_least, debug_option, report_errors
from .data_labels import COMMANDS as LABEL_COMMANDS
from spa_data.ratio import RATIO_FROM
from spa_data.recipes import Recipe, check_ratio_bounds, load_recipe, recipe_names
from spa_data.subsets import BuildOptions, Part, RebuildError, build_subset, merge_parts, rebuild_from_manifest


@click.group(cls=OptionsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@debug_option
def group(debug: bool) -> None:
    """Sparse-subset data tools for SPA / SPT."""


@group.command()
@click.argument("subset", required=False, metavar="[SUBSET]")
@click.option("--root", type=click.Path(path_type=Path), help="Dataset root in its official layout.")
@click.option("--split", help="Split of the source, e.g. train or val.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Subset directory to write.")
@click.option("--recipe", "recipe_file", type=click.Path(path_type=Path), help="A recipe file of your own (TOML).")
@click.option("--max-ratio", type=float, help="Keep images with ratio < F (overrides the recipe).")
@click.option("--min-ratio", type=float, help="Keep images with ratio >= F (overrides the recipe).")
@click.option("--ratio-from", type=click.Choice(RATIO_FROM), help="Measure the ratio on masks, boxes, or auto.")
@click.option("--no-crowd", is_flag=True, help="Do not count crowd regions as object pixels.")
@click.option("--keep-empty", is_flag=True, help="Keep images without objects.")
@click.option("--no-checksums", is_flag=True, help="Skip sha256 of image files (existence is still checked).")
@click.option("--missing-images", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="Listed images not on disk: stop with an error, or leave them out (counted in summary.json).")
@click.option("--workers", default=1, show_default=True, callback=at_least(1), help="Worker processes.")
@click.option("--num-parts", type=int, help="Split the build into K deterministic parts ...")
@click.option("--part", type=int, help="... and build part I (0-based); join them with `spa-data merge`.")
@click.option("--from-manifest", type=click.Path(path_type=Path),
              help="Rebuild a published subset from its manifest.jsonl (summary.json beside it).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@debug_option
def build(subset: Optional[str], root: Optional[Path], split: Optional[str], out: Path, recipe_file: Optional[Path],
          max_ratio: Optional[float], min_ratio: Optional[float], ratio_from: Optional[str], no_crowd: bool,
          keep_empty: bool, no_checksums: bool, missing_images: str, workers: int, num_parts: Optional[int],
          part: Optional[int], from_manifest: Optional[Path], overwrite: bool, debug: bool) -> None:
    """Build SUBSET (coco-s, bdd-s, voc-s, in-s; dense coco, bdd, voc, tiny-in) of --root/--split.

    Writes manifest.jsonl, annotations.jsonl, summary.json and ratio_hist.png to
    --out; the same inputs give the same bytes for any --workers or --num-parts.
    With --from-manifest, rebuilds a published subset and names every missing or
    changed image.
    """
    if root is None:
        raise click.UsageError("--root is required")
    if from_manifest is not None:
        if subset or recipe_file or split or num_parts is not None:
            raise click.UsageError("--from-manifest takes the subset, split and recipe from the manifest's summary.json")
        _rebuild(from_manifest, root, out, workers, overwrite)
        return
    if (subset is None) == (recipe_file is None):
        raise click.UsageError(f"give exactly one of SUBSET ({', '.join(recipe_names())}) or --recipe FILE")
    if split is None:
        raise click.UsageError("--split is required")
    if (num_parts is None) != (part is None):
        raise click.UsageError("--num-parts and --part go together")
    recipe = _recipe(recipe_file if recipe_file is not None else subset, max_ratio, min_ratio, ratio_from, no_crowd)
    options = BuildOptions(root=root, split=split, keep_empty=keep_empty, checksums=not no_checksums,
                           missing_images=missing_images)
    summary = build_subset(recipe, options, out, workers=workers, overwrite=overwrite,
                           part=None if part is None else Part(part, num_parts))
    counts = summary.get("counts") or summary["part"]["stats"]
    click.echo(f"{out}: kept {counts['kept']} of {counts['seen']} images ({recipe.name}, {split})"
               + (": a part may keep none; the merged subset must keep some" if counts["kept"] == 0 else ""))


def _recipe(name_or_file, max_ratio: Optional[float], min_ratio: Optional[float], ratio_from: Optional[str],
            no_crowd: bool) -> Recipe:
    """The recipe with the command line's overrides (bounds checked as given, before the recipe's own check)."""
    recipe = load_recipe(name_or_file)
    check_ratio_bounds(recipe.min_ratio if min_ratio is None else min_ratio,
                       recipe.max_ratio if max_ratio is None else max_ratio, where="--min-ratio/--max-ratio")
    return recipe.with_overrides(max_ratio=max_ratio, min_ratio=min_ratio, ratio_from=ratio_from,
                                 crowd=False if no_crowd else None)


def _rebuild(manifest: Path, root: Path, out: Path, workers: int, overwrite: bool) -> None:
    try:
        summary = rebuild_from_manifest(manifest, root, out, workers=workers, overwrite=overwrite)
    except RebuildError as e:
        for problem in e.problems:
            click.echo(problem, err=True)
        raise
    click.echo(f"{out}: rebuilt {summary['counts']['kept']} images of {summary['subset']} ({summary['split']})")


@group.command()
@click.argument("parts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Subset directory to write.")
@click.option("--root", type=click.Path(path_type=Path), help="Dataset root to record (default: the parts').")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@debug_option
def merge(parts: tuple[Path, ...], out: Path, root: Optional[Path], overwrite: bool, debug: bool) -> None:
    """Join the part directories of one `build --num-parts K` into one subset directory."""
    summary = merge_parts(parts, out, root=root, overwrite=overwrite)
    click.echo(f"{out}: kept {summary['counts']['kept']} of {summary['counts']['seen']} images "
               f"({summary['subset']}, {summary['split']}, {len(parts)} parts)")


@group.command("demo-data")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory to write the demo datasets.")
@debug_option
def demo_data(out: Path, debug: bool) -> None:
    """Write a small dataset in each official layout and print each root."""
    from spa_data.demo import write_demo_data

    for source, root in sorted(write_demo_data(out).items()):
        click.echo(f"{source}\t{root}")


for _command in LABEL_COMMANDS:
    group.add_command(_command)

main = report_errors(group)

if __name__ == "__main__":
    main()
