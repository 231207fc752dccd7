"""Canonical input geometry: where an original image lands on the model's input canvas.

Every image is resized (or not) and padded at its right and bottom to a canvas whose
sides are multiples of the largest selection stride, so the token grid at stride ``s``
is exactly ``(H / s, W / s)`` cells and cell ``(i, j)`` covers canvas pixels
``[i*s, (i+1)*s) x [j*s, (j+1)*s)``. Original pixel ``x`` maps to canvas ``x * rw / w``
(per axis, with ``rw`` the resized width), so the content fills ``[0, rw) x [0, rh)``.

Modes (the ``[geometry]`` table of a recipe):
- ``fit``: resize keeping the aspect ratio so the long side <= size[0] and the short
  side <= size[1] (Mask R-CNN's 1333x800), pad to a multiple of the largest stride.
- ``square``: resize the long side to size[0], pad to a size[0] x size[1] square.
- ``pad``: no resize; the image sits at the upper-left of a size[0] x size[1] canvas (IN-S).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence

from spa_common.errors import ParamError, SpaError

MODES = ("fit", "square", "pad")
MIN_STRIDE, MAX_STRIDE = 4, 64
MAX_SIDE = 16384   # canvas side: 12x the detection recipes'; one canvas of pixels (768 MiB) still fits in memory


@dataclass(frozen=True)
class Layout:
    """Where one image of size (width, height) lands on the canvas."""

    resized: tuple[int, int]   # (w, h) of the content on the canvas
    canvas: tuple[int, int]    # (W, H), multiples of the largest stride

    def scale(self, width: int, height: int) -> tuple[float, float]:
        """Per-axis factors from original to canvas pixels."""
        return self.resized[0] / width, self.resized[1] / height


@dataclass(frozen=True)
class GeometrySpec:
    """A recipe's ``[geometry]`` table (``mode``, ``size``), checked when the recipe is read;
    ``spa-data labels`` adds the strides (``with_strides``)."""

    mode: Literal["fit", "square", "pad"]
    size: tuple[int, int]      # fit: (long, short); square and pad: (W, H)

    def __post_init__(self):
        if self.mode not in MODES:
            raise SpaError(f"geometry.mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not (isinstance(self.size, tuple) and len(self.size) == 2
                and all(isinstance(side, int) and not isinstance(side, bool) and 1 <= side <= MAX_SIDE
                        for side in self.size)):
            shown = list(self.size) if isinstance(self.size, tuple) else repr(self.size)
            raise SpaError(f"geometry.size {shown}: need two integers from 1 to {MAX_SIDE}")

    @classmethod
    def from_table(cls, table: Any) -> "GeometrySpec":
        """From a ``[geometry]`` table as TOML or summary.json holds it; SpaError naming the field."""
        if not isinstance(table, dict):
            raise SpaError(f"geometry: expected a table of mode and size, got {table!r}")
        unknown = sorted(set(table) - {"mode", "size"})
        if unknown:
            raise SpaError(f"geometry: unknown key(s) {', '.join(unknown)} (known: mode, size)")
        for key in ("mode", "size"):
            if key not in table:
                raise SpaError(f"geometry.{key} is missing")
        size = table["size"]
        return cls(table["mode"], tuple(size) if isinstance(size, list) else size)

    def to_table(self) -> dict:
        return {"mode": self.mode, "size": list(self.size)}

    def with_strides(self, strides: Sequence[int], size: Optional[tuple[int, int]] = None) -> "Geometry":
        """This geometry serving ``strides``, ``size`` (where given) in place of its own."""
        return Geometry(self.mode, tuple(size or self.size), tuple(strides))


@dataclass(frozen=True)
class Geometry(GeometrySpec):
    """A canonical input geometry (``mode``, ``size``) and the strides it must serve."""

    strides: tuple[int, ...]

    def __post_init__(self):
        super().__post_init__()
        check_strides(self.strides)
        if self.mode != "fit":
            bad = [s for s in self.strides if self.size[0] % s or self.size[1] % s]
            if bad:
                raise SpaError(f"scale {bad[0]} does not divide the {self.mode} geometry "
                               f"{self.size[0]}x{self.size[1]}")

    @property
    def max_stride(self) -> int:
        return max(self.strides)

    def layout(self, width: int, height: int) -> Layout:
        """Map an original (width, height) to its resized content and padded canvas."""
        if self.mode == "pad":
            if width > self.size[0] or height > self.size[1]:
                raise SpaError(f"image {width}x{height} does not fit the pad canvas {self.size[0]}x{self.size[1]}")
            return Layout((width, height), self.size)
        if self.mode == "fit":
            long_side, short_side = self.size
            scale = min(long_side / max(width, height), short_side / min(width, height))
        else:
            scale = min(self.size[0] / width, self.size[1] / height)
        resized = (max(1, round(width * scale)), max(1, round(height * scale)))
        if self.mode == "square":
            return Layout(resized, self.size)
        s = self.max_stride
        return Layout(resized, (math.ceil(resized[0] / s) * s, math.ceil(resized[1] / s) * s))

    def to_json(self) -> dict:
        return {"mode": self.mode, "size": list(self.size), "strides": list(self.strides)}

    @classmethod
    def from_json(cls, d: dict) -> "Geometry":
        return cls(d["mode"], tuple(d["size"]), tuple(d["strides"]))


def check_strides(strides: Sequence[int]) -> tuple[int, ...]:
    """Strides must be distinct powers of two in [4, 64]; returned sorted (ParamError ``strides``)."""
    shown = ",".join(map(str, strides))
    if not strides:
        raise ParamError("{strides}: give at least one stride", "strides")
    for s in strides:
        if not isinstance(s, int) or s < MIN_STRIDE or s > MAX_STRIDE or s & (s - 1):
            raise ParamError(f"{{strides}} {shown}: {s!r} is not a power of two from {MIN_STRIDE} to {MAX_STRIDE}",
                             "strides")
    if len(set(strides)) != len(strides):
        raise ParamError(f"{{strides}} {shown}: a stride is repeated", "strides")
    return tuple(sorted(strides))


def parse_scales(text: str) -> tuple[int, ...]:
    """``"8,16,32"`` -> (8, 16, 32), with a clear error for anything else (ParamError ``strides``)."""
    values = []
    for p in (p.strip() for p in text.split(",")):
        if not p.isdigit():
            raise ParamError(f"{{strides}} {text}: {p!r} is not a power of two from {MIN_STRIDE} to {MAX_STRIDE}",
                             "strides")
        values.append(int(p))
    return check_strides(values)


def parse_size(text: str) -> tuple[int, int]:
    """``"1333,800"`` -> (1333, 800); ``"448"`` -> (448, 448) (ParamError ``size``)."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    if len(parts) not in (1, 2) or not all(p.isdigit() and 1 <= int(p) <= MAX_SIDE for p in parts):
        raise ParamError(f"{{size}} {text}: expected N or W,H, integers from 1 to {MAX_SIDE}", "size")
    values = [int(p) for p in parts]
    return (values[0], values[-1])
