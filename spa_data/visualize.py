"""`spa-data show`: samples with their selection labels overlaid at each stride (cf. SPA paper, Fig. 5)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from spa_common.errors import ParamError, SpaError
from spa_common.io import atomic_open
from spa_data.loader import ShardDataset

_TINT = np.array([0.1, 0.55, 1.0])  # positive cells
_MAX_GRID_LINES = 64  # skip cell borders when they would merge into a texture
_ALPHA = 0.5


def overlay(image: np.ndarray, grid: np.ndarray, stride: int) -> np.ndarray:
    """uint8 (H, W, 3) image with positive cells of a (H/stride, W/stride) 0/1 grid tinted, cell borders drawn."""
    cells = np.repeat(np.repeat(grid, stride, 0), stride, 1)[..., None]
    out = image.astype(np.float32) / 255.0
    out = out * (1 - _ALPHA * cells) + _TINT * (_ALPHA * cells)
    if max(grid.shape) <= _MAX_GRID_LINES:
        out[::stride, :, :] *= 0.6
        out[:, ::stride, :] *= 0.6
    return (out * 255).round().astype(np.uint8)


def show_samples(path: Path, out: Path, *, n: int = 16, select_threshold: float = 0.0) -> Path:
    """Write a PNG: one row per sample (spread over the dataset), one column per stride."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if n < 1:
        raise ParamError(f"{{n}} {n}: must be at least 1", "n")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise SpaError(f"{out}: not a .png file name (the figure is written as PNG)")
    ds = ShardDataset(path, select_threshold=select_threshold, masks=False)
    picks = np.unique(np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int))
    strides = ds.strides
    h, w = ds[int(picks[0])]["image"].shape[-2:]
    fig, axes = plt.subplots(len(picks), len(strides), squeeze=False,
                             figsize=(2.6 * len(strides) * min(w / h, 2.0), 2.6 * len(picks)))
    for row, i in enumerate(picks):
        sample = ds[int(i)]
        image = sample["image"].permute(1, 2, 0).numpy()
        for col, s in enumerate(strides):
            grid = sample["select"][s].numpy()
            ax = axes[row, col]
            ax.imshow(overlay(image, grid, s))
            ax.set_axis_off()
            ax.set_title(f"{sample['image_id']}  1/{s}: {grid.mean():.0%} selected", fontsize=7)
    fig.suptitle(f"{ds.index.get('subset')}: selection labels (coverage > {select_threshold:g})", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))   # room for the suptitle
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_open(out) as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)
    return out
