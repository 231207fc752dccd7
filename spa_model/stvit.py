"""STViT-R on Swin: stage 3 runs on a few pooled semantic tokens and recovers the full map.

STViT-R (Chang et al., CVPR 2023, "Making Vision Transformers Efficient from A Token
Sparsification View") keeps Swin's stem, stages 1, 2, 4 and patch mergings, and builds stage 3
from *dumbbell units* of six blocks (i = block index in the stage):

====== ============================== ===================== ===========================
i % 6  block                          queries               keys / values
====== ============================== ===================== ===========================
0      Swin block, never shifted      image tokens          its 7x7 window
1      STGM 1 (token generation)      s x s max-pooled      image tokens around the window
                                      tokens per window
2      STGM 2 (refinement)            semantic tokens       image tokens around the window
3      semantic, local                semantic tokens       the s x s tokens of its window
4      semantic, global               semantic tokens       all semantic tokens
5      recovery                       image tokens          semantic tokens around the window
====== ============================== ===================== ===========================

Image tokens idle during blocks 1-4; each unit pools fresh semantic tokens, which never leave the
stage. STViT blocks (not the Swin ones) are pre-norm with layer scale (gamma, init 1e-5) on both
branches and no positional terms. Two forms (``StvitConfig``, ``form=``): ``det``, the authors'
detection code (K x K neighbourhoods 14 / 21 / 27, STGM-1 residual; the default) and ``cls``, their
ImageNet code (10x10 keys plus the pooled tokens, no STGM-1 residual, global STGM-2 and recovery).

Any map size: maps are padded to multiples of the window, pooling reads real pixels only, and
every key that is padding (or outside the map, or a semantic token whose pooling bin holds no
pixel) is masked. K/V are normed and projected once per token, then gathered per window.
The decisions and their reasons: docs/design.md, "STViT-R".
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from .layers import Mlp, SwinBlock, TableCache, WindowGrid, autocast_input, window_partition, window_reverse
from .models import SWIN_B, SWIN_S, SWIN_T, SwinConfig, SwinTransformer, _init_weights, register_model

__all__ = ["StvitConfig", "STVIT_FORMS", "SemanticGrid", "ConvStem", "SemanticStage", "StvitR",
           "grouped_attention"]


@dataclass(frozen=True)
class StvitConfig:
    """STViT-R settings (every field is a ``create_model`` override; ``form=`` picks the preset)."""

    tokens_per_window: int = 3          # s: s x s semantic tokens max-pooled from each window
    stgm1_keys: int = 14                # K1: the K1 x K1 image tokens around each window
    stgm1_pooled_keys: bool = False     # the window's pooled tokens are STGM-1 keys too (cls)
    stgm1_residual: bool = True         # S = P + attention (det) or S = attention (cls)
    stgm2_keys: int | None = 21         # K2 x K2 image tokens; None: every semantic and image token (cls)
    restore_keys: int | None = 27       # Kr x Kr semantic tokens around the window; None: all of them (cls)
    keys_inside_map: bool = False       # neighbourhoods moved inside the map (cls) or centred, outside masked (det)
    layer_scale: float = 1e-5
    stem: str = "conv"                  # conv: the authors' two 3x3 convs | patch: Swin's 4x4 embedding


STVIT_FORMS = {
    "det": StvitConfig(),
    "cls": StvitConfig(stgm1_keys=10, stgm1_pooled_keys=True, stgm1_residual=False, stgm2_keys=None,
                       restore_keys=None, keys_inside_map=True),
}


# ---------------------------------------------------------------------------------------------
# Geometry

@dataclass(frozen=True)
class SemanticGrid:
    """Where the semantic tokens of one stage-3 map sit and which keys each attention reads.

    Attributes:
        windows: the unshifted :class:`WindowGrid` of the (H, W) map (pads to (Hp, Wp)).
        tokens: s; the semantic grid ``shape`` is (s Hp / M, s Wp / M), window-aligned.
        valid: (sh, sw) bool, tokens whose pooling bin holds a pixel of the map; None: all do.
        stgm1_index, stgm2_index, restore_index: (windows, L) long, rows of the flattened key map
            (image: (H, W); semantic: (sh, sw)) each window reads; None: global keys.
        *_mask: bool, the keys each group may read: (windows, L) per window, (1, L) for global
            attention; None: every key is real.
    """

    windows: WindowGrid
    tokens: int
    shape: tuple[int, int]
    valid: Tensor | None
    stgm1_index: Tensor
    stgm1_mask: Tensor | None
    stgm2_index: Tensor | None
    stgm2_mask: Tensor | None
    window_token_mask: Tensor | None    # (windows, s*s): local semantic attention
    token_mask: Tensor | None           # (1, sh*sw): global semantic attention
    restore_index: Tensor | None
    restore_mask: Tensor | None

    @staticmethod
    def build(height: int, width: int, *, window: int, cfg: StvitConfig, device: torch.device) -> "SemanticGrid":
        windows = WindowGrid.cached(height, width, window=window, shift=0, device=device)
        s = cfg.tokens_per_window
        count = (windows.padded[0] // window, windows.padded[1] // window)
        shape = (count[0] * s, count[1] * s)
        # A bin's first row is window * M + floor(t * M / s) (adaptive pooling); it holds pixels iff < H.
        extent = tuple(sum((r // s) * window + (r % s) * window // s < size for r in range(n))
                       for n, size in zip(shape, (height, width)))
        valid = None
        if extent != shape:
            valid = torch.zeros(shape, dtype=torch.bool, device=device)
            valid[: extent[0], : extent[1]] = True
        window_token_mask = None if valid is None else window_partition(valid[None, :, :, None], s).view(-1, s * s)
        token_mask = None if valid is None else valid.view(1, -1)
        image = dict(stride=window, extent=(height, width), row_length=width, inside=cfg.keys_inside_map,
                     device=device)

        stgm1_index, stgm1_mask = _window_keys(count, size=cfg.stgm1_keys, **image)
        if cfg.stgm1_pooled_keys:
            stgm1_mask = _cat_masks([window_token_mask, stgm1_mask], [s * s, stgm1_index.shape[1]])
        if cfg.stgm2_keys is None:
            stgm2_index, stgm2_mask = None, _cat_masks([token_mask, None], [shape[0] * shape[1], height * width])
        else:
            stgm2_index, stgm2_mask = _window_keys(count, size=cfg.stgm2_keys, **image)
        if cfg.restore_keys is None:
            restore_index, restore_mask = None, token_mask
        else:
            restore_index, restore_mask = _window_keys(count, size=cfg.restore_keys, stride=s, extent=extent,
                                                       row_length=shape[1], inside=cfg.keys_inside_map,
                                                       device=device)
        return SemanticGrid(windows, s, shape, valid, stgm1_index, stgm1_mask, stgm2_index, stgm2_mask,
                            window_token_mask, token_mask, restore_index, restore_mask)

    @staticmethod
    def cached(height: int, width: int, *, window: int, cfg: StvitConfig, device: torch.device) -> "SemanticGrid":
        """:meth:`build`, memoised per shape outside ``torch.compile`` (as :meth:`WindowGrid.cached`)."""
        if torch.compiler.is_compiling():
            return SemanticGrid.build(height, width, window=window, cfg=cfg, device=device)
        return _cached_semantic_grid(height, width, window, cfg, device)

    @property
    def num_windows(self) -> int:
        return self.windows.num_windows

    def pool(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, sh, sw, C): max over the real pixels of each of the s x s bins of a
        window (adaptive pooling of the padded window); zeros where a bin holds no pixel."""
        height, width = self.windows.padded
        x = F.pad(x.permute(0, 3, 1, 2), (0, width - x.shape[2], 0, height - x.shape[1]), value=float("-inf"))
        pooled = F.adaptive_max_pool2d(x, self.shape).permute(0, 2, 3, 1)
        return pooled if self.valid is None else torch.where(self.valid[..., None], pooled, 0)

    def to_windows(self, tokens: Tensor) -> Tensor:
        """(B, sh, sw, C) -> (B, windows, s*s, C)."""
        return window_partition(tokens, self.tokens)

    def from_windows(self, tokens: Tensor) -> Tensor:
        """(B, windows, s*s, C) -> (B, sh, sw, C)."""
        return window_reverse(tokens, self.tokens, self.shape)


_SEMANTIC_GRIDS = TableCache(16)


def _cached_semantic_grid(height: int, width: int, window: int, cfg: StvitConfig, device: torch.device) -> SemanticGrid:
    return _SEMANTIC_GRIDS.get((height, width, window, cfg, device),
                               lambda: SemanticGrid.build(height, width, window=window, cfg=cfg, device=device))


def _window_keys(count: tuple[int, int], *, size: int, stride: int, extent: tuple[int, int], row_length: int,
                 inside: bool, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """Rows of a flattened map (``row_length`` columns) holding the size x size keys of each of the
    count[0] x count[1] windows of ``stride`` cells, and which of them lie in the real ``extent``.

    The neighbourhood starts (size - stride) // 2 cells before its window (the authors' padding:
    14 = 3 + 7 + 4); ``inside`` moves it inside the extent where it fits (the authors' 10x10
    ImageNet keys). Keys outside the extent point at row 0 and are masked. Returns (windows,
    size^2) index and mask (None when every key is real).
    """
    axes = []
    for n, length in zip(count, extent):
        starts = [i * stride - (size - stride) // 2 for i in range(n)]
        if inside:
            starts = [min(max(start, 0), max(length - size, 0)) for start in starts]
        cells = torch.tensor(starts, device=device)[:, None] + torch.arange(size, device=device)
        axes.append((cells.clamp(0, length - 1), (cells >= 0) & (cells < length),
                     starts[0] >= 0 and starts[-1] + size <= length))
    (rows, rows_ok, rows_all), (cols, cols_ok, cols_all) = axes
    index = (rows[:, None, :, None] * row_length + cols[None, :, None, :]).reshape(count[0] * count[1], size * size)
    mask = (rows_ok[:, None, :, None] & cols_ok[None, :, None, :]).reshape(index.shape)
    return index, None if rows_all and cols_all else mask


def _cat_masks(masks: list[Tensor | None], lengths: list[int]) -> Tensor | None:
    """Key masks of consecutive key blocks (None: all real) joined along the keys; None if all are."""
    if all(m is None for m in masks):
        return None
    groups = next(m.shape[0] for m in masks if m is not None)
    device = next(m.device for m in masks if m is not None)
    return torch.cat([torch.ones(groups, n, dtype=torch.bool, device=device) if m is None else m
                      for m, n in zip(masks, lengths)], dim=1)


# ---------------------------------------------------------------------------------------------
# Blocks

def grouped_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, *, heads: int) -> Tensor:
    """Multi-head attention inside groups: q (B, G, Lq, C), k, v (B, G, Lk, C), mask (G, Lk) bool
    (True: the key takes part; every row needs one) or None -> (B, G, Lq, C)."""
    groups = q.shape[1]

    def split(t: Tensor) -> Tensor:  # (B, G, L, C) -> (B, G * heads, L, d)
        return t.unflatten(-1, (heads, -1)).transpose(2, 3).flatten(1, 2)

    if mask is not None:
        mask = mask[:, None, None, :].expand(-1, heads, 1, -1).flatten(0, 1)[None]
    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
    return out.unflatten(1, (groups, heads)).transpose(2, 3).flatten(-2)


class SemanticAttention(nn.Module):
    """Separate q and kv projections (the authors' layout) over keys projected before gathering."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, kv: Tensor, mask: Tensor | None) -> Tensor:
        """queries (B, G, Lq, C) normed tokens, kv (B, G, Lk, 2C) from ``self.kv`` -> (B, G, Lq, C)."""
        k, v = kv.chunk(2, dim=-1)
        return self.proj(grouped_attention(self.q(queries), k, v, mask, heads=self.num_heads))


def gather_keys(kv: Tensor, index: Tensor) -> Tensor:
    """(B, h, w, D) projected map, (G, L) rows -> (B, G, L, D)."""
    return kv.flatten(1, 2).index_select(1, index.flatten()).unflatten(1, index.shape)


class SemanticBlock(nn.Module):
    """Pre-norm attention and MLP, each residual with layer scale and stochastic depth."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float, drop_path: float, layer_scale: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SemanticAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale))
        self.drop_path = StochasticDepth(drop_path, "row")

    def add_attention(self, x: Tensor, attended: Tensor) -> Tensor:
        return x + self.drop_path(self.layer_scale_1 * attended)

    def add_mlp(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.layer_scale_2 * self.mlp(self.norm2(x)))


class SemanticTokenGeneration(SemanticBlock):
    """STGM layer 1: pooled tokens attend the image tokens around their window."""

    def __init__(self, dim: int, num_heads: int, *, pooled_keys: bool, residual: bool, **common):
        super().__init__(dim, num_heads, **common)
        self.pooled_keys = pooled_keys
        self.residual = residual

    def forward(self, x: Tensor, grid: SemanticGrid) -> Tensor:
        pooled = grid.pool(x)
        queries = grid.to_windows(self.norm1(pooled))
        keys = gather_keys(self.attn.kv(self.norm1(x)), grid.stgm1_index)
        if self.pooled_keys:
            keys = torch.cat([self.attn.kv(queries), keys], dim=2)
        attended = grid.from_windows(self.attn(queries, keys, grid.stgm1_mask))
        tokens = self.add_attention(pooled, attended) if self.residual else self.layer_scale_1 * attended
        return self.add_mlp(tokens)


class SemanticTokenRefinement(SemanticBlock):
    """STGM layer 2: semantic tokens attend the image tokens around their window, or (cls) every
    semantic and image token."""

    def __init__(self, dim: int, num_heads: int, *, global_keys: bool, **common):
        super().__init__(dim, num_heads, **common)
        self.global_keys = global_keys

    def forward(self, tokens: Tensor, x: Tensor, grid: SemanticGrid) -> Tensor:
        normed, image = self.norm1(tokens), self.norm1(x)
        if self.global_keys:
            queries = normed.flatten(1, 2)[:, None]
            keys = self.attn.kv(torch.cat([queries, image.flatten(1, 2)[:, None]], dim=2))
            attended = self.attn(queries, keys, grid.stgm2_mask).view_as(tokens)
        else:
            keys = gather_keys(self.attn.kv(image), grid.stgm2_index)
            attended = grid.from_windows(self.attn(grid.to_windows(normed), keys, grid.stgm2_mask))
        return self.add_mlp(self.add_attention(tokens, attended))


class SemanticSelfAttention(SemanticBlock):
    """Semantic tokens attend the s x s tokens of their window (``local``) or all semantic tokens."""

    def __init__(self, dim: int, num_heads: int, *, local: bool, **common):
        super().__init__(dim, num_heads, **common)
        self.local = local

    def forward(self, tokens: Tensor, grid: SemanticGrid) -> Tensor:
        normed = self.norm1(tokens)
        if self.local:
            groups = grid.to_windows(normed)
            attended = grid.from_windows(self.attn(groups, self.attn.kv(groups), grid.window_token_mask))
        else:
            groups = normed.flatten(1, 2)[:, None]
            attended = self.attn(groups, self.attn.kv(groups), grid.token_mask).view_as(tokens)
        return self.add_mlp(self.add_attention(tokens, attended))


class SemanticRecovery(SemanticBlock):
    """Image tokens attend the semantic tokens around their window (det), or all of them (cls)."""

    def __init__(self, dim: int, num_heads: int, *, global_keys: bool, **common):
        super().__init__(dim, num_heads, **common)
        self.global_keys = global_keys

    def forward(self, x: Tensor, tokens: Tensor, grid: SemanticGrid) -> Tensor:
        kv = self.attn.kv(self.norm1(tokens))
        normed = self.norm1(x)
        if self.global_keys:
            attended = self.attn(normed.flatten(1, 2)[:, None], kv.flatten(1, 2)[:, None], grid.restore_mask)
            attended = attended.view_as(x)
        else:
            queries = grid.windows.to_windows(autocast_input(normed))
            attended = self.attn(queries, gather_keys(kv, grid.restore_index), grid.restore_mask)
            attended = grid.windows.from_windows(attended)
        return self.add_mlp(self.add_attention(x, attended))


def dumbbell_unit(dim: int, num_heads: int, *, window: int, mlp_ratio: float, drop_paths: list[float],
                  cfg: StvitConfig) -> list[nn.Module]:
    """The six blocks of one unit, in order (see the module docstring)."""
    swin_block = SwinBlock(dim, num_heads, window=window, shifted=False, mlp_ratio=mlp_ratio, drop_path=drop_paths[0])
    common = [dict(mlp_ratio=mlp_ratio, drop_path=p, layer_scale=cfg.layer_scale) for p in drop_paths]
    return [swin_block,
            SemanticTokenGeneration(dim, num_heads, pooled_keys=cfg.stgm1_pooled_keys, residual=cfg.stgm1_residual,
                                    **common[1]),
            SemanticTokenRefinement(dim, num_heads, global_keys=cfg.stgm2_keys is None, **common[2]),
            SemanticSelfAttention(dim, num_heads, local=True, **common[3]),
            SemanticSelfAttention(dim, num_heads, local=False, **common[4]),
            SemanticRecovery(dim, num_heads, global_keys=cfg.restore_keys is None, **common[5])]


class SemanticStage(nn.Module):
    """Stage 3 of STViT-R: patch merging, then dumbbell units (blocks named by their index in the
    stage, as Swin's, so Swin and the authors' checkpoints map by name)."""

    def __init__(self, *, dim: int, num_heads: int, window: int, mlp_ratio: float, drop_paths: list[float],
                 downsample: nn.Module, cfg: StvitConfig):
        super().__init__()
        self.window = window
        self.cfg = cfg
        self.downsample = downsample
        self.blocks = nn.ModuleList(
            block for start in range(0, len(drop_paths), 6)
            for block in dumbbell_unit(dim, num_heads, window=window, mlp_ratio=mlp_ratio,
                                       drop_paths=drop_paths[start:start + 6], cfg=cfg))

    def forward(self, x: Tensor, selection=None) -> Tensor:
        """x (B, H, W, C/2) -> (B, H/2, W/2, C); ``selection`` is unused (SwinStage's signature)."""
        x = self.downsample(x)
        grid = SemanticGrid.cached(x.shape[1], x.shape[2], window=self.window, cfg=self.cfg, device=x.device)
        for start in range(0, len(self.blocks), 6):
            swin_block, generate, refine, local, global_, recover = self.blocks[start:start + 6]
            x = swin_block(x, grid.windows)
            tokens = refine(generate(x, grid), x, grid)
            x = recover(x, global_(local(tokens, grid), grid), grid)
        return x


class ConvStem(nn.Module):
    """The authors' stem: two 3x3 stride-2 convolutions (3 -> C/2 -> C), each followed by
    BatchNorm and Hardswish, no LayerNorm; (B, 3, H, W) -> (B, ceil(H/4), ceil(W/4), C)."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(dim // 2)
        self.conv2 = nn.Conv2d(dim // 2, dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)
        self.act = nn.Hardswish()

    def forward(self, images: Tensor) -> Tensor:
        x = self.act(self.bn1(self.conv1(images)))
        return self.act(self.bn2(self.conv2(x))).permute(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------------
# Model

class StvitR(SwinTransformer):
    """Swin with STViT-R's stage 3 (and by default the authors' conv stem); the same
    ``forward_features`` / ``FeatureOutput`` as Swin (four NCHW maps, no scores)."""

    def __init__(self, cfg: SwinConfig, stvit: StvitConfig, *, num_classes: int = 0):
        super().__init__(cfg, num_classes=num_classes)
        self.stvit = stvit
        total, first = sum(cfg.depths), sum(cfg.depths[:2])
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(first, first + cfg.depths[2])]
        self.stages[2] = SemanticStage(dim=self.feature_channels[2], num_heads=cfg.num_heads[2], window=cfg.window_size,
                                       mlp_ratio=cfg.mlp_ratio, drop_paths=rates, downsample=self.stages[2].downsample,
                                       cfg=stvit)
        self.stages[2].apply(_init_weights)
        if stvit.stem == "conv":
            self.patch_embed = ConvStem(cfg.in_chans, cfg.embed_dim)

    def load_swin_state_dict(self, state_dict: dict[str, Tensor]):
        """Swin weights (torchvision or official layout) into the parts STViT-R shares with Swin; the
        semantic blocks (and the conv stem) keep their initialisation. See :mod:`spa_model.stvit_weights`."""
        from .stvit_weights import load_swin_into_stvit

        return load_swin_into_stvit(self, state_dict)

    def load_stvit_state_dict(self, state_dict: dict[str, Tensor]):
        """The authors' released STViT-R weights (ImageNet or mmdet detection checkpoint)."""
        from .stvit_weights import load_stvit_state_dict

        return load_stvit_state_dict(self, state_dict)


def _build(swin: SwinConfig, num_classes: int, overrides: dict) -> StvitR:
    overrides = dict(overrides)
    form = overrides.pop("form", "det")
    if form not in STVIT_FORMS:
        raise ValueError(f"unknown STViT-R form {form!r}; expected one of {', '.join(STVIT_FORMS)}")
    swin_fields = {f.name for f in fields(SwinConfig)} - {"spa"}
    stvit_fields = {f.name for f in fields(StvitConfig)}
    unknown = set(overrides) - swin_fields - stvit_fields
    if unknown:
        raise TypeError(f"unknown model options: {', '.join(sorted(unknown))}")
    swin = replace(swin, **{k: v for k, v in overrides.items() if k in swin_fields})
    stvit = replace(STVIT_FORMS[form], **{k: v for k, v in overrides.items() if k in stvit_fields})
    _check(swin, stvit)
    return StvitR(swin, stvit, num_classes=num_classes)


def _check(swin: SwinConfig, stvit: StvitConfig) -> None:
    window, depth = swin.window_size, swin.depths[2] if len(swin.depths) == 4 else 0
    if len(swin.depths) != 4 or depth == 0 or depth % 6:
        raise ValueError(f"depths {tuple(swin.depths)}: STViT-R needs 4 stages and a stage-3 depth that is a "
                         f"multiple of 6 (dumbbell units of 6 blocks)")
    if stvit.stem not in ("conv", "patch"):
        raise ValueError(f"stem {stvit.stem!r}: expected 'conv' or 'patch'")
    if stvit.stem == "conv" and swin.patch_size != 4:
        raise ValueError(f"patch_size {swin.patch_size}: the conv stem has stride 4 (use stem='patch')")
    if not 1 <= stvit.tokens_per_window <= window:
        raise ValueError(f"tokens_per_window {stvit.tokens_per_window}: expected 1..{window} (the window)")
    for name in ("stgm1_keys", "stgm2_keys"):
        size = getattr(stvit, name)
        if size is not None and size < window:
            raise ValueError(f"{name} {size}: a neighbourhood holds its window, at least {window}")
    if stvit.restore_keys is not None and stvit.restore_keys < stvit.tokens_per_window:
        raise ValueError(f"restore_keys {stvit.restore_keys}: at least tokens_per_window "
                         f"({stvit.tokens_per_window}), the window's own tokens")


# Drop-path rates: the authors' ImageNet configs (T 0.2, S 0.3, B 0.4; their COCO runs used S 0.2, B 0.3).

@register_model
def stvit_r_tiny(*, num_classes: int = 0, **overrides) -> StvitR:
    """STViT-R-Swin-T: Swin-T, stage 3 = one dumbbell unit (no released weights: sec. 8 of the digest)."""
    return _build(SWIN_T, num_classes, overrides)


@register_model
def stvit_r_small(*, num_classes: int = 0, **overrides) -> StvitR:
    """STViT-R-Swin-S: Swin-S, stage 3 = three dumbbell units, drop-path 0.3."""
    return _build(SWIN_S, num_classes, overrides)


@register_model
def stvit_r_base(*, num_classes: int = 0, **overrides) -> StvitR:
    """STViT-R-Swin-B: Swin-B, stage 3 = three dumbbell units, drop-path 0.4."""
    return _build(replace(SWIN_B, drop_path_rate=0.4), num_classes, overrides)
