"""``curves.png`` at the end of a run: loss, validation metric, learning rate, select ratios."""
from __future__ import annotations

from pathlib import Path

from spa_common.io import atomic_open


def plot_curves(rows: list[dict], path: Path, *, metric: str) -> bool:
    """Four panels from ``metrics.jsonl`` rows; ``metric`` names the validation column (e.g. 'val/top1').

    Returns False (and draws nothing) where matplotlib is not installed.
    """
    try:
        import matplotlib
    except ModuleNotFoundError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in rows if r.get("kind") == "step"]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    _line(axes[0], steps, "step", ["loss", "task_loss", "select_loss"], "training loss")
    _line(axes[1], epochs, "epoch", [metric], metric)
    _line(axes[2], steps, "step", ["lr"], "learning rate")
    ratio_keys = sorted({k for r in epochs for k in r if k.startswith("train/select_ratio/stage")})
    label_keys = sorted({k for r in epochs for k in r if k.startswith("train/label_ratio/")})
    _line(axes[3], epochs, "epoch", ratio_keys + label_keys, "select ratio (solid) vs label ratio")
    fig.tight_layout()
    try:
        with atomic_open(path) as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)
    return True


def _line(ax, rows: list[dict], x: str, keys: list[str], title: str) -> None:
    for key in keys:
        points = [(r[x], r[key]) for r in rows if r.get(key) is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, "--" if "label_ratio" in key else "-", marker="." if len(xs) < 30 else None, label=key)
    ax.set_title(title)
    ax.set_xlabel(x)
    if any(ax.get_lines()):
        ax.legend(fontsize=7)
