"""Selection labels: per-cell object coverage on the token grid at each stride.

A cell's coverage is the exact fraction of its area (in canvas pixels) covered by the
union of the image's object masks (boxes where a mask is missing), with each original
pixel mapped to the canvas rectangle it becomes after resizing (see ``geometry``).

How: the union is a piecewise-constant region on a rectilinear partition (the pixel grid
for masks; the box edges for boxes). Its summed-area table ``S`` is bilinear between
partition edges, so ``S`` at the cell corners is an exact separable linear interpolation,
and the area in a cell is the four-corner difference. All strides share the corners of
the finest one. No loops over cells; no rasterisation at canvas resolution.

Stored as uint8 ``q = ceil(255 * coverage - 1e-6)`` (clipped to 0..255): any covered
area gives ``q >= 1`` (the 1e-6 only absorbs float round-off), a fully covered cell 255.
A cell is positive at threshold ``t`` iff ``q > floor(255 * t)``; at t = 0: any object pixel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from spa_data.geometry import Layout

_ROUNDOFF = 1e-6


@dataclass(frozen=True)
class PixelMask:
    """A union that is exactly a decoded (h, w) mask (its summed-area table is the pixel integral)."""

    mask: np.ndarray


Region = Union[PixelMask, tuple[np.ndarray, np.ndarray, np.ndarray]]   # or (x_edges, y_edges, table)


def region_from_objects(objects: Sequence[dict], width: int, height: int, *, use_masks: bool = True,
                        crowd: bool = True) -> Optional[Region]:
    """The union of objects in original pixels; ``None`` when there is none.

    ``objects`` are annotation dicts (``box``, ``mask``, ``iscrowd``). Masks alone give a
    ``PixelMask``; boxes (with or without masks) give ``(x_edges, y_edges, summed_area_table)``
    on the partition of the box edges (and pixel edges).
    """
    objects = [o for o in objects if crowd or not o.get("iscrowd")]
    rles = [o["mask"] for o in objects if use_masks and o.get("mask") is not None]
    boxes = np.array([o["box"] for o in objects if not (use_masks and o.get("mask") is not None)],
                     dtype=np.float64).reshape(-1, 4)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    if not rles and not len(boxes):
        return None
    if not rles:
        return _box_region(boxes)
    mask = union_mask(rles)
    return _mixed_region(mask, boxes) if len(boxes) else PixelMask(mask)


def union_mask(rles: Sequence[dict]) -> np.ndarray:
    """Decode the union of compressed RLEs to an (h, w) uint8 mask (pycocotools)."""
    from pycocotools import mask as mask_utils  # only where masks exist: box-only subsets and the loader go without

    rles = [dict(r, counts=r["counts"].encode()) if isinstance(r["counts"], str) else r for r in rles]
    merged = rles[0] if len(rles) == 1 else mask_utils.merge(rles, intersect=0)
    return mask_utils.decode(merged)


def _box_region(boxes: np.ndarray):
    xs = np.unique(boxes[:, 0::2])
    ys = np.unique(boxes[:, 1::2])
    occupied = np.zeros((len(ys) - 1, len(xs) - 1), dtype=np.float64)
    ix = np.searchsorted(xs, boxes[:, 0::2])
    iy = np.searchsorted(ys, boxes[:, 1::2])
    for (x1, x2), (y1, y2) in zip(ix, iy):   # one slice per object, not per cell
        occupied[y1:y2, x1:x2] = 1.0
    return xs, ys, _table(occupied, xs, ys)


def _mixed_region(mask: np.ndarray, boxes: np.ndarray):
    h, w = mask.shape
    xs = np.unique(np.concatenate([np.arange(w + 1, dtype=np.float64), boxes[:, 0::2].ravel()]))
    ys = np.unique(np.concatenate([np.arange(h + 1, dtype=np.float64), boxes[:, 1::2].ravel()]))
    px = np.floor(xs[:-1]).astype(np.int64)
    py = np.floor(ys[:-1]).astype(np.int64)
    occupied = mask[np.ix_(py, px)].astype(np.float64)
    ix = np.searchsorted(xs, boxes[:, 0::2])
    iy = np.searchsorted(ys, boxes[:, 1::2])
    for (x1, x2), (y1, y2) in zip(ix, iy):
        occupied[y1:y2, x1:x2] = 1.0
    return xs, ys, _table(occupied, xs, ys)


def _table(occupied: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Summed-area table at the partition edges of an occupancy grid with cell sizes diff(xs), diff(ys)."""
    table = np.zeros((len(ys), len(xs)), dtype=np.float64)
    area = occupied * np.diff(ys)[:, None] * np.diff(xs)[None, :]
    table[1:, 1:] = area.cumsum(0).cumsum(1)
    return table


def _lerp_weights(edges: np.ndarray, points: np.ndarray):
    """Interval index and fraction of each point along sorted edges (clamped at both ends)."""
    i = (np.searchsorted(edges, points, side="right") - 1).clip(0, len(edges) - 2)
    f = ((points - edges[i]) / (edges[i + 1] - edges[i])).clip(0.0, 1.0)
    return i, f


def _interpolate(table: np.ndarray, row_edges, row_points, col_edges, col_points) -> np.ndarray:
    """Separable linear interpolation of a C-contiguous table, rows first (gathering whole rows)."""
    i, f = _lerp_weights(row_edges, row_points)
    rows = table[i].astype(np.float64)
    rows += f[:, None] * (table[i + 1] - rows)
    j, g = _lerp_weights(col_edges, col_points)
    out = rows[:, j]
    out += g[None, :] * (rows[:, j + 1] - out)
    return out


def coverage(region: Optional[Region], layout: Layout, width: int, height: int, strides: Sequence[int]) -> dict[int, np.ndarray]:
    """Float64 coverage in [0, 1] of every cell, ``{stride: (H/stride, W/stride)}``."""
    canvas_w, canvas_h = layout.canvas
    finest = min(strides)
    shape = {s: (canvas_h // s, canvas_w // s) for s in strides}
    if region is None:
        return {s: np.zeros(shape[s]) for s in strides}
    kx, ky = layout.scale(width, height)
    # Cell corners of the finest grid, in original pixels.
    qx = np.arange(canvas_w // finest + 1) * (finest / kx)
    qy = np.arange(canvas_h // finest + 1) * (finest / ky)
    if isinstance(region, PixelMask):
        import cv2  # here, not at the top: the loader imports this module and must not need cv2

        # Exact pixel counts at every pixel corner, of the transposed (C-contiguous) view of
        # pycocotools' Fortran-ordered mask; so interpolate along x first, then transpose back.
        table_t = cv2.integral(region.mask.T, sdepth=cv2.CV_32S)
        corners = _interpolate(table_t, np.arange(width + 1.0), qx, np.arange(height + 1.0), qy).T
    else:
        xs, ys, table = region
        corners = _interpolate(table, ys, qy, xs, qx)
    out = {}
    for s in strides:
        c = corners[:: s // finest, :: s // finest]
        area = c[1:, 1:] - c[:-1, 1:] - c[1:, :-1] + c[:-1, :-1]
        out[s] = (area * (kx * ky / (s * s))).clip(0.0, 1.0)
    return out


def quantize(cov: np.ndarray) -> np.ndarray:
    """Coverage -> uint8 with any covered area >= 1 (see module docstring)."""
    return np.ceil(cov * 255.0 - _ROUNDOFF).clip(0, 255).astype(np.uint8)


def threshold_code(select_threshold: float) -> int:
    """The uint8 level a stored cell must exceed to be positive at ``select_threshold``."""
    if not 0.0 <= select_threshold < 1.0:
        raise ValueError(f"select_threshold {select_threshold} must be in [0, 1)")
    return int(np.floor(255.0 * select_threshold))


def selection_labels(objects: Sequence[dict], width: int, height: int, layout: Layout, strides: Sequence[int],
                     *, use_masks: bool = True, crowd: bool = True) -> dict[int, np.ndarray]:
    """Quantised coverage ``{stride: uint8 (H/stride, W/stride)}`` of one image."""
    region = region_from_objects(objects, width, height, use_masks=use_masks, crowd=crowd)
    return {s: quantize(c) for s, c in coverage(region, layout, width, height, strides).items()}
