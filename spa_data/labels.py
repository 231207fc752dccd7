"""Selection labels: per-cell object coverage on the token grid at each stride.

A cell's coverage is the exact fraction of its area (in canvas pixels) covered by the
union of the image's object masks (boxes where a mask is missing), with each original
pixel mapped to the canvas rectangle it becomes after resizing (see ``geometry``).

How: the union is a piecewise-constant region on a rectilinear partition (the pixel grid
for masks; the box edges for boxes). Its summed-area table ``S`` is bilinear between
partition edges, so ``S`` at the cell corners is an exact separable linear interpolation,
and the area in a cell is the four-corner difference. All strides share the corners of
the finest one. No loops over cells; no rasterisation at canvas resolution. Masks are
not decoded either: ``S`` comes exactly from the runs of the merged RLE, at only the pixel
edges the interpolation reads (about a fifth of them at COCO's 1.67x upscale).

Stored as uint8 ``q = ceil(255 * coverage - 1e-6)`` (clipped to 0..255): any covered
area gives ``q >= 1`` (the 1e-6 only absorbs float round-off), a fully covered cell 255.
A cell is positive at threshold ``t`` iff ``q > floor(255 * t)``; at t = 0: any object pixel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from spa_data.geometry import Layout
from spa_data.rle import rle_counts

_ROUNDOFF = 1e-6


@dataclass(frozen=True)
class MaskRuns:
    """A union of masks as its runs of object pixels, ``[starts, ends)`` in pycocotools'
    column-major flat order (pixel (x, y) is ``x * height + y``) of a height x width image."""

    starts: np.ndarray
    ends: np.ndarray
    height: int
    width: int


Region = Union[MaskRuns, tuple[np.ndarray, np.ndarray, np.ndarray]]   # or (x_edges, y_edges, table)


def region_from_objects(objects: Sequence[dict], width: int, height: int, *, use_masks: bool = True,
                        crowd: bool = True) -> Optional[Region]:
    """The union of objects in original pixels; ``None`` when there is none.

    ``objects`` are annotation dicts (``box``, ``mask``, ``iscrowd``). Masks alone give
    ``MaskRuns``; boxes (with or without masks) give ``(x_edges, y_edges, summed_area_table)``
    on the partition of the box edges (and pixel edges).
    """
    objects = [o for o in objects if crowd or not o.get("iscrowd")]
    rles = [o["mask"] for o in objects if use_masks and o.get("mask") is not None]
    boxes = _clipped_boxes([o["box"] for o in objects if not (use_masks and o.get("mask") is not None)],
                           width, height)
    if not rles and not len(boxes):
        return None
    if not rles:
        return _box_region(boxes)
    if len(boxes):
        return _mixed_region(union_mask(rles), boxes)
    merged = _merge(rles)
    starts, ends = _runs_of_ones(rle_counts(merged["counts"]))
    return MaskRuns(starts, ends, *merged["size"])


def _clipped_boxes(boxes: list, width: int, height: int) -> np.ndarray:
    """(n, 4) boxes clipped to the image, those left without area dropped."""
    if not boxes:
        return np.empty((0, 4))
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]


def _merge(rles: Sequence[dict]) -> dict:
    """The union of compressed RLEs as one compressed RLE (pycocotools)."""
    from pycocotools import mask as mask_utils  # only where masks exist: box-only subsets and the loader go without

    rles = [dict(r, counts=r["counts"].encode()) if isinstance(r["counts"], str) else r for r in rles]
    return rles[0] if len(rles) == 1 else mask_utils.merge(rles, intersect=0)


def union_mask(rles: Sequence[dict]) -> np.ndarray:
    """Decode the union of compressed RLEs to an (h, w) uint8 mask (pycocotools)."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode(_merge(rles))


def _runs_of_ones(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-empty runs of ones ``[starts, ends)`` from RLE counts (runs alternate, zeros first)."""
    edges = counts.cumsum()
    starts, ends = edges[0:-1:2], edges[1::2]
    keep = ends > starts
    return starts[keep], ends[keep]


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
    area = table[1:, 1:]
    np.multiply(occupied, np.diff(ys)[:, None], out=area)
    area *= np.diff(xs)[None, :]
    area.cumsum(0, out=area).cumsum(1, out=area)
    return table


def _lerp_weights(edges: np.ndarray, points: np.ndarray):
    """Interval index and fraction of each point along sorted edges (clamped at both ends)."""
    i = (np.searchsorted(edges, points, side="right") - 1).clip(0, len(edges) - 2)
    f = ((points - edges[i]) / (edges[i + 1] - edges[i])).clip(0.0, 1.0)
    return i, f


def _pixel_weights(points: np.ndarray, n: int):
    """``_lerp_weights`` along the pixel edges 0..n, for points >= 0: the same values, no search."""
    i = np.minimum(points.astype(np.int64), n - 1)
    return i, np.minimum(points - i, 1.0)


def _interpolate(table: np.ndarray, row_edges, row_points, col_edges, col_points) -> np.ndarray:
    """Separable linear interpolation of a C-contiguous table, rows first."""
    i, f = _lerp_weights(row_edges, row_points)
    j, g = _lerp_weights(col_edges, col_points)
    return _lerp(table, i, i + 1, f, j, j + 1, g)


def _lerp(table: np.ndarray, i, i_next, f, j, j_next, g) -> np.ndarray:
    """Rows ``i + f * (i_next - i)`` (gathering whole rows), then columns likewise, in float64."""
    rows = table[i].astype(np.float64)
    rows += f[:, None] * (table[i_next] - rows)
    out = rows[:, j]
    out += g[None, :] * (rows[:, j_next] - out)
    return out


def _mask_corners(runs: MaskRuns, width: int, height: int, qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    """Object-pixel area left of ``qx`` and above ``qy`` ((len(qx), len(qy))): the pixel integral
    image, interpolated, evaluated only at the pixel edges the interpolation reads."""
    i, f = _pixel_weights(qx, width)
    j, g = _pixel_weights(qy, height)
    cols, i, i_next = _used_edges(i, width)
    rows, j, j_next = _used_edges(j, height)
    return _lerp(_integral_at(runs, cols, rows), i, i_next, f, j, j_next, g)


def _used_edges(i: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sorted edges ``i`` and ``i + 1`` (of 0..n), and where ``i`` and ``i + 1`` sit among them."""
    used = np.zeros(n + 1, dtype=bool)
    used[i] = True
    used[i + 1] = True
    rank = used.cumsum() - 1
    return np.flatnonzero(used), rank[i], rank[i + 1]


def _integral_at(runs: MaskRuns, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Exact ``S[X, Y]`` = object pixels with x < X and y < Y, for X in ``cols``, Y in ``rows`` (sorted).

    Cut at column bottoms, each run is pieces [r0, r1) of single columns c; a piece adds
    (Y - r0)+ - (Y - r1)+ to S[X, Y] for every X > c. So S[X, Y] = sum of w * (Y - r) over events
    (c, r, w) with c < X and r < Y: w = +1 at a piece's top, -1 at its bottom (never needed at
    r1 = height, as Y <= height). Binned at the query edges, sum(w) and sum(w * r) are 2-D prefix
    sums (cv2.integral) of integers, so exact.
    """
    import cv2  # here, not at the top: the loader imports this module and must not need cv2

    h = runs.height
    col0, row0 = np.divmod(runs.starts, h)
    col1, row1 = np.divmod(runs.ends, h)
    wraps = (runs.ends - 1) // h - col0                  # column bottoms a run passes
    restarts = np.arange(wraps.sum()) + np.repeat(col0 + 1 - (wraps.cumsum() - wraps), wraps)
    ended = row1 > 0
    event_cols = np.concatenate([col0, restarts, col1[ended]])
    event_rows = np.concatenate([row0, np.zeros_like(restarts), row1[ended]])
    weight = np.ones(len(event_cols))
    weight[len(col0) + len(restarts):] = -1.0
    # float32 is 3x faster and exact while every partial sum and product (<= pixel count) < 2**24.
    dtype = np.float32 if runs.width * h < 2**24 else np.float64
    shape = (len(cols) + 1, len(rows) + 1)
    bins = np.searchsorted(cols, event_cols, "right") * shape[1] + np.searchsorted(rows, event_rows, "right")

    def prefix_sums(values):
        hist = np.bincount(bins, values, minlength=shape[0] * shape[1]).astype(dtype).reshape(shape)
        return cv2.integral(hist, sdepth=cv2.CV_32F if dtype is np.float32 else cv2.CV_64F)[1:-1, 1:-1]

    return rows.astype(dtype) * prefix_sums(weight) - prefix_sums(weight * event_rows)


def coverage(region: Optional[Region], layout: Layout, width: int, height: int,
             strides: Sequence[int]) -> dict[int, np.ndarray]:
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
    if isinstance(region, MaskRuns):
        corners = _mask_corners(region, width, height, qx, qy).T
    else:
        xs, ys, table = region
        corners = _interpolate(table, ys, qy, xs, qx)
    out = {}
    for s in strides:
        c = corners[:: s // finest, :: s // finest]
        area = c[1:, 1:] - c[:-1, 1:]
        area -= c[1:, :-1]
        area += c[:-1, :-1]
        area *= kx * ky / (s * s)
        out[s] = area.clip(0.0, 1.0, out=area)
    return out


def quantize(cov: np.ndarray) -> np.ndarray:
    """Coverage -> uint8 with any covered area >= 1 (see module docstring)."""
    q = cov * 255.0
    q -= _ROUNDOFF
    return np.ceil(q, out=q).clip(0, 255, out=q).astype(np.uint8)


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
