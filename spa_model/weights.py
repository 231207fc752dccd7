"""Load ImageNet Swin weights (torchvision or official microsoft/Swin-Transformer layout).

Both layouts map onto this package's names (``patch_embed``, ``stages.i.downsample``,
``stages.i.blocks.j.{norm1,attn.qkv,attn.proj,attn.relative_position_bias_table,norm2,mlp.fc1,
mlp.fc2}``, ``norm``, ``head``). The official layout puts patch merging at the END of stage i
(``layers.i.downsample``); here it opens stage i+1. Buffers (``relative_position_index``,
``attn_mask``) are dropped: they are rebuilt. The head is loaded only when its shape matches
(``num_classes`` equal), so a fine-tuning model starts with a fresh head. SPA gates are not in any
Swin checkpoint and keep their initialisation.

``load_pretrained(model, source)`` is the training config's ``pretrained``: a torchvision weights
name (``Swin_T_Weights.IMAGENET1K_V1``, downloaded by torchvision into its cache) or a file (a
torchvision state dict, an official checkpoint with its ``model`` key, or a bare official state
dict), read with ``weights_only=True``; it reports what was loaded, left missing and ignored.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from spa_common.errors import SpaError

__all__ = ["load_swin_state_dict", "convert_swin_state_dict", "load_pretrained", "read_pretrained",
           "PretrainedReport"]

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
    """Load Swin weights into a Swin or SPT model; returns torch's (missing, unexpected) result,
    ``unexpected_keys`` being the checkpoint's head when the model has none or one of another size.

    Raises SpaError when a key has no place in the model or a shape differs (other than the head),
    or when any weight other than the SPA gates and the head stays unloaded.
    """
    converted = convert_swin_state_dict(state_dict)
    own = model.state_dict()
    left_out = [k for k in converted if k.startswith("head.") and (k not in own or own[k].shape != converted[k].shape)]
    for key in left_out:
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
    return result._replace(unexpected_keys=left_out)


@dataclass(frozen=True)
class PretrainedReport:
    """What ``load_pretrained`` did, in this package's key names."""

    source: str
    loaded: list[str]
    missing: list[str]      # model weights left as initialised (SPA gates, a head)
    unexpected: list[str]   # checkpoint weights not used (a head the model does not have)

    def lines(self) -> list[str]:
        return [f"pretrained {self.source}: loaded {len(self.loaded)} tensors: {_patterns(self.loaded)}",
                f"pretrained: missing (kept as initialised) {len(self.missing)}: {_patterns(self.missing)}",
                f"pretrained: unexpected (ignored) {len(self.unexpected)}: {_patterns(self.unexpected)}"]


def _patterns(keys: list[str], limit: int = 12) -> str:
    """Tensors by module, stage and block numbers folded to '*', counted: a line, not a listing."""
    modules = (re.sub(r"\.(weight|bias)$", "", k) for k in keys)
    counts = Counter(re.sub(r"\.\d+(?=\.|$)", ".*", m) for m in modules)
    shown = [f"{p} x{n}" if n > 1 else p for p, n in list(counts.items())[:limit]]
    more = len(counts) - limit
    return ", ".join(shown) + (f", ... ({more} more)" if more > 0 else "") if counts else "none"


def read_pretrained(source: str) -> Mapping[str, Tensor]:
    """A file's state dict, or a torchvision weights name's (downloaded by torchvision when not cached)."""
    path = Path(source).expanduser()
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a file that is not a plain state dict
            raise SpaError(f"pretrained {path}: not a weights file torch.load(weights_only=True) reads "
                           f"({type(e).__name__})") from None
        if not isinstance(state, Mapping):
            raise SpaError(f"pretrained {path}: holds a {type(state).__name__}, not a state dict")
        return state
    from torchvision.models import get_weight

    try:
        weights = get_weight(source)
    except (KeyError, ValueError):
        raise SpaError(f"pretrained {source!r}: no such file, and not a torchvision weights name "
                       "(e.g. Swin_T_Weights.IMAGENET1K_V1)") from None
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a bad hash a RuntimeError
        raise SpaError(f"pretrained {source}: could not get {weights.url} ({e}); download it where there "
                       "is a network and pass the file") from None


def load_pretrained(model: nn.Module, source: str) -> PretrainedReport:
    """Load ``source`` (see ``read_pretrained``) into a Swin or SPT backbone; SpaError on any mismatch."""
    state = read_pretrained(source)
    try:
        result = load_swin_state_dict(model, state)
    except SpaError as e:
        raise SpaError(f"pretrained {source}: {e}") from None
    loaded = [k for k in convert_swin_state_dict(state) if k not in result.unexpected_keys]
    # token budgets are the model's running state, not weights: no checkpoint of Swin has them
    missing = [k for k in result.missing_keys if ".budget." not in k]
    return PretrainedReport(source, loaded, missing, list(result.unexpected_keys))
