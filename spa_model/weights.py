"""Load ImageNet Swin weights (torchvision or official microsoft/Swin-Transformer layout).

Both layouts map onto this package's names (``patch_embed``, ``stages.i.downsample``,
``stages.i.blocks.j.{norm1,attn.qkv,attn.proj,attn.relative_position_bias_table,norm2,mlp.fc1,
mlp.fc2}``, ``norm``, ``head``). The official layout puts patch merging at the END of stage i
(``layers.i.downsample``); here it opens stage i+1. Buffers (``relative_position_index``,
``attn_mask``) are dropped: they are rebuilt. The head is loaded only when its shape matches
(``num_classes`` equal), so a fine-tuning model starts with a fresh head. SPA gates are not in any
Swin checkpoint and keep their initialisation.
"""
from __future__ import annotations

import re
from typing import Mapping

from torch import Tensor, nn

from spa_data.errors import SpaError

__all__ = ["load_swin_state_dict", "convert_swin_state_dict"]

_TORCHVISION_RULES = [
    (r"features\.0\.0\.", lambda m: "patch_embed.proj."),
    (r"features\.0\.2\.", lambda m: "patch_embed.norm."),
    # features.(2i+1).j: blocks of stage i; features.(2i): patch merging opening stage i.
    (r"features\.(\d+)\.(\d+)\.", lambda m: f"stages.{(int(m[1]) - 1) // 2}.blocks.{m[2]}."),
    (r"features\.(\d+)\.", lambda m: f"stages.{int(m[1]) // 2}.downsample."),
]
_OFFICIAL_RULES = [
    (r"layers\.(\d+)\.blocks\.", lambda m: f"stages.{m[1]}.blocks."),
    (r"layers\.(\d+)\.downsample\.", lambda m: f"stages.{int(m[1]) + 1}.downsample."),
]
_MLP_RULES = [(r"\.mlp\.0\.", lambda m: ".mlp.fc1."), (r"\.mlp\.3\.", lambda m: ".mlp.fc2.")]
_BUFFERS = ("relative_position_index", "attn_mask")


def _rename(key: str, rules) -> str:
    for pattern, target in rules:
        match = re.match(pattern, key) if not pattern.startswith(r"\.") else re.search(pattern, key)
        if match:
            return key[: match.start()] + target(match) + key[match.end():]
    return key


def convert_swin_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a torchvision or official Swin state dict to this package's keys (buffers dropped)."""
    if "model" in state_dict and not isinstance(state_dict["model"], Tensor):
        state_dict = state_dict["model"]  # official checkpoints wrap the weights
    rules = _TORCHVISION_RULES if any(k.startswith("features.") for k in state_dict) else _OFFICIAL_RULES
    converted = {}
    for key, value in state_dict.items():
        if key.endswith(_BUFFERS):
            continue
        converted[_rename(_rename(key, rules), _MLP_RULES)] = value
    return converted


def load_swin_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]):
    """Load Swin weights into a Swin or SPT model; returns torch's (missing, unexpected) result.

    Raises SpaError when a key has no place in the model or a shape differs (other than the head),
    or when any weight other than the SPA gates and the head stays unloaded.
    """
    converted = convert_swin_state_dict(state_dict)
    own = model.state_dict()
    for key in [k for k in converted if k.startswith("head.")]:
        if key not in own or own[key].shape != converted[key].shape:
            del converted[key]
    unexpected = sorted(set(converted) - set(own))
    if unexpected:
        raise SpaError(f"Swin state dict: {len(unexpected)} keys have no place in the model, e.g. {unexpected[0]}")
    for key, value in converted.items():
        if own[key].shape != value.shape:
            raise SpaError(f"Swin state dict: {key} has shape {tuple(value.shape)}, "
                           f"the model expects {tuple(own[key].shape)} (another Swin size or window?)")
    result = model.load_state_dict(converted, strict=False)
    unloaded = [k for k in result.missing_keys
                if not (k.startswith("head.") or ".gate." in k or "entry_gate" in k or ".budget." in k)]
    if unloaded:
        raise SpaError(f"Swin state dict: {len(unloaded)} model weights missing, e.g. {unloaded[0]}")
    return result
