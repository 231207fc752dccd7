"""Weights for STViT-R: the authors' released checkpoints, and Swin weights for the shared parts.

The authors' layout (changsn/STViT-R, ImageNet: ``{"model": ...}``; changsn/STViT-R-Object-Detection,
mmdet: ``{"state_dict": {"backbone.<key>": ...}}``) is Swin's official layout (``layers.i.blocks.j``,
patch merging at the end of stage i) with STViT blocks named ``attn.q``, ``attn.kv``,
``layer_scale_1/2`` (this package uses the same names) and a conv stem
``patch_embed.proj.{0,2}.{c,bn}``. Detection checkpoints norm every output (``norm0..3``): ``norm3``
is this model's final ``norm``; the other three have no place (features 0-2 are the raw stage
outputs here, as for Swin) and are dropped, as are the neck and heads.
"""
from __future__ import annotations

import re
from typing import Mapping

from torch import Tensor, nn

from .stvit import StvitR
from .weights import convert_swin_state_dict, load_swin_state_dict

__all__ = ["convert_stvit_state_dict", "load_stvit_state_dict", "load_swin_into_stvit"]

_STEM = {"patch_embed.proj.0.c.": "patch_embed.conv1.", "patch_embed.proj.0.bn.": "patch_embed.bn1.",
         "patch_embed.proj.2.c.": "patch_embed.conv2.", "patch_embed.proj.2.bn.": "patch_embed.bn2."}
_DETECTION_ONLY_NORMS = ("norm0.", "norm1.", "norm2.")


def convert_stvit_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an authors' STViT-R state dict (ImageNet or mmdet checkpoint) to this package's keys."""
    for wrapper in ("state_dict", "model"):
        if wrapper in state_dict and not isinstance(state_dict[wrapper], Tensor):
            state_dict = state_dict[wrapper]
    if any(key.startswith("backbone.") for key in state_dict):
        state_dict = {key[len("backbone."):]: value for key, value in state_dict.items()
                      if key.startswith("backbone.") and not key.startswith(_DETECTION_ONLY_NORMS, len("backbone."))}
        state_dict = {("norm." + key[len("norm3."):] if key.startswith("norm3.") else key): value
                      for key, value in state_dict.items()}
    renamed = {}
    for key, value in state_dict.items():
        prefix = next((p for p in _STEM if key.startswith(p)), None)
        renamed[key if prefix is None else _STEM[prefix] + key[len(prefix):]] = value
    return convert_swin_state_dict(renamed)


def load_stvit_state_dict(model: StvitR, state_dict: Mapping[str, Tensor]):
    """Load the authors' STViT-R weights; the same checks as :func:`load_swin_state_dict` (one
    clear error for a key without a place, a shape that differs or a weight left unloaded; the
    head only where its shape matches)."""
    return load_swin_state_dict(model, convert_stvit_state_dict(state_dict))


def load_swin_into_stvit(model: StvitR, state_dict: Mapping[str, Tensor]):
    """Swin weights into what STViT-R shares with Swin: stages 1, 2, 4, the patch mergings, the Swin
    block opening each dumbbell unit, the final norm and head, and the patch embedding with
    ``stem='patch'``. Swin's other stage-3 blocks (replaced by the units) and, with the conv stem,
    its patch embedding are left out; every shared weight must load."""
    converted = convert_swin_state_dict(state_dict)

    def replaced(key: str) -> bool:  # a Swin block of stage 3 that a unit replaces, or the unused stem
        block = re.match(r"stages\.2\.blocks\.(\d+)\.", key)
        if block:
            return int(block[1]) % 6 != 0
        return key.startswith("patch_embed.") and model.stvit.stem == "conv"

    return load_swin_state_dict(_swin_parts(model), {k: v for k, v in converted.items() if not replaced(k)})


def _swin_parts(model: StvitR) -> nn.Module:
    """A module holding (not copying) the model's Swin parts under Swin's names."""
    stage3 = model.stages[2]
    blocks = nn.Module()
    for index in range(0, len(stage3.blocks), 6):
        blocks.add_module(str(index), stage3.blocks[index])
    shared_stage3 = nn.Module()
    shared_stage3.downsample = stage3.downsample
    shared_stage3.blocks = blocks
    parts = nn.Module()
    parts.stages = nn.ModuleList([model.stages[0], model.stages[1], shared_stage3, model.stages[3]])
    if model.stvit.stem == "patch":
        parts.patch_embed = model.patch_embed
    parts.norm = model.norm
    parts.head = model.head
    return parts
