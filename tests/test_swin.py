"""Our Swin against torchvision's swin_t (same weights), and Swin weight loading."""
from __future__ import annotations

import pytest
import torch
import torchvision

import spa_model
from spa_common.errors import SpaError


SMALL = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


@pytest.fixture(scope="module")
def torchvision_swin_t():
    torch.manual_seed(0)
    return torchvision.models.swin_t(weights=None).eval()


@pytest.fixture(scope="module")
def torchvision_small():
    """torchvision's SwinTransformer class at a small size (same code path as swin_t, CPU-cheap)."""
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8],
                           window_size=[7, 7], num_classes=10).eval()


def _torchvision_features(model, images):
    """Stage outputs of torchvision's Swin (NCHW), the last one through the final norm."""
    outputs, x = [], images
    for index, layer in enumerate(model.features):
        x = layer(x)
        if index in (1, 3, 5, 7):
            outputs.append(x)
    outputs[-1] = model.norm(outputs[-1])
    return [o.permute(0, 3, 1, 2) for o in outputs]


def _assert_matches(model, reference, images):
    with torch.no_grad():
        ours = model.forward_features(images)
        for got, want in zip(ours.features, _torchvision_features(reference, images)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)
        torch.testing.assert_close(model.forward_head(ours), reference(images), rtol=1e-5, atol=1e-5)
    assert ours.scores == {} and ours.select_ratios == []


def test_swin_tiny_matches_torchvision_swin_t(torchvision_swin_t):
    model = spa_model.create_model("swin_tiny", num_classes=1000).eval()
    model.load_swin_state_dict(torchvision_swin_t.state_dict())
    assert model.feature_channels == [96, 192, 384, 768] and model.strides == [4, 8, 16, 32]
    _assert_matches(model, torchvision_swin_t, torch.randn(1, 3, 224, 224))


@pytest.mark.parametrize("size", [(200, 264), (100, 132), (60, 36)])
def test_any_input_size_matches_torchvision(torchvision_small, size):
    """No map here is a multiple of the window. (100, 132): stage 3 is 7x9, shifted along W only;
    (200, 264): stage 4 is 7x9 likewise, stage 3 13x17 shifted in both; (60, 36): odd merges."""
    model = spa_model.create_model("swin_tiny", num_classes=10, **SMALL).eval()
    model.load_swin_state_dict(torchvision_small.state_dict())
    _assert_matches(model, torchvision_small, torch.randn(2, 3, *size))


def _official_layout(tv_state: dict, depths=(2, 2, 2, 2)) -> dict:
    """microsoft/Swin-Transformer key layout, written out by hand (independent of spa_model.weights)."""
    official = {
        "patch_embed.proj.weight": tv_state["features.0.0.weight"],
        "patch_embed.proj.bias": tv_state["features.0.0.bias"],
        "patch_embed.norm.weight": tv_state["features.0.2.weight"],
        "patch_embed.norm.bias": tv_state["features.0.2.bias"],
        "norm.weight": tv_state["norm.weight"], "norm.bias": tv_state["norm.bias"],
        "head.weight": tv_state["head.weight"], "head.bias": tv_state["head.bias"],
    }
    block_params = {"norm1": "norm1", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj",
                    "norm2": "norm2", "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.3"}
    for stage, depth in enumerate(depths):
        for block in range(depth):
            ours, theirs = f"layers.{stage}.blocks.{block}", f"features.{2 * stage + 1}.{block}"
            for name, tv_name in block_params.items():
                for kind in ("weight", "bias"):
                    official[f"{ours}.{name}.{kind}"] = tv_state[f"{theirs}.{tv_name}.{kind}"]
            official[f"{ours}.attn.relative_position_bias_table"] = tv_state[f"{theirs}.attn.relative_position_bias_table"]
            official[f"{ours}.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
            official[f"{ours}.attn_mask"] = torch.zeros(4, 49, 49)
        if stage < 3:  # the official layout merges patches at the END of a stage
            merge = f"features.{2 * stage + 2}"
            official[f"layers.{stage}.downsample.norm.weight"] = tv_state[f"{merge}.norm.weight"]
            official[f"layers.{stage}.downsample.norm.bias"] = tv_state[f"{merge}.norm.bias"]
            official[f"layers.{stage}.downsample.reduction.weight"] = tv_state[f"{merge}.reduction.weight"]
    return {"model": official}


def test_official_checkpoint_layout_loads(torchvision_small):
    model = spa_model.create_model("swin_tiny", num_classes=10, **SMALL).eval()
    model.load_swin_state_dict(_official_layout(torchvision_small.state_dict()))
    images = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(model(images), torchvision_small(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["swin_tiny", "spt_tiny"])
def test_head_is_optional_and_gates_start_fresh(torchvision_small, name):
    model = spa_model.create_model(name, num_classes=3, **SMALL)
    head_before = model.head.weight.clone()
    result = model.load_swin_state_dict(torchvision_small.state_dict())
    assert torch.equal(model.head.weight, head_before)  # the 10-class head is not loaded into 3 classes
    assert all(k.startswith("head.") or "gate" in k or ".budget." in k for k in result.missing_keys)
    torch.testing.assert_close(model.stages[2].blocks[1].attn.qkv.weight,
                               torchvision_small.features[5][1].attn.qkv.weight)
    spa_model.create_model(name, **SMALL).load_swin_state_dict(torchvision_small.state_dict())  # no head


def test_bad_state_dict_is_one_clear_error(torchvision_small):
    state = dict(torchvision_small.state_dict())
    state["features.5.0.attn.qkv.weight"] = state["features.5.0.attn.qkv.weight"][:10]
    with pytest.raises(SpaError, match="stages.2.blocks.0.attn.qkv.weight has shape"):
        spa_model.create_model("swin_tiny", **SMALL).load_swin_state_dict(state)
    del state["features.5.0.attn.qkv.weight"]
    with pytest.raises(SpaError, match="missing"):
        spa_model.create_model("swin_tiny", **SMALL).load_swin_state_dict(state)


def test_registry_and_overrides():
    assert {"swin_tiny", "swin_small", "swin_base", "spt_tiny", "spt_small", "spt_base"} <= set(spa_model.list_models())
    model = spa_model.create_model("spt_small", selector="topk", keep_ratio=0.25, container_len=64, embed_dim=16,
                                   num_heads=(1, 2, 4, 8))
    assert model.cfg.depths == (2, 2, 18, 2) and model.cfg.spa.keep_ratio == 0.25
    assert model.stages[2].blocks[0].container_len == 64
    with pytest.raises(TypeError, match="need an SPT"):
        spa_model.create_model("swin_tiny", threshold=0.1)
    with pytest.raises(TypeError, match="unknown model options"):
        spa_model.create_model("spt_tiny", windw=7)
    with pytest.raises(ValueError, match="unknown model"):
        spa_model.create_model("swin_huge")


@pytest.mark.gpu
def test_swin_bf16_autocast_matches_float32(torchvision_swin_t):
    model = spa_model.create_model("swin_tiny", num_classes=1000).cuda().eval()
    model.load_swin_state_dict(torchvision_swin_t.state_dict())
    images = torch.randn(4, 3, 200, 264, device="cuda")
    with torch.no_grad():
        want = model(images)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = model(images)
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).norm() / want.norm() < 3e-2
