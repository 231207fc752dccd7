"""`spa-data show`: samples with their selection labels overlaid at each stride (cf. SPA paper, Fig. 5).

Selected cells keep the image's colours and get a yellow outline; the others are greyed and
darkened, so the labels read on an image of any hue (a blue tint vanished on blue images). Objects
are drawn as boxes named by their class (detection); a classification image's classes head its row.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from spa_common.errors import ParamError, SpaError
from spa_common.io import atomic_open
from spa_data.loader import ShardDataset

_MAX_GRID_LINES = 64  # skip cell borders when they would merge into a texture
_DIM = 0.35           # brightness of the grey an unselected cell becomes
_OUTLINE = "#ffd400"  # selected regions (yellow: apart from the greys and from most image colours)
_BOX = "#ff2d95"      # object boxes and their class names


def overlay(image: np.ndarray, grid: np.ndarray, stride: int) -> np.ndarray:
    """uint8 (H, W, 3) image whose cells outside the positive cells of a (H/stride, W/stride) 0/1 grid
    are greyed and darkened (the positives keep their colours), cell borders drawn."""
    cells = np.repeat(np.repeat(grid, stride, 0), stride, 1)[: image.shape[0], : image.shape[1], None] > 0
    out = image.astype(np.float32) / 255.0
    grey = out @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out = np.where(cells, out, _DIM * grey[..., None])
    if max(grid.shape) <= _MAX_GRID_LINES:
        out[::stride, :, :] *= 0.6
        out[:, ::stride, :] *= 0.6
    return (out * 255).round().astype(np.uint8)


def pick_samples(ds: ShardDataset, *, n: int, indices: Sequence[int] = (), image_ids: Sequence[str] = ()) -> list[int]:
    """The samples to draw: the given ``indices`` and the samples of the given ``image_ids`` (compared
    as text), in that order; neither given: ``n`` spread over the dataset."""
    if not indices and not image_ids:
        return [int(i) for i in np.unique(np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int))]
    for i in indices:
        if not 0 <= i < len(ds):
            raise SpaError(f"{ds.path}: no sample at index {i} (it holds {len(ds)}: 0 to {len(ds) - 1})")
    where = {str(image_id): i for i, image_id in enumerate(ds.image_ids)}
    unknown = [image_id for image_id in image_ids if str(image_id) not in where]
    if unknown:
        raise SpaError(f"{ds.path}: no image with id {', '.join(map(str, unknown))}")
    return list(indices) + [where[str(image_id)] for image_id in image_ids]


def draw_samples(ds: ShardDataset, picks: Sequence[int], *, select_threshold: float):
    """A matplotlib figure: one row per sample, one column per stride, and a legend."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    strides = ds.strides
    h, w = ds[picks[0]]["image"].shape[-2:]
    fig, axes = plt.subplots(len(picks), len(strides), squeeze=False,
                             figsize=(2.6 * len(strides) * min(w / h, 2.0), 2.6 * len(picks) + 0.5))
    for row, i in enumerate(picks):
        sample = ds[i]
        image = sample["image"].permute(1, 2, 0).numpy()
        classes = _class_names(ds, sample)
        for col, s in enumerate(strides):
            grid = sample["select"][s].numpy()
            ax = axes[row, col]
            ax.imshow(overlay(image, grid, s))
            cells = np.repeat(np.repeat(grid, s, 0), s, 1)[: image.shape[0], : image.shape[1]]
            if cells.any() and not cells.all():
                ax.contour(cells, levels=[0.5], colors=_OUTLINE, linewidths=0.8)
            for (x1, y1, x2, y2), name in zip(sample.get("boxes", np.zeros((0, 4))).tolist(), classes["boxes"]):
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=_BOX, linewidth=1.0))
                ax.text(x1, y1, name, color="white", fontsize=5, va="bottom",
                        bbox=dict(facecolor=_BOX, edgecolor="none", pad=0.6))
            ax.set_axis_off()
            title = f"{sample['image_id']}  1/{s}: {grid.mean():.0%} selected"
            ax.set_title(title + (f"\n{classes['image']}" if classes["image"] and col == 0 else ""), fontsize=7)
    handles = [Patch(facecolor="#8fb3d9", edgecolor=_OUTLINE, label="selected cell (label 1): image colours"),
               Patch(facecolor=str(_DIM * 0.6), label="not selected: greyed")]
    if ds.task == "det":
        handles.append(Line2D([], [], color=_BOX, label="object box, class"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.suptitle(f"{ds.index.get('subset')}: selection labels (coverage > {select_threshold:g})", fontsize=9)
    # room for the suptitle above and the legend below
    fig.tight_layout(rect=(0, 0.35 / fig.get_figheight(), 1, 1 - 0.3 / fig.get_figheight()))
    return fig


def _class_names(ds: ShardDataset, sample: dict) -> dict:
    """``boxes``: the class of each box (detection); ``image``: the image's classes (cls, multilabel)."""
    if "categories" in sample:
        return {"boxes": [ds.classes[int(c)] for c in sample["categories"]], "image": ""}
    if "label" in sample:
        return {"boxes": [], "image": ds.classes[int(sample["label"])]}
    return {"boxes": [], "image": ", ".join(ds.classes[int(k)] for k in np.flatnonzero(sample["labels"].numpy()))}


def show_samples(path: Path, out: Path, *, n: int = 16, select_threshold: float = 0.0,
                 indices: Sequence[int] = (), image_ids: Sequence[str] = ()) -> Path:
    """Write a PNG of the picked samples (:func:`pick_samples`) with their labels at every stride."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if n < 1:
        raise ParamError(f"{{n}} {n}: must be at least 1", "n")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise SpaError(f"{out}: not a .png file name (the figure is written as PNG)")
    ds = ShardDataset(path, select_threshold=select_threshold, masks=False)
    fig = draw_samples(ds, pick_samples(ds, n=n, indices=indices, image_ids=image_ids),
                       select_threshold=select_threshold)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_open(out) as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)
    return out
