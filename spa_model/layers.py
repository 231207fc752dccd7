"""Swin Transformer building blocks (NHWC), numerically equal to torchvision's ``swin_t``.

Layout: feature maps are (B, H, W, C) inside the stages, as in torchvision and timm; windows are
(B, num_windows, M*M, C) in Swin's ``window_partition`` order. A :class:`WindowGrid` holds what a
stage's blocks share for one shift (padding, roll, token coordinates, shift regions, index tables).
:meth:`WindowGrid.cached` builds it once per shape in eager mode (a rebuild is dozens of small
kernel launches per stage and step, which bound a step on the host at detection sizes) and once per
forward under ``torch.compile``, where it becomes part of the graph.

Window attention runs through ``F.scaled_dot_product_attention`` with the relative position bias
and the shifted-window mask folded into one additive float mask of shape (1, windows * heads, L, L),
broadcast over the batch: the (windows * heads) axis is a view of the qkv projection, so no
(B * windows, heads, L, L) mask is ever materialised.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from .packed_attention import token_positions

__all__ = ["WindowGrid", "TableCache", "window_partition", "window_reverse", "relative_position_index",
           "WindowAttention", "autocast_input", "Mlp", "SwinBlock", "PatchMerging", "PatchEmbed"]

SHIFT_MASK_VALUE = -100.0  # Swin's (and torchvision's) value for pairs across shift regions


@dataclass(frozen=True)
class WindowGrid:
    """Window geometry of one (H, W) map for one shift, shared by the blocks of a stage.

    Attributes:
        height, width: the map (before padding).
        padded: (Hp, Wp), multiples of the window.
        window: M.
        shift: (sy, sx); a dimension whose padded size is <= M is not shifted (torchvision's rule).
        coords: (N, 2) long, (row, col) of each window-major token in the rolled padded frame.
        region: (N,) long shift-region id of each token (zeros when unshifted).
        token_pixel: (N,) long, row-major index into the unpadded (H, W) map of each window-major
            token (0 for padding tokens): gathers straight from the map replace pad, roll, partition.
        token_is_padding: (N,) bool, window padding tokens; ``token_is_real`` its negation.
    """

    height: int
    width: int
    padded: tuple[int, int]
    window: int
    shift: tuple[int, int]
    coords: Tensor
    region: Tensor
    token_pixel: Tensor
    token_is_padding: Tensor
    token_is_real: Tensor
    # tables derived on first use and shared by the blocks of a stage (see token_rows, shift_mask)
    _derived: dict = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def build(height: int, width: int, *, window: int, shift: int, device: torch.device) -> "WindowGrid":
        padded = (-(-height // window) * window, -(-width // window) * window)
        shifts = tuple(0 if size <= window else shift for size in padded)
        rows = torch.arange(padded[0], device=device)
        cols = torch.arange(padded[1], device=device)
        row_region = _region_along(rows, padded[0], window, shifts[0])
        col_region = _region_along(cols, padded[1], window, shifts[1])
        coords = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)       # (Hp, Wp, 2)
        region = row_region[:, None] * 3 + col_region[None, :]                          # (Hp, Wp)
        coords = window_partition(coords[None], window)[0].reshape(-1, 2)
        region = window_partition(region[None, :, :, None], window)[0].reshape(-1)
        # Position before the roll: to_windows rolls by -shift, so rolled row r holds row r + shift.
        source_row = (coords[:, 0] + shifts[0]) % padded[0]
        source_col = (coords[:, 1] + shifts[1]) % padded[1]
        is_padding = (source_row >= height) | (source_col >= width)
        token_pixel = torch.where(is_padding, 0, source_row * width + source_col)
        return WindowGrid(height, width, padded, window, shifts, coords, region, token_pixel, is_padding, ~is_padding)

    @staticmethod
    def cached(height: int, width: int, *, window: int, shift: int, device: torch.device) -> "WindowGrid":
        """:meth:`build`, memoised per shape and device outside ``torch.compile``."""
        if torch.compiler.is_compiling():
            return WindowGrid.build(height, width, window=window, shift=shift, device=device)
        return _cached_grid(height, width, window, shift, device)

    @property
    def num_windows(self) -> int:
        return (self.padded[0] // self.window) * (self.padded[1] // self.window)

    @property
    def num_padding(self) -> int:
        """Window padding tokens of one image."""
        return self.padded[0] * self.padded[1] - self.height * self.width

    @property
    def positions(self) -> Tensor:
        """(N, 3) int32 (region, row, col) of each window-major token: what packed attention reads."""
        return self._derive("positions", lambda: token_positions(region=self.region, coords=self.coords))

    @property
    def is_shifted(self) -> bool:
        return any(self.shift)

    @property
    def is_padded(self) -> bool:
        return self.padded != (self.height, self.width)

    def window_major(self, keep_pixels: Tensor | None, batch: int) -> Tensor:
        """(B, N) bool selection in window-major token order from ``keep_pixels`` (B, H*W) bool on the
        unpadded map (window padding never selected); None: every token, window padding included."""
        if keep_pixels is None:
            return self.token_is_real.new_ones(()).expand(batch, self.token_pixel.shape[0])
        keep = keep_pixels.index_select(1, self.token_pixel)
        return keep & self.token_is_real if self.is_padded else keep

    def token_rows(self, batch: int, num_slots: int) -> tuple[Tensor, Tensor]:
        """Index tables of a (batch, N) window-major token layout, shared by the blocks on this grid.

        Returns ``rows`` (batch * N + 1,) long, the row of the flattened (batch * H * W) map holding
        each token, -1 for padding tokens and for the last entry, which stands for a plan's padding
        slots (``token_index == B * N``); ``spread`` (num_slots,) long: distinct rows that padding
        slots and tokens read instead, so that the backward's index_add sees no hot spot. Both are
        built once per batch size (``spread`` once per power of two of ``num_slots``, then sliced)
        and never replaced: a captured CUDA graph may hold their addresses.
        """
        pixels = self.height * self.width
        device = self.token_pixel.device

        def rows() -> Tensor:
            table = (torch.arange(batch, device=device)[:, None] * pixels + self.token_pixel)
            table = table.masked_fill(self.token_is_padding, -1).flatten()
            return torch.cat([table, table.new_full((1,), -1)])

        length = 1 << max(num_slots - 1, 0).bit_length()  # num_slots varies with an exact capacity
        spread = self._derive(("spread", batch, length),
                              lambda: torch.arange(length, device=device) % max(batch * pixels, 1))
        return self._derive(("rows", batch), rows), spread[:num_slots]

    def to_windows(self, x: Tensor, pad_value: float = 0.0) -> Tensor:
        """(B, H, W, C) -> (B, windows, M*M, C): pad, roll by -shift, partition."""
        if self.is_padded:
            x = F.pad(x, (0, 0, 0, self.padded[1] - self.width, 0, self.padded[0] - self.height), value=pad_value)
        if self.is_shifted:
            x = torch.roll(x, shifts=(-self.shift[0], -self.shift[1]), dims=(1, 2))
        return window_partition(x, self.window)

    def from_windows(self, windows: Tensor) -> Tensor:
        """Inverse of :meth:`to_windows` (drops the padding)."""
        x = window_reverse(windows, self.window, self.padded)
        if self.is_shifted:
            x = torch.roll(x, shifts=self.shift, dims=(1, 2))
        return x[:, : self.height, : self.width]

    def shift_mask(self) -> Tensor:
        """(windows, L, L) additive mask: -100 between tokens of different shift regions."""
        def build() -> Tensor:
            region = self.region.view(self.num_windows, -1)
            return (region[:, :, None] != region[:, None, :]).float() * SHIFT_MASK_VALUE

        return self._derive("shift_mask", build)

    def _derive(self, key, build: Callable[[], object]):
        """``build()``, once per grid (per step under torch.compile, per shape in eager mode)."""
        if key not in self._derived:
            with _kept_tables():
                self._derived[key] = build()
        return self._derived[key]


class TableCache:
    """Tables built per shape (grids and what they derive), the least recently used dropped beyond
    ``size``. :func:`spa_model.inference.cuda_graphs` holds a snapshot of every cache while its
    graphs live: a graph reads the tables at the addresses it was captured with."""

    instances: list["TableCache"] = []

    def __init__(self, size: int):
        self.size = size
        self.items: OrderedDict = OrderedDict()
        TableCache.instances.append(self)

    def get(self, key, build: Callable[[], object]):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        with _kept_tables():
            value = self.items[key] = build()
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return value

    def clear(self) -> None:
        self.items.clear()

    @classmethod
    def snapshot(cls) -> tuple:
        return tuple(value for cache in cls.instances for value in cache.items.values())


GRIDS = TableCache(32)  # 8 grids per input size: a few sizes' worth, a few MB each at detection sizes


def _cached_grid(height: int, width: int, window: int, shift: int, device: torch.device) -> WindowGrid:
    return GRIDS.get((height, width, window, shift, device),
                     lambda: WindowGrid.build(height, width, window=window, shift=shift, device=device))


def _kept_tables() -> contextlib.AbstractContextManager:
    """Tables kept across calls must be normal tensors even when first built under inference_mode
    (an inference tensor cannot be saved for a later training step's backward)."""
    return contextlib.nullcontext() if torch.compiler.is_compiling() else torch.inference_mode(False)


def _region_along(index: Tensor, size: int, window: int, shift: int) -> Tensor:
    """Swin's three shift regions along one axis: [0, size-M), [size-M, size-shift), [size-shift, size)."""
    if shift == 0:
        return torch.zeros_like(index)
    return (index >= size - window).long() + (index >= size - shift).long()


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, Hp, Wp, C) -> (B, windows, M*M, C), windows in row-major order."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, -1, window * window, channels)


def window_reverse(windows: Tensor, window: int, padded: tuple[int, int]) -> Tensor:
    """(B, windows, M*M, C) -> (B, Hp, Wp, C)."""
    batch, _, _, channels = windows.shape
    height, width = padded
    x = windows.view(batch, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, channels)


def relative_position_index(window: int) -> Tensor:
    """(M*M, M*M) index into the ((2M-1)^2, heads) table, as in Swin and torchvision."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[:, :, 0] * (2 * window - 1) + relative[:, :, 1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with Swin's relative position bias."""

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)

    def relative_position_bias(self) -> Tensor:
        """(heads, L, L) bias of every pair of a window."""
        length = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(length, length, -1).permute(2, 0, 1)

    def forward(self, windows: Tensor, grid: WindowGrid) -> Tensor:
        """(B, windows, L, C) -> (B, windows, L, C)."""
        batch, num_windows, length, channels = windows.shape
        heads = self.num_heads
        qkv = self.qkv(windows).view(batch, num_windows, length, 3, heads, channels // heads)
        # (3, B, windows * heads, L, d): windows and heads share one axis so the mask broadcasts over B.
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, batch, num_windows * heads, length, -1).unbind(0)
        mask = self.relative_position_bias()[None]                                      # (1, h, L, L)
        if grid.is_shifted:
            mask = mask + grid.shift_mask().to(mask.dtype)[:, None]                      # (nW, h, L, L)
        mask = mask.expand(num_windows, -1, -1, -1).reshape(1, num_windows * heads, length, length)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=_aligned(mask.to(q.dtype)))
        out = out.view(batch, num_windows, heads, length, -1).transpose(2, 3).reshape(windows.shape)
        return self.proj(out)


def _aligned(mask: Tensor) -> Tensor:
    """The same mask in storage whose last dim is padded to a multiple of 8 (what fused kernels want)."""
    length = mask.shape[-1]
    padded = -(-length // 8) * 8
    return F.pad(mask, (0, padded - length))[..., :length] if padded != length else mask


def autocast_input(x: Tensor) -> Tensor:
    """Cast to the autocast dtype now rather than in the next linear: the same values, but the
    pad / roll / partition copies in between move half the bytes (LayerNorm autocasts to float32)."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return x.to(torch.get_autocast_dtype(device))
    return x


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted) window attention and MLP, both residual with stochastic depth."""

    def __init__(self, dim: int, num_heads: int, *, window: int, shifted: bool, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0):
        super().__init__()
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: Tensor, grid: WindowGrid, selection=None) -> Tensor:
        """x (B, H, W, C); ``selection`` is unused (the SPA block's hook)."""
        attended = grid.from_windows(self.attn(grid.to_windows(autocast_input(self.norm1(x))), grid))
        x = x + self.drop_path(attended)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated (odd sizes zero-padded), LayerNorm(4C), Linear 4C -> 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchEmbed(nn.Module):
    """4x4 stride-4 convolution and LayerNorm; (B, 3, H, W) -> (B, H/4, W/4, C) (floor, as torchvision)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.norm(self.proj(images).permute(0, 2, 3, 1))
