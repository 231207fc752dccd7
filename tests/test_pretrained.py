"""``pretrained=``: torchvision and official Swin files into Swin and SPT, reported key by key; clear errors.

The files are made here from torchvision's own Swin class (no network), at a small size: the
key layout is swin_t's, the tensors fewer.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models.swin_transformer import SwinTransformer as TorchvisionSwin

import spa_model
from spa_common.errors import SpaError
from spa_model.weights import load_pretrained

TINY = dict(embed_dim=8, depths=[1, 1, 2, 2], num_heads=[1, 1, 2, 2])


@pytest.fixture(scope="module")
def swin_t_file(tmp_path_factory) -> Path:
    """A torchvision Swin state dict (1000-class head) of TINY's size."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "swin_t.pth"
    torch.save(TorchvisionSwin(patch_size=[4, 4], window_size=[7, 7], **TINY).state_dict(), path)
    return path


@pytest.mark.parametrize("wrap", [False, True], ids=["bare", "model-key"])
def test_torchvision_swin_t_file_loads_into_spt_tiny_gates_fresh(swin_t_file, tmp_path, wrap):
    source = swin_t_file
    if wrap:  # an official checkpoint keeps its weights under "model"
        source = tmp_path / "official.pth"
        torch.save({"model": torch.load(swin_t_file)}, source)
    model = spa_model.create_model("spt_tiny", **TINY)
    gates = {k: v.clone() for k, v in model.state_dict().items() if "gate" in k}
    report = load_pretrained(model, str(source))
    reference = torch.load(swin_t_file)
    assert torch.equal(model.patch_embed.proj.weight, reference["features.0.0.weight"])
    assert torch.equal(model.stages[3].blocks[1].attn.qkv.weight, reference["features.7.1.attn.qkv.weight"])
    assert torch.equal(model.stages[2].downsample.reduction.weight, reference["features.4.reduction.weight"])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in gates.items())   # untouched
    # every torchvision tensor but the buffers and the 1000-class head is loaded
    buffers = [k for k in reference if k.endswith("relative_position_index")]
    assert len(report.loaded) == len(reference) - len(buffers) - 2
    assert sorted(report.missing) == sorted(gates) and report.unexpected == ["head.weight", "head.bias"]
    lines = report.lines()
    assert len(lines) == 3 and all("\n" not in line for line in lines)
    assert f"loaded {len(report.loaded)} tensors" in lines[0]
    assert "stages.*.entry_gate.* x4, stages.*.blocks.*.gate x8" in lines[1] and "head x2" in lines[2]


def test_a_head_of_the_same_size_is_loaded(swin_t_file):
    report = load_pretrained(spa_model.create_model("swin_tiny", num_classes=1000, **TINY), str(swin_t_file))
    assert report.missing == [] and report.unexpected == []


@pytest.mark.parametrize("source, message", [
    ("Swin_T_Weights.NOPE", "not a torchvision weights name"),
    ("no/such/file.pth", "no such file"),
])
def test_bad_sources_are_one_clear_error(source, message):
    with pytest.raises(SpaError, match=message):
        load_pretrained(spa_model.create_model("swin_tiny", **TINY), source)


def test_a_file_that_is_no_state_dict_is_one_clear_error(tmp_path):
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(SpaError, match="notes.pth: not a weights file"):
        load_pretrained(spa_model.create_model("swin_tiny", **TINY), str(tmp_path / "notes.pth"))


def test_shape_mismatch_names_the_tensor(swin_t_file):
    with pytest.raises(SpaError, match=r"pretrained .*swin_t.pth: .*patch_embed.proj.weight has shape "
                                       r"\(8, 3, 4, 4\), the model expects \(16, 3, 4, 4\)"):
        load_pretrained(spa_model.create_model("swin_tiny", **{**TINY, "embed_dim": 16}), str(swin_t_file))


def test_spa_train_starts_a_detector_from_a_torchvision_file(spa_train_cli, coco_s_demo, swin_t_file, tmp_path):
    def args(run: str, model_args: dict) -> list[str]:
        return ["--shards", str(coco_s_demo), "--task", "det", "--model", "spt_tiny", "--out", str(tmp_path / run),
                f"model_args={model_args}", f"pretrained={swin_t_file}", "batch_size=2", "max_steps=1",
                "num_workers=0", "progress=false", "curves=false", "fpn_channels=16", "mask_head_channels=8"]

    code, out, err = spa_train_cli(args("run", TINY))
    assert code == 0, err
    assert f"pretrained {swin_t_file}: loaded 93 tensors" in out
    assert "missing (kept as initialised) 12: stages.*.entry_gate.* x4, stages.*.blocks.*.gate x8" in out
    assert "unexpected (ignored) 2: head x2" in out

    code, out, err = spa_train_cli(args("bad", {**TINY, "embed_dim": 16}))
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "patch_embed.proj.weight has shape (8, 3, 4, 4)" in err
