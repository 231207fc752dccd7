"""The model contract: what a backbone declares it consumes (labels, strides, unused parameters,
static shapes, weight-decay exemptions), checked against what its forward and backward actually do;
the selector registry; and the trainer asking the contract (optimizer groups, stride check)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import spa_model
from spa_common.errors import SpaError
from spa_model.models import SpaConfig
from spa_model.selection import SELECTORS
from spa_train.config import TrainConfig, resolve_config
from spa_train.engine import check_label_strides
from spa_train.optim import build_optimizer
from spa_train.tasks import Classifier, backbone_options

SMALL = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
SIZE = (40, 56)   # grids 10x14, 5x7, 3x4, 2x2


def _labels(batch: int, strides=(4, 8, 16, 32)) -> dict[int, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {s: (torch.rand(batch, -(-SIZE[0] // s), -(-SIZE[1] // s), generator=generator) > 0.5).float()
            for s in strides}


MODELS = {"swin": ("swin_tiny", {}), "spt_gumbel": ("spt_tiny", {}), "spt_topk": ("spt_tiny", {"selector": "topk"}),
          "spt_gt": ("spt_tiny", {"selector": "gt"}), "spt_all": ("spt_tiny", {"selector": "all"}),
          "spt_blocks": ("spt_tiny", {"spa_blocks": (3, 5, 7)}), "stvit": ("stvit_r_tiny", {"depths": (2, 2, 6, 2)})}


@pytest.mark.parametrize("case", sorted(MODELS))
def test_declared_unused_parameters_and_label_strides_are_what_a_training_step_does(case):
    name, overrides = MODELS[case]
    torch.manual_seed(0)
    model = spa_model.create_model(name, **{**SMALL, **overrides}).train()
    contract = model.contract()
    labels = _labels(2)
    out = model.forward_features(torch.randn(2, 3, *SIZE), labels if contract.needs_labels else None)
    # the selection loss reads exactly the declared strides
    assert tuple(sorted(s for s, maps in out.scores.items() if maps)) == contract.label_strides
    loss = sum(f.float().mean() for f in out.features) + spa_model.selection_loss(
        out.scores, {s: labels[s] for s in contract.label_strides})
    loss.backward()
    without_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert bool(without_grad) == contract.unused_parameters, without_grad
    # FeatureOutput.blocks[i] comes from spa_blocks[i]: its grid is the declared stride's
    assert len(out.blocks) == len(contract.spa_blocks)
    for site, block in zip(contract.spa_blocks, out.blocks):
        assert block.grid_tokens == -(-SIZE[0] // site.stride) * -(-SIZE[1] // site.stride)


def _meta_model(name, **overrides):
    """Declarations need only the architecture: built on the meta device (no init cost)."""
    with torch.device("meta"):
        return spa_model.create_model(name, **overrides)


def test_spt_tiny_declares_its_spa_blocks_stages_and_strides():
    contract = _meta_model("spt_tiny").contract()
    assert [(s.block, s.stage, s.stride) for s in contract.spa_blocks] == \
        [(b, 2, 16) for b in range(4, 10)] + [(10, 3, 32), (11, 3, 32)]
    assert contract.label_strides == (8, 16, 32) and contract.static_shapes and not contract.needs_labels
    picked = _meta_model("spt_tiny", spa_blocks=(5, 11)).contract()
    assert [(s.block, s.stage, s.stride) for s in picked.spa_blocks] == [(5, 2, 16), (11, 3, 32)]
    assert not _meta_model("spt_tiny", capacity="exact").contract().static_shapes
    assert _meta_model("spt_tiny", selector="gt").contract().needs_labels
    for name in ("swin_tiny", "stvit_r_tiny"):
        swin = _meta_model(name).contract()
        assert (swin.label_strides, swin.spa_blocks, swin.needs_labels, swin.static_shapes) == ((), (), False, True)


def test_the_oracle_needs_its_labels():
    model = spa_model.create_model("spt_tiny", selector="gt", **SMALL).eval()
    with pytest.raises(ValueError, match="needs select_labels"):
        model.forward_features(torch.randn(1, 3, *SIZE))


def test_every_selector_is_built_from_the_spa_config_fields_of_its_settings():
    assert set(SELECTORS) == {"gumbel", "topk", "gt", "all"}
    settings = {"threshold": 0.3, "tau": 2.0, "stochastic_eval": True, "keep_ratio": 0.25}
    for name, cls in SELECTORS.items():
        selector = _meta_model("spt_tiny", selector=name, **settings).selector
        assert type(selector) is cls
        for field, value in vars(selector).items():
            assert value == settings[field], (name, field)
    with pytest.raises(ValueError, match="unknown selector 'spa'; expected one of gumbel, topk, gt, all"):
        SpaConfig(selector="spa")


def test_no_weight_decay_names_every_relative_position_table_and_the_optimizer_asks():
    model = spa_model.create_model("spt_tiny", **SMALL)
    tables = {n for n, _ in model.named_parameters() if "relative_position_bias_table" in n}
    assert model.no_weight_decay() == tables and len(tables) == sum(SMALL["depths"])
    task_model = Classifier(spa_model.create_model("spt_tiny", num_classes=3, **SMALL), loss_fn=None)
    optimizer = build_optimizer(task_model, TrainConfig(weight_decay=0.05))
    decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, param in task_model.named_parameters():
        exempt = param.ndim <= 1 or "relative_position_bias_table" in name
        assert (id(param) not in decay) == exempt, name


def test_selection_loss_names_a_stride_it_has_no_labels_for():
    model = spa_model.create_model("spt_tiny", **SMALL).eval()
    out = model.forward_features(torch.randn(1, 3, *SIZE))
    with pytest.raises(ValueError, match="gates score at stride 8 but the selection labels are at strides 16, 32"):
        spa_model.selection_loss(out.scores, _labels(1, (16, 32)))


def test_shards_without_a_stride_the_model_reads_are_refused_naming_both():
    shards = SimpleNamespace(strides=[16, 32])
    spt = _meta_model("spt_tiny").contract()
    with pytest.raises(SpaError, match=r"^s/: shards labelled at strides 16,32, but model 'spt_tiny' reads selection "
                                       r"labels at 8,16,32 \(none at 8\); label the subset again at 8,16,32$"):
        check_label_strides(spt, shards, path="s/", model="spt_tiny")
    check_label_strides(_meta_model("swin_tiny").contract(), shards, path="s/", model="swin_tiny")
    check_label_strides(_meta_model("spt_tiny", selector="all").contract(), shards, path="s/", model="x")


def test_one_door_for_the_selector():
    assert backbone_options(None, {"tau": 2.0}) == {"tau": 2.0}
    assert backbone_options("gt", {}) == {"selector": "gt"}
    with pytest.raises(SpaError, match=r"model_args.selector: the selector has its own key, selector "
                                       r"\(gumbel, topk, gt, all\)"):
        backbone_options(None, {"selector": "gt"})
    # the trainer's former name of the paper's selector, in configs saved before: the model's own
    assert resolve_config(None, ["selector=spa"]).selector is None
    with pytest.raises(SpaError, match="config: selector 'gumble' is not one of gumbel, topk, gt, all"):
        resolve_config(None, ["selector=gumble"])


def test_the_trainer_has_one_task_per_task_a_subset_can_be_labelled_for():
    from spa_data.recipes import TASKS as DATA_TASKS
    from spa_train.tasks import TASKS

    assert sorted(TASKS) == sorted(DATA_TASKS) and all(TASKS[name].name == name for name in TASKS)
