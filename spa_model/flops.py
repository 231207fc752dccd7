"""Analytic FLOPs counter in Swin's convention: multiply-accumulates (MACs), norms included.

Per module, as Swin's ``flops()`` methods (microsoft/Swin-Transformer) count them:

* patch embedding: H4 W4 C (3 p^2) + norm H4 W4 C;
* Swin block on an (H, W) map padded to (Hp, Wp) = N_p tokens: norm1 HWC, qkv N_p C 3C, attention
  q k^T and attn v 2 N_p M^2 C, proj N_p C^2, MLP 2 HWC (r C), norm2 HWC. Attention is counted on the
  padded windows because they are computed (at 224x224 nothing is padded);
* SPA block: norm1 HWC, gate HWC (not with the "all" selector, which skips it), then from the
  containers the image's tokens actually fill (``FeatureOutput.containers``): qkv and proj on containers x L
  slots (the packed op projects every slot of a used container, padding included), attention
  2 containers L^2 C; MLP and norm2 on all tokens. Sigmoid gating, softmax, bias and masks are not
  counted (Swin counts none of its element-wise ops except norms);
* patch merging: norm 4C H' W' + reduction H' W' 4C 2C; final norm; head 8C x classes.
* STViT-R (:mod:`spa_model.stvit`): the conv stem's two convolutions and BatchNorms (the first
  counted on twice the stage-1 grid, exact for inputs that are multiples of 4); in stage 3 each
  attention counts q and proj on its queries, K/V once per real token of the map it reads (then
  gathered; the authors' published detection FLOPs count them once per token of the padded
  map), QK^T and AV on every key of a query's neighbourhood, masked ones included (they are
  computed), and the norms; the MLPs on their tokens. Max pooling, like softmax, is not counted.

Counts are per image, the report the mean over a batch's images. A batch padded to its largest
image computes more than its images would alone; given each image's own size (``image_sizes``)
the counter counts each there, so an image's figure does not depend on its batch (the trainer's
``val/gmacs_per_image`` for detection, whose batches mix sizes). Swin-T at 224x224 with the
1000-class head: 4.49 G (Swin reports 4.5 G).
``norm_macs=5, duplicated_kv=True`` counts as fvcore counted the authors' STViT-R code (norms 5
MACs per element, K/V normed and projected once per neighbourhood copy): their logged 5.826 G
(STViT-R-S) and 10.264 G (B) at 224x224 with ``form="cls"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from .layers import SwinBlock, WindowGrid
from .models import FeatureOutput, SpaBlock, SwinTransformer
from .stvit import (ConvStem, SemanticGrid, SemanticRecovery, SemanticSelfAttention, SemanticStage,
                    SemanticTokenGeneration, SemanticTokenRefinement)

__all__ = ["FlopsReport", "count_flops"]


@dataclass
class FlopsReport:
    """MACs per image: ``per_module`` maps names (``stages.2.blocks.0``) to MACs; ``total`` sums them."""

    per_module: dict[str, float]
    batch_size: int

    @property
    def total(self) -> float:
        return sum(self.per_module.values())

    def __str__(self) -> str:
        lines = [f"{name:28s} {macs / 1e6:10.2f} M" for name, macs in self.per_module.items()]
        return "\n".join(lines + [f"{'total':28s} {self.total / 1e9:10.3f} G MACs per image"])


def _padded_tokens(height: int, width: int, window: int) -> int:
    return -(-height // window) * window * -(-width // window) * window


def _swin_block_macs(block: SwinBlock, height: int, width: int, window: int, dim: int, norm_macs: int) -> float:
    tokens = height * width
    padded = _padded_tokens(height, width, window)
    length = window ** 2
    hidden = block.mlp.fc1.out_features
    attention = padded * dim * 3 * dim + 2 * padded * length * dim + padded * dim * dim
    return 2 * norm_macs * tokens * dim + attention + 2 * tokens * dim * hidden


def _spa_block_macs(block: SpaBlock, tokens: int, dim: int, containers: float, uses_gate: bool,
                    norm_macs: int) -> float:
    slots = containers * block.container_len
    hidden = block.mlp.fc1.out_features
    attention = slots * dim * 4 * dim + 2 * slots * block.container_len * dim
    gate = tokens * dim if uses_gate else 0
    return 2 * norm_macs * tokens * dim + gate + attention + 2 * tokens * dim * hidden


def _stem_macs(model: SwinTransformer, height: int, width: int, norm_macs: int) -> float:
    """Patch embedding (conv + norm) or the conv stem, from the stage-1 grid (height, width)."""
    cfg = model.cfg
    if isinstance(model.patch_embed, ConvStem):
        half = model.patch_embed.conv1.out_channels
        first = (2 * height) * (2 * width) * half * (cfg.in_chans * 9 + norm_macs)
        return first + height * width * cfg.embed_dim * (half * 9 + norm_macs)
    return height * width * cfg.embed_dim * (cfg.in_chans * cfg.patch_size ** 2 + norm_macs)


def _semantic_stage_macs(stage: SemanticStage, height: int, width: int, dim: int, *, name: str, norm_macs: int,
                         duplicated_kv: bool) -> dict[str, float]:
    """MACs of each block of an STViT-R stage 3 on an (height, width) map (see the module docstring)."""
    grid = SemanticGrid.build(height, width, window=stage.window, cfg=stage.cfg, device=torch.device("cpu"))
    tokens = height * width
    padded = grid.windows.padded[0] * grid.windows.padded[1]
    windows, per_window = grid.num_windows, grid.tokens ** 2
    semantic = grid.shape[0] * grid.shape[1]

    def attention(queries: int, keys: int, groups: int, kv_rows: int, key_norm_rows: int) -> float:
        """q, proj on the queries; K/V (and their norm, where not the queries') on kv_rows; QK^T, AV."""
        if duplicated_kv:  # the authors' code norms and projects every gathered copy of a key
            kv_rows, key_norm_rows = groups * keys, groups * keys if key_norm_rows else 0
        return (2 * queries * dim * dim + 2 * kv_rows * dim * dim + 2 * queries * keys * dim
                + norm_macs * key_norm_rows * dim)

    def query_norm_and_mlp(block, rows: int) -> float:  # norm1 of the queries, norm2 and MLP on the same rows
        return 2 * norm_macs * rows * dim + 2 * rows * dim * block.mlp.fc1.out_features

    macs = {}
    for index, block in enumerate(stage.blocks):
        if isinstance(block, SwinBlock):
            count = _swin_block_macs(block, height, width, stage.window, dim, norm_macs)
        elif isinstance(block, SemanticTokenGeneration):
            pooled = per_window if block.pooled_keys else 0
            count = attention(semantic, grid.stgm1_index.shape[1] + pooled, windows,
                              tokens + (semantic if pooled else 0), tokens)
        elif isinstance(block, SemanticTokenRefinement):
            count = (attention(semantic, semantic + tokens, 1, semantic + tokens, tokens) if block.global_keys
                     else attention(semantic, grid.stgm2_index.shape[1], windows, tokens, tokens))
        elif isinstance(block, SemanticSelfAttention):
            count = (attention(semantic, per_window, windows, semantic, 0) if block.local
                     else attention(semantic, semantic, 1, semantic, 0))
        elif isinstance(block, SemanticRecovery):
            count = (attention(tokens, semantic, 1, semantic, semantic) if block.global_keys
                     else attention(padded, grid.restore_index.shape[1], windows, semantic, semantic))
        else:
            raise TypeError(f"no FLOPs formula for {type(block).__name__}")
        if not isinstance(block, SwinBlock):
            count += query_norm_and_mlp(block, tokens if isinstance(block, SemanticRecovery) else semantic)
        macs[f"{name}.blocks.{index}"] = count
    return macs


@torch.no_grad()
def count_flops(model: SwinTransformer, images_or_output: Tensor | FeatureOutput, *,
                image_sizes: Sequence[tuple[int, int]] | None = None, norm_macs: int = 1,
                duplicated_kv: bool = False) -> FlopsReport:
    """MACs per image of ``model`` on a batch (run here if ``images_or_output`` is a tensor): the mean
    over its images.

    ``image_sizes``: each image's own input size (h, w) in pixels, the one it is fed at alone (a
    detector's crop, not the batch's padded canvas). Each image is then counted on its own grids, its
    SPA blocks on the tokens it placed there, so the figure does not depend on the batch an image
    came in. None: every image at the batch's size. ``norm_macs``: MACs per normalised element
    (Swin: 1, fvcore: 5); ``duplicated_kv``: count STViT-R's keys as the authors' code computes them
    (see the module docstring).
    """
    output = images_or_output
    if isinstance(output, Tensor):
        output = model.forward_features(output)
    batch = output.features[0].shape[0]
    batch_grids = [tuple(f.shape[-2:]) for f in output.features]
    own = None if image_sizes is None else \
        [[(-(-h // stride), -(-w // stride)) for stride in model.strides] for h, w in image_sizes]
    containers = _image_containers(model, output, batch_grids, own)
    per_module: dict[str, float] = {}
    counted: dict[tuple, dict[str, float]] = {}
    for index in range(batch):
        grids = batch_grids if own is None else own[index]
        key = (tuple(grids), tuple(blocks[index] for blocks in containers))
        if key not in counted:
            counted[key] = _image_macs(model, grids, key[1], norm_macs=norm_macs, duplicated_kv=duplicated_kv)
        for name, macs in counted[key].items():
            per_module[name] = per_module.get(name, 0.0) + macs / batch
    return FlopsReport(per_module, batch)


def _image_containers(model: SwinTransformer, output: FeatureOutput, batch_grids: list[tuple[int, int]],
                      own: list[list[tuple[int, int]]] | None) -> list[list[float]]:
    """Containers each image's tokens fill in each SPA block: one list per block, one entry per image.

    Without ``own`` grids (per stage, per image), an image's placed tokens (the batch-wide layout: the
    batch's containers shared out); with them, the tokens it placed inside its own grid, and for the
    "all" selector its own windows (what Swin computes, padding included).
    """
    sites = [(stage_index, stage.window, block) for stage_index, stage in enumerate(model.stages)
             for block in stage.blocks if isinstance(block, SpaBlock)]
    batch = output.features[0].shape[0]
    if own is not None and model.selector.keeps_padding:   # "all": each image's own windows, padding included
        return [[-(-n // s.plan.container_len) if s.plan.per_image else n / s.plan.container_len
                 for n in (_padded_tokens(*grids[stage_index], window) for grids in own)]
                for (stage_index, window, _), s in zip(sites, output.blocks)]
    counts: list[torch.Tensor] = []   # per block, read in one transfer at the end
    inside_of: dict[tuple[int, bool], torch.Tensor] = {}   # tokens inside each image's own grid, per stage grid
    for (stage_index, window, block), selection in zip(sites, output.blocks):
        plan, length = selection.plan, selection.plan.container_len
        if own is None:
            counts.append((plan.placed + length - 1) // length if plan.per_image
                          else plan.containers_used.double().div(batch).expand(batch))
            continue
        if (stage_index, block.shifted) not in inside_of:
            height, width = batch_grids[stage_index]
            device = plan.token_slot.device
            grid = WindowGrid.cached(height, width, window=window, shift=window // 2 if block.shifted else 0,
                                     device=device)
            sizes = torch.tensor([grids[stage_index] for grids in own], device=device)
            rows, cols = grid.token_pixel // width, grid.token_pixel % width
            inside_of[stage_index, block.shifted] = grid.token_is_real & (rows < sizes[:, :1]) & (cols < sizes[:, 1:])
        placed = ((plan.token_slot < plan.num_slots).view(batch, -1) & inside_of[stage_index, block.shifted]).sum(1)
        counts.append((placed + length - 1) // length if plan.per_image else placed / length)
    return torch.stack([c.double() for c in counts]).tolist() if counts else []


def _image_macs(model: SwinTransformer, grids_hw: Sequence[tuple[int, int]], containers: Sequence[float], *,
                norm_macs: int, duplicated_kv: bool) -> dict[str, float]:
    """MACs of one image per module, on its stage grids, its SPA blocks filling ``containers``."""
    containers = iter(containers)
    uses_gate = model.selector.uses_gate
    macs: dict[str, float] = {}
    height, width = grids_hw[0]
    macs["patch_embed"] = _stem_macs(model, height, width, norm_macs)
    for index, (stage, (height, width), dim) in enumerate(zip(model.stages, grids_hw, model.feature_channels)):
        name = f"stages.{index}"
        if index > 0:
            macs[f"{name}.downsample"] = height * width * (norm_macs * 4 * (dim // 2) + 4 * (dim // 2) * dim)
        if isinstance(stage, SemanticStage):
            macs.update(_semantic_stage_macs(stage, height, width, dim, name=name, norm_macs=norm_macs,
                                             duplicated_kv=duplicated_kv))
            continue
        if stage.entry_gate is not None and uses_gate:
            prev_h, prev_w = grids_hw[index - 1]
            macs[f"{name}.entry_gate"] = 2 * prev_h * prev_w * (dim // 2)
        for j, block in enumerate(stage.blocks):
            macs[f"{name}.blocks.{j}"] = (
                _spa_block_macs(block, height * width, dim, next(containers), uses_gate, norm_macs)
                if isinstance(block, SpaBlock) else
                _swin_block_macs(block, height, width, stage.window, dim, norm_macs))
    height, width = grids_hw[-1]
    macs["norm"] = norm_macs * height * width * model.feature_channels[-1]
    if model.num_classes > 0:
        macs["head"] = model.feature_channels[-1] * model.num_classes
    return macs
