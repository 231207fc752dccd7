"""Swin and SPT backbones: dataclass configs, the SPA block, the model, and the model registry.

SPT (the paper's Select and Pack Transformer) is a Swin whose stages listed in
``SpaConfig.spa_stages`` (default: stages 3 and 4, 0-based ``(2, 3)``) use :class:`SpaBlock`, or
exactly the blocks listed in ``SpaConfig.spa_blocks`` (0-based over all stages). Both share
parameter names, so Swin weights load into SPT unchanged (gates start fresh).

Decisions (docs/design.md gives the reasons at more length):

* Scores: the first SPA stage holds an ``entry_gate`` (LayerNorm + Linear) on its input, i.e. on
  stage 2's output r2: s0 at stride 8. Every SPA block computes ``s = max(gate(norm1(r)), s_up)``
  where ``s_up`` is the *previous stage's* final score map max-pooled (2x2, ceil) to this grid, the
  same for all blocks of a stage. Eq. 4 defines s_up as the finer scale's map; chaining block to
  block inside a stage instead would make the selection monotone (a token once kept could never be
  dropped again by a later block of the stage), inflating the selection ratio.
* Gate placement: ``r_g = sigmoid(s) * norm1(r)`` is the attention input. Gating before norm1
  would be undone by the LayerNorm (LN(a r) = LN(r) for a per-token scalar a). The gate reads
  norm1(r) for the same reason (well-scaled input, no extra norm).
* Unkept tokens skip attention (residual only); every token goes through the MLP.
* The shift alternates every block as in Swin (odd blocks shifted by M // 2), disabled per dimension
  when the padded map is <= M (torchvision's rule). Window padding tokens are never selected
  (except by the "all" selector, which keeps everything so SPT equals Swin).
* Containers: per-image (each image's tokens start a fresh container; eval outputs are
  batch-invariant) by default, ``per_image_containers=False`` for the paper's layout. Relative
  position inside a container: Swin's table at the clamped offset (see
  :mod:`spa_model.packed_attention`); ``relative_position=False`` drops the bias in SPA blocks.
* Capacity (containers per image, per SPA block): ``"auto"`` (default) a static token budget each
  block learns from the selections its gate makes in training (:mod:`spa_model.budget`; no host
  sync, one shape for torch.compile and CUDA graphs; a fresh model's budget is 1.0, everything);
  a float r, a fixed budget of r of each image's tokens; ``"exact"``, the containers needed (one
  host sync per SPA block). Selections beyond a static budget drop their last tokens from attention
  and are counted (``FeatureOutput.dropped``): see docs/design.md, "Capacity and token budgets".
* Features: ``features[0..2]`` are the raw stage outputs, ``features[3]`` the final-normed stage 4
  (what torchvision's ``swin_t().features`` + ``norm`` give); layout NCHW.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import PatchEmbed, PatchMerging, SwinBlock, WindowAttention, WindowGrid
from .budget import TokenBudget
from .packed_attention import packed_attention, scatter_add_rows, slot_rows, triton_usable
from .packing import PackPlan, max_containers, plan_packing
from .selection import AllSelector, SelectionState, build_selector, prior_logit, selector_class

__all__ = ["SpaConfig", "SwinConfig", "FeatureOutput", "BlockSelection", "SpaBlockSite", "ModelContract", "SpaBlock",
           "SwinStage", "SwinTransformer", "register_model", "create_model", "list_models"]


@dataclass(frozen=True)
class SpaConfig:
    """Select and Pack Attention settings (every field is a ``create_model`` override)."""

    spa_stages: tuple[int, ...] = (2, 3)
    spa_blocks: tuple[int, ...] | None = None  # blocks (0-based over all stages); None: all of spa_stages
    selector: str = "gumbel"                  # a name in spa_model.selection.SELECTORS: gumbel | topk | gt | all
    threshold: float = 0.01                   # gumbel: keep iff sigmoid((s + g) / tau) > threshold
    gate_prior: float | None = None           # gate biases start where training keeps this share; None: 0 (paper)
    tau: float = 1.0
    stochastic_eval: bool = False             # gumbel: sample noise in eval too
    keep_ratio: float = 0.5                   # topk
    container_len: int | None = None          # None: window ** 2
    per_image_containers: bool = True         # False: the paper's batch-wide packing
    capacity: str | float = "auto"            # "auto": learned static budget | r: fixed budget | "exact"
    relative_position: bool = True            # Swin's bias (clamped offsets) inside containers
    backend: str = "auto"                     # packed attention kernel
    fuse_rows: bool = True                    # eager CUDA, Triton attention: plan, gather, scatter as Triton kernels

    def __post_init__(self):
        selector_class(self.selector)  # an unknown name fails here, at configuration
        if isinstance(self.capacity, str) and self.capacity not in ("auto", "exact"):
            raise ValueError(f"capacity {self.capacity!r}: expected 'auto', 'exact' or a share in (0, 1]")
        if not isinstance(self.capacity, str) and not 0 < float(self.capacity) <= 1:
            raise ValueError(f"capacity {self.capacity!r}: a fixed token budget is a share in (0, 1]")


@dataclass(frozen=True)
class SwinConfig:
    """Swin architecture; ``spa`` set makes it an SPT."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.2
    patch_size: int = 4
    in_chans: int = 3
    spa: SpaConfig | None = None


@dataclass(frozen=True)
class BlockSelection:
    """What one SPA block selected and packed (statistics are computed on use, never in the forward).

    ``plan``: the block's :class:`PackPlan`; ``grid_tokens``: tokens of one image's (unpadded) map;
    ``padding_kept``: window padding tokens kept per image (only the "all" selector keeps them).
    """

    plan: PackPlan
    grid_tokens: int
    padding_kept: int = 0

    @property
    def selected(self) -> Tensor:
        """(B,) long: tokens each image selected (dropped ones included)."""
        return self.plan.selected - self.padding_kept

    @property
    def select_ratio(self) -> Tensor:
        return self.selected.sum() / max(self.selected.numel() * self.grid_tokens, 1)

    @property
    def dropped(self) -> Tensor:
        """() long: selected tokens the static budget left out of attention."""
        return (self.plan.selected - self.plan.placed).sum()


@dataclass
class FeatureOutput:
    """features: 4 maps (B, C_i, H/s, W/s), s = 4, 8, 16, 32; scores: {stride: [(B, h, w) logits]};
    blocks: one :class:`BlockSelection` per SPA block."""

    features: list[Tensor]
    scores: dict[int, list[Tensor]] = field(default_factory=dict)
    blocks: list[BlockSelection] = field(default_factory=list)

    @property
    def select_ratios(self) -> list[Tensor]:
        """One () tensor per SPA block: the share of the batch's tokens selected."""
        return [block.select_ratio for block in self.blocks]

    @property
    def containers(self) -> list[Tensor]:
        """One () long tensor per SPA block: containers holding at least one token."""
        return [block.plan.containers_used for block in self.blocks]

    @property
    def dropped(self) -> list[Tensor]:
        """One () long tensor per SPA block: selected tokens its static budget dropped."""
        return [block.dropped for block in self.blocks]


@dataclass(frozen=True)
class SpaBlockSite:
    """Where one SPA block sits: ``block`` 0-based over all blocks, ``stage`` 0-based, the stage's ``stride``."""

    block: int
    stage: int
    stride: int


@dataclass(frozen=True)
class ModelContract:
    """What a backbone consumes and how it trains, declared for the code that drives it
    (:meth:`SwinTransformer.contract`): a trainer asks this instead of inspecting modules."""

    label_strides: tuple[int, ...]        # selection labels it reads: its gates' loss targets, the oracle's choice
    spa_blocks: tuple[SpaBlockSite, ...]  # in forward order: FeatureOutput.blocks[i] comes from spa_blocks[i]
    needs_labels: bool                    # forward_features must get select_labels (the oracle "gt" selector)
    unused_parameters: bool               # some parameters get no gradient (the gates under "all"): DDP must look
    static_shapes: bool                   # no data-dependent sizes: torch.compile and CUDA graphs, no host syncs


class SpaBlock(SwinBlock):
    """Swin block whose attention runs on the selected tokens only, packed into containers."""

    def __init__(self, dim: int, num_heads: int, *, window: int, shifted: bool, spa: SpaConfig,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__(dim, num_heads, window=window, shifted=shifted, mlp_ratio=mlp_ratio,
                         drop_path=drop_path)
        self.spa = spa
        self.container_len = spa.container_len or window * window
        self.gate = nn.Linear(dim, 1)
        self.budget = None if spa.capacity == "exact" else TokenBudget(
            1.0 if spa.capacity == "auto" else float(spa.capacity), learned=spa.capacity == "auto")

    def forward(self, x: Tensor, grid: WindowGrid, selection: SelectionState) -> Tensor:
        tokens = self.norm1(x)
        selector = selection.selector
        gate = keep_pixels = None
        if selector.uses_gate:
            scores = self.gate(tokens).squeeze(-1)
            if selection.s_up is not None:
                scores = torch.maximum(scores, selection.s_up.to(scores.dtype))
            chosen = selector(scores, labels=selection.labels, training=self.training)
            gate = torch.sigmoid(scores)
            if chosen.weight is not None:  # straight-through: 1/0 forward, gradient to the gate
                gate = gate * chosen.weight.to(gate.dtype)
            selection.record_scores(selection.stride, scores)
            keep_pixels = chosen.keep.flatten(1)                                     # (B, H*W)
        plan, rows, holds_token, fused = self._plan(x, keep_pixels, grid, selector.keeps_padding)
        if self.training and self.budget is not None and not selector.keeps_padding:  # "all" never reads it
            self.budget.observe(plan.selected, grid.height * grid.width)
        selection.blocks.append(BlockSelection(plan, grid.height * grid.width,
                                               grid.num_padding if selector.keeps_padding else 0))
        x = self._add_attention(x, tokens, gate, plan, rows, holds_token, grid, fused=fused)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _plan(self, x: Tensor, keep_pixels: Tensor | None, grid: WindowGrid,
              keeps_padding: bool) -> tuple[PackPlan, Tensor, Tensor, bool]:
        """The packing plan of ``keep_pixels`` (B, H*W) bool (None: everything), each slot's source row
        and whether it holds a token, and whether the Triton kernels of :mod:`spa_model.triton_rows`
        made them (then the gather and the scatter run there too)."""
        batch = x.shape[0]
        capacity = self._capacity(grid, batch, keeps_padding)
        if keep_pixels is not None and capacity is not None and batch > 0 and _fused_rows(x, self.spa):
            from .triton_rows import plan_rows

            return (*plan_rows(keep_pixels, grid.token_pixel, grid.token_is_padding,
                               container_len=self.container_len, capacity=capacity), True)
        plan = plan_packing(grid.window_major(keep_pixels, batch), container_len=self.container_len,
                            per_image=self.spa.per_image_containers, capacity=capacity)
        return (plan, *slot_rows(plan, *grid.token_rows(batch, plan.num_slots)), False)

    def _add_attention(self, x: Tensor, tokens: Tensor, gate: Tensor | None, plan: PackPlan, rows: Tensor,
                       holds_token: Tensor, grid: WindowGrid, *, fused: bool) -> Tensor:
        """x + drop_path(packed attention of the planned ``tokens``, scaled by ``gate``).

        The functional core of :mod:`spa_model.packed_attention`, reading and writing the (B, H, W)
        maps through the slots' source ``rows`` (no pad / roll / window partition copies); the gate
        scales the packed rows only (r_g = gate * r matters only where attention reads it); unkept
        tokens keep their residual as it is. Same values as Swin's window path: tokens are still
        ordered window-major, and kept window padding reads zeros (Swin pads after norm1).
        ``fused``: the gather and the scatter run as the Triton kernels of :mod:`spa_model.triton_rows`.
        """
        batch, channels = tokens.shape[0], tokens.shape[-1]
        pixels = grid.height * grid.width
        if fused:  # implies a gate: only gate-evaluating selectors take the fused path
            from .triton_rows import gather_gated, scatter_add_weighted

            amp = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
            packed = gather_gated(tokens.reshape(-1, channels), gate.reshape(-1), rows, holds_token, dtype=amp)
        else:
            packed = tokens.reshape(-1, channels).index_select(0, rows)
            if gate is not None:
                packed = packed * gate.reshape(-1, 1).index_select(0, rows)
            elif grid.is_padded:  # the "all" selector keeps padding: zeros, as Swin pads after norm1
                packed = torch.where(holds_token[:, None], packed, 0)
        qkv = F.linear(packed, self.attn.qkv.weight, self.attn.qkv.bias)
        attended = packed_attention(
            qkv, plan, positions=grid.positions, num_heads=self.attn.num_heads,
            rel_pos_table=self.attn.relative_position_bias_table if self.spa.relative_position else None,
            window=grid.window, backend=self.spa.backend)
        out = F.linear(attended, self.attn.proj.weight, self.attn.proj.bias)
        residual = x.reshape(-1, x.shape[-1])
        if fused:
            x = scatter_add_weighted(residual, out, rows, holds_token, pixels=pixels,
                                     image_scale=self._image_scale(batch, torch.float32, x.device))
        else:
            x = scatter_add_rows(residual, out, rows, self._slot_weight(rows, holds_token, batch, pixels, x.dtype))
        return x.view(batch, grid.height, grid.width, -1)

    def _image_scale(self, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor | None:
        """In training, the block's row-mode stochastic depth (torchvision's: kept with probability
        1 - p, scaled by 1 / (1 - p)), drawn per image; None where it is the identity."""
        if not self.training or self.drop_path.p == 0.0:
            return None
        survival = 1.0 - self.drop_path.p
        image_scale = torch.empty(batch, dtype=dtype, device=device).bernoulli_(survival)
        return image_scale.div_(survival) if survival > 0 else image_scale

    def _slot_weight(self, rows: Tensor, holds_token: Tensor, batch: int, pixels: int, dtype: torch.dtype) -> Tensor:
        """Each slot's weight in the residual sum: 0 without a token, else its image's drop-path scale."""
        image_scale = self._image_scale(batch, dtype, rows.device)
        if image_scale is None:
            return holds_token.to(dtype)
        return torch.where(holds_token, image_scale[rows // pixels], 0)

    def _capacity(self, grid: WindowGrid, batch: int, keeps_padding: bool) -> int | None:
        """Containers per image (in all for the batch-wide layout), or None: exactly what is needed."""
        if self.budget is None:
            return None
        length, per_image = self.container_len, self.spa.per_image_containers
        most = max_containers(batch, grid.token_pixel.shape[0], container_len=length, per_image=per_image)
        if keeps_padding:
            return most
        return min(most, self.budget.containers(grid.height * grid.width, container_len=length,
                                                batch=None if per_image else batch))


def _fused_rows(x: Tensor, spa: SpaConfig) -> bool:
    """Whether the Triton row kernels (:mod:`spa_model.triton_rows`) run: asked for, per-image
    containers, in eager mode (under torch.compile Inductor fuses the torch ops of the same path),
    where packed attention runs Triton."""
    return (spa.fuse_rows and spa.per_image_containers and spa.backend in ("auto", "triton")
            and not torch.compiler.is_compiling() and triton_usable(x))


class SwinStage(nn.Module):
    """Optional patch merging, then blocks alternating unshifted / shifted windows."""

    def __init__(self, *, dim: int, num_heads: int, window: int, mlp_ratio: float,
                 drop_paths: list[float], stride: int, downsample: bool, spa: SpaConfig | None,
                 spa_blocks: set[int], entry_gate: bool):
        super().__init__()
        self.window = window
        self.stride = stride
        self.downsample = PatchMerging(dim // 2) if downsample else nn.Identity()
        # s0: a gate on the previous stage's output (stride / 2), only in the first SPA stage.
        self.entry_gate = nn.Sequential(nn.LayerNorm(dim // 2), nn.Linear(dim // 2, 1)) if entry_gate else None
        common = dict(window=window, mlp_ratio=mlp_ratio)
        self.blocks = nn.ModuleList(
            SpaBlock(dim, num_heads, shifted=i % 2 == 1, spa=spa, drop_path=p, **common) if i in spa_blocks
            else SwinBlock(dim, num_heads, shifted=i % 2 == 1, drop_path=p, **common)
            for i, p in enumerate(drop_paths))

    def forward(self, x: Tensor, selection: SelectionState) -> Tensor:
        if self.entry_gate is not None and selection.selector.uses_gate:
            selection.s_up = self.entry_gate(x).squeeze(-1)
            selection.record_scores(self.stride // 2, selection.s_up)
        x = self.downsample(x)
        height, width = x.shape[1:3]
        grid, shifted_grid = (WindowGrid.cached(height, width, window=self.window, shift=shift, device=x.device)
                              for shift in (0, self.window // 2))
        selection.stride = self.stride
        if selection.s_up is not None:
            selection.s_up = F.max_pool2d(selection.s_up.unsqueeze(1), 2, ceil_mode=True).squeeze(1)
        for block in self.blocks:
            x = block(x, shifted_grid if block.shifted else grid, selection)
        stage_scores = selection.scores.get(self.stride)
        if stage_scores:
            selection.s_up = stage_scores[-1]
        return x


class SwinTransformer(nn.Module):
    """Swin Transformer (and SPT when ``cfg.spa`` is set), NHWC inside, NCHW features out."""

    def __init__(self, cfg: SwinConfig, *, num_classes: int = 0):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        dims = [cfg.embed_dim * 2 ** i for i in range(len(cfg.depths))]
        self.feature_channels = dims
        self.strides = [cfg.patch_size * 2 ** i for i in range(len(cfg.depths))]
        starts = [sum(cfg.depths[:i]) for i in range(len(cfg.depths))]
        spa_blocks = spa_block_indices(cfg)
        stage_spa_blocks = [{b - start for b in spa_blocks if start <= b < start + depth}  # 0-based in the stage
                            for start, depth in zip(starts, cfg.depths)]
        first_spa = next((i for i, blocks in enumerate(stage_spa_blocks) if blocks), None)
        self.selector = build_selector(cfg.spa.selector, cfg.spa) if cfg.spa else AllSelector()
        self.patch_embed = PatchEmbed(cfg.in_chans, cfg.embed_dim, cfg.patch_size)
        total = sum(cfg.depths)  # stochastic depth grows linearly over all blocks (as torchvision)
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList(
            SwinStage(dim=dims[i], num_heads=cfg.num_heads[i], window=cfg.window_size,
                      mlp_ratio=cfg.mlp_ratio, drop_paths=rates[starts[i]:starts[i] + depth],
                      stride=self.strides[i], downsample=i > 0, spa=cfg.spa,
                      spa_blocks=stage_spa_blocks[i],
                      entry_gate=i == first_spa and i > 0)
            for i, depth in enumerate(cfg.depths))
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)
        if cfg.spa is not None and cfg.spa.gate_prior is not None:  # RetinaNet-style bias prior
            bias = prior_logit(cfg.spa.gate_prior, threshold=cfg.spa.threshold, tau=cfg.spa.tau)
            for gate in [m.gate for m in self.modules() if isinstance(m, SpaBlock)] + \
                    [stage.entry_gate[1] for stage in self.stages if stage.entry_gate is not None]:
                nn.init.constant_(gate.bias, bias)

    def contract(self) -> ModelContract:
        """What this model consumes and how it trains (see :class:`ModelContract`). Label strides
        are those of its gates' score maps; none for Swin, STViT-R and the "all" selector."""
        sites, block = [], 0
        for index, stage in enumerate(self.stages):
            for module in stage.blocks:
                if isinstance(module, SpaBlock):
                    sites.append(SpaBlockSite(block, index, stage.stride))
                block += 1
        strides = set()
        if self.selector.uses_gate:
            strides = {site.stride for site in sites} | {stage.stride // 2 for stage in self.stages
                                                         if getattr(stage, "entry_gate", None) is not None}
        spa = self.cfg.spa
        return ModelContract(label_strides=tuple(sorted(strides)), spa_blocks=tuple(sites),
                             needs_labels=bool(sites) and self.selector.needs_labels,
                             unused_parameters=bool(sites) and not self.selector.uses_gate,
                             static_shapes=spa is None or spa.capacity != "exact")

    def no_weight_decay(self) -> set[str]:
        """Parameters to train without weight decay (timm's convention, which optimizers ask): the
        relative-position bias tables, as Swin's recipes exempt them. Biases and norms (1-D) are the
        optimizer's own rule."""
        return {f"{name}.relative_position_bias_table" for name, module in self.named_modules()
                if isinstance(module, WindowAttention)}

    def forward_features(self, images: Tensor, select_labels: dict[int, Tensor] | None = None) -> FeatureOutput:
        """Backbone pass: feature pyramid, gate score maps, selection ratios, containers used."""
        x = self.patch_embed(images)
        selection = SelectionState(self.selector, select_labels)
        features = []
        for stage in self.stages:
            x = stage(x, selection)
            features.append(x)
        features[-1] = self.norm(x)
        return FeatureOutput(features=[f.permute(0, 3, 1, 2) for f in features], scores=selection.scores,
                             blocks=selection.blocks)

    def forward_head(self, output: FeatureOutput) -> Tensor:
        """Average-pooled final features through the classifier (pooled features if no head)."""
        return self.head(output.features[-1].mean(dim=(2, 3)))

    def forward(self, images: Tensor, select_labels: dict[int, Tensor] | None = None) -> Tensor:
        return self.forward_head(self.forward_features(images, select_labels))

    def load_swin_state_dict(self, state_dict: dict[str, Tensor]):
        """Load torchvision or official Swin weights (see :func:`spa_model.weights.load_swin_state_dict`)."""
        from .weights import load_swin_state_dict

        return load_swin_state_dict(self, state_dict)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------
# Registry

_MODELS: dict[str, Callable[..., SwinTransformer]] = {}

SWIN_T = SwinConfig()
SWIN_S = SwinConfig(depths=(2, 2, 18, 2), drop_path_rate=0.3)
SWIN_B = SwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5)


def register_model(fn: Callable[..., SwinTransformer]) -> Callable[..., SwinTransformer]:
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, *, num_classes: int = 0, **overrides) -> SwinTransformer:
    """Build a registered model; ``overrides`` name fields of SwinConfig or SpaConfig."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(list_models())}")
    return _MODELS[name](num_classes=num_classes, **overrides)


def spa_block_indices(cfg: SwinConfig) -> set[int]:
    """The SPA blocks of ``cfg``, 0-based over all stages."""
    if cfg.spa is None:
        return set()
    if cfg.spa.spa_blocks is not None:
        return set(cfg.spa.spa_blocks)
    starts = [sum(cfg.depths[:i]) for i in range(len(cfg.depths))]
    return {starts[i] + j for i in cfg.spa.spa_stages for j in range(cfg.depths[i])}


def _build(cfg: SwinConfig, num_classes: int, overrides: dict) -> SwinTransformer:
    swin_fields = {f.name for f in fields(SwinConfig)}
    spa_fields = {f.name for f in fields(SpaConfig)}
    unknown = set(overrides) - swin_fields - spa_fields
    if unknown:
        raise TypeError(f"unknown model options: {', '.join(sorted(unknown))}")
    spa_overrides = {k: v for k, v in overrides.items() if k in spa_fields}
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if k in swin_fields})
    if spa_overrides:
        if cfg.spa is None:
            raise TypeError(f"options {', '.join(sorted(spa_overrides))} need an SPT model (spt_*)")
        cfg = replace(cfg, spa=replace(cfg.spa, **spa_overrides))
    if cfg.spa and not set(cfg.spa.spa_stages) <= set(range(len(cfg.depths))):
        raise ValueError(f"spa_stages {cfg.spa.spa_stages}: the model has stages 0-{len(cfg.depths) - 1}")
    if cfg.spa and not spa_block_indices(cfg) <= set(range(sum(cfg.depths))):
        raise ValueError(f"spa_blocks {cfg.spa.spa_blocks}: the model has blocks 0-{sum(cfg.depths) - 1}")
    return SwinTransformer(cfg, num_classes=num_classes)


@register_model
def swin_tiny(*, num_classes: int = 0, **overrides) -> SwinTransformer:
    """Swin-T: C=96, depths (2,2,6,2), heads (3,6,12,24), window 7, drop-path 0.2."""
    return _build(SWIN_T, num_classes, overrides)


@register_model
def swin_small(*, num_classes: int = 0, **overrides) -> SwinTransformer:
    """Swin-S: C=96, depths (2,2,18,2), heads (3,6,12,24), window 7, drop-path 0.3."""
    return _build(SWIN_S, num_classes, overrides)


@register_model
def swin_base(*, num_classes: int = 0, **overrides) -> SwinTransformer:
    """Swin-B: C=128, depths (2,2,18,2), heads (4,8,16,32), window 7, drop-path 0.5."""
    return _build(SWIN_B, num_classes, overrides)


@register_model
def spt_tiny(*, num_classes: int = 0, **overrides) -> SwinTransformer:
    """SPT-T: Swin-T with SPA blocks in stages 3-4 (8 SPA blocks)."""
    return _build(replace(SWIN_T, spa=SpaConfig()), num_classes, overrides)


@register_model
def spt_small(*, num_classes: int = 0, **overrides) -> SwinTransformer:
    """SPT-S: Swin-S with SPA blocks in stages 3-4."""
    return _build(replace(SWIN_S, spa=SpaConfig()), num_classes, overrides)


@register_model
def spt_base(*, num_classes: int = 0, **overrides) -> SwinTransformer:
    """SPT-B: Swin-B with SPA blocks in stages 3-4."""
    return _build(replace(SWIN_B, spa=SpaConfig()), num_classes, overrides)
