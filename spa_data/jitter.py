"""Multi-scale training: the resize jitter of Swin's detection recipe, drawn reproducibly.

Swin's Mask R-CNN 3x recipe (mmdetection's multi-scale training) resizes each training image,
keeping its aspect ratio, to a short side drawn from a list (480, 512, ..., 800) with the long
side capped (1333). Here one draw is one short side; the image is laid out by the shards' ``fit``
geometry with that short side (``Geometry.layout`` from the original size), so the resized image,
its boxes, masks and recomputed selection labels all follow one layout (see ``spa_data.loader``).

Draws are made in the main process by the training batch sampler, from a generator seeded by
(seed, epoch, rank) only, never by a worker's RNG: a resumed run draws what the uninterrupted
run drew, whatever the number of workers.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import torch

from spa_common.errors import SpaError
from spa_data.geometry import Geometry, Layout


def check_short_sides(geometry: Geometry, short_sides: Sequence[int], *, where: str) -> None:
    """Resize jitter needs a ``fit`` geometry (detection shards) and positive short sides."""
    if not short_sides:
        return
    if geometry.mode != "fit":
        raise SpaError(f"{where}: resize jitter needs shards with a fit geometry (detection); "
                       f"these have {geometry.mode} {geometry.size[0]}x{geometry.size[1]}")
    bad = [s for s in short_sides if not isinstance(s, int) or isinstance(s, bool) or s < 1]
    if bad:
        raise SpaError(f"{where}: resize jitter short side {bad[0]!r} is not a positive integer")


def jittered_layout(geometry: Geometry, short_side: int, *, width: int, height: int) -> Layout:
    """Where a (width, height) image lands at ``geometry`` with its short-side limit set to ``short_side``."""
    return _jittered_geometry(geometry, short_side).layout(width, height)


@functools.lru_cache(maxsize=256, typed=True)   # typed: 1 and True are different short sides (True is refused)
def _jittered_geometry(geometry: Geometry, short_side: int) -> Geometry:
    """``geometry`` with its short-side limit set to ``short_side`` (built and validated once per pair)."""
    return dataclasses.replace(geometry, size=(geometry.size[0], short_side))


def draw_short_sides(short_sides: Sequence[int], count: int, *, seed: int, epoch: int, rank: int) -> list[int]:
    """``count`` short sides, uniform over ``short_sides``, a function of (seed, epoch, rank) only."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919 + rank) % 2**63)
    picks = torch.randint(len(short_sides), (count,), generator=generator)
    return [short_sides[k] for k in picks.tolist()]
