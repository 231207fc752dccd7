"""Every registered model (``spa_model.list_models()``), as timm's tests/test_models.py goes over its registry.

Each model is built at its registered size on the meta device (the architecture without weights; parameter
counts against timm's Swin), then for real at a small width that keeps its own depths, heads, windows and
SPA stages: forward, backward and FLOPs (``count_flops``) on a small batch of an odd size.
"""
from __future__ import annotations

import math

import pytest
import torch

import spa_model

MODELS = spa_model.list_models()
# timm's swin_{tiny,small,base}_patch4_window7_224 with the 1000-class head
TIMM_SWIN_PARAMS = {"tiny": 28_288_354, "small": 49_606_258, "base": 87_768_224}
BATCH, HEIGHT, WIDTH = 2, 64, 72      # not a multiple of the windows: padded windows and partial containers
LABEL_STRIDES = (4, 8, 16, 32)        # every stride a gate can read


def _params(model: torch.nn.Module, where=lambda name: True) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if where(name))


def _meta(name: str, **overrides) -> torch.nn.Module:
    with torch.device("meta"):
        return spa_model.create_model(name, **overrides)


def test_every_family_and_size_is_registered():
    assert {f"{family}_{size}" for family in ("swin", "spt", "stvit_r") for size in TIMM_SWIN_PARAMS} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_registered_size(name):
    """Swin as timm counts it; SPT is that Swin plus its gates; STViT-R is that Swin outside the stem and stage 3."""
    family, size = name.rsplit("_", 1)
    model = _meta(name, num_classes=1000)
    if family == "swin":
        assert _params(model) == TIMM_SWIN_PARAMS[size]
    elif family == "spt":
        gates = _params(model, lambda n: "gate" in n)
        assert gates > 0 and _params(model) - gates == TIMM_SWIN_PARAMS[size]
    else:
        swin = _meta(f"swin_{size}", num_classes=1000)
        shared = lambda n: not n.startswith(("patch_embed.", "stages.2.blocks."))  # noqa: E731
        assert _params(model, shared) == _params(swin, shared)
        assert len(model.stages[2].blocks) == swin.cfg.depths[2]


@pytest.fixture(params=MODELS)
def small_model(request) -> tuple[str, torch.nn.Module]:
    """The registered model at 8 channels per head (its first stage's heads set the width)."""
    heads = _meta(request.param).cfg.num_heads
    torch.manual_seed(0)
    return request.param, spa_model.create_model(request.param, num_classes=5, embed_dim=8 * heads[0])


@pytest.mark.slow
def test_forward_backward_and_flops(small_model):
    name, model = small_model
    images = torch.randn(BATCH, 3, HEIGHT, WIDTH)
    labels = {s: (torch.rand(BATCH, math.ceil(HEIGHT / s), math.ceil(WIDTH / s)) < 0.3).float() for s in LABEL_STRIDES}

    output = model.train().forward_features(images, labels)
    grids = [(math.ceil(HEIGHT / 4 / 2 ** i), math.ceil(WIDTH / 4 / 2 ** i)) for i in range(4)]   # merging pads odd sides
    assert [tuple(f.shape) for f in output.features] == [(BATCH, c, *hw) for c, hw in zip(model.feature_channels, grids)]
    logits = model.forward_head(output)
    assert logits.shape == (BATCH, 5) and torch.isfinite(logits).all()
    loss = logits.logsumexp(-1).mean() + spa_model.selection_loss(output.scores, labels)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"{name}: no finite gradient for {missing[:5]}"
    assert bool(output.scores) == name.startswith("spt_")   # only SPT has gates

    report = spa_model.count_flops(model.eval(), images)
    blocks = [k for k in report.per_module if ".blocks." in k]
    assert len(blocks) == sum(model.cfg.depths), "a block without a FLOPs formula"
    assert math.isfinite(report.total) and all(v > 0 for v in report.per_module.values())
    assert report.batch_size == BATCH and report.per_module["head"] == model.feature_channels[-1] * 5
