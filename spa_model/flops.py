"""Analytic FLOPs counter in Swin's convention: multiply-accumulates (MACs), norms included.

Per module, as Swin's ``flops()`` methods (microsoft/Swin-Transformer) count them:

* patch embedding: H4 W4 C (3 p^2) + norm H4 W4 C;
* Swin block on an (H, W) map padded to (Hp, Wp) = N_p tokens: norm1 HWC, qkv N_p C 3C, attention
  q k^T and attn v 2 N_p M^2 C, proj N_p C^2, MLP 2 HWC (r C), norm2 HWC. Attention is counted on the
  padded windows because they are computed (at 224x224 nothing is padded);
* SPA block: norm1 HWC, gate HWC (not with the "all" selector, which skips it), then from the
  containers the batch actually used (``FeatureOutput.containers``): qkv and proj on containers x L
  slots (the packed op projects every slot of a used container, padding included), attention
  2 containers L^2 C; MLP and norm2 on all tokens. Sigmoid gating, softmax, bias and masks are not
  counted (Swin counts none of its element-wise ops except norms);
* patch merging: norm 4C H' W' + reduction H' W' 4C 2C; final norm; head 8C x classes.

Counts are per image: a batch's container counts are divided by the batch size (so the report is
the average image's MACs). Swin-T at 224x224 with the 1000-class head: 4.49 G (Swin reports 4.5 G).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .layers import SwinBlock, WindowGrid
from .models import FeatureOutput, SpaBlock, SwinTransformer

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


def _swin_block_macs(block: SwinBlock, grid: WindowGrid, dim: int) -> float:
    tokens = grid.height * grid.width
    padded = grid.padded[0] * grid.padded[1]
    length = grid.window ** 2
    hidden = block.mlp.fc1.out_features
    attention = padded * dim * 3 * dim + 2 * padded * length * dim + padded * dim * dim
    return 2 * tokens * dim + attention + 2 * tokens * dim * hidden


def _spa_block_macs(block: SpaBlock, grid: WindowGrid, dim: int, containers: float, uses_gate: bool) -> float:
    tokens = grid.height * grid.width
    slots = containers * block.container_len
    hidden = block.mlp.fc1.out_features
    attention = slots * dim * 4 * dim + 2 * slots * block.container_len * dim
    gate = tokens * dim if uses_gate else 0
    return 2 * tokens * dim + gate + attention + 2 * tokens * dim * hidden


@torch.no_grad()
def count_flops(model: SwinTransformer, images_or_output: Tensor | FeatureOutput) -> FlopsReport:
    """MACs per image of ``model`` on a batch (run here if ``images_or_output`` is a tensor)."""
    output = images_or_output
    if isinstance(output, Tensor):
        output = model.forward_features(output)
    batch = output.features[0].shape[0]
    grids_hw = [tuple(f.shape[-2:]) for f in output.features]
    containers = iter([float(c) / batch for c in output.containers])
    cfg = model.cfg
    uses_gate = model.selector.uses_gate
    macs: dict[str, float] = {}
    height, width = grids_hw[0]
    macs["patch_embed"] = height * width * cfg.embed_dim * (cfg.in_chans * cfg.patch_size ** 2 + 1)
    for index, (stage, (height, width), dim) in enumerate(zip(model.stages, grids_hw, model.feature_channels)):
        name = f"stages.{index}"
        if index > 0:
            macs[f"{name}.downsample"] = height * width * (4 * (dim // 2) + 4 * (dim // 2) * dim)
        if stage.entry_gate is not None and uses_gate:
            prev_h, prev_w = grids_hw[index - 1]
            macs[f"{name}.entry_gate"] = 2 * prev_h * prev_w * (dim // 2)
        grid, shifted_grid = (WindowGrid.build(height, width, window=stage.window, shift=s, device=torch.device("cpu"))
                              for s in (0, stage.window // 2))
        for j, block in enumerate(stage.blocks):
            block_grid = shifted_grid if block.shifted else grid
            macs[f"{name}.blocks.{j}"] = (
                _spa_block_macs(block, block_grid, dim, next(containers), uses_gate) if isinstance(block, SpaBlock)
                else _swin_block_macs(block, block_grid, dim))
    height, width = grids_hw[-1]
    macs["norm"] = height * width * model.feature_channels[-1]
    if model.num_classes > 0:
        macs["head"] = model.feature_channels[-1] * model.num_classes
    return FlopsReport(macs, batch)
