"""configs/: every paper recipe resolves to a valid TrainConfig and model, every setting says where it
comes from, and `spa-train --config FILE --shards ... --val-shards ...` runs one."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import spa_model
from spa_train.config import resolve_config
from spa_train.tasks import backbone_options

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*/*.yaml"))
SOURCE = re.compile(r"#.*\[(paper|swin-det|swin-cls|ours)\]")


def test_every_paper_table_has_its_recipes():
    tables = " ".join(path.read_text().splitlines()[0] for path in CONFIGS)
    assert all(f"Table {n}" in tables for n in range(1, 8)), tables
    assert {p.parent.name for p in CONFIGS} == {"bdd", "bdd-s", "coco-s", "voc-s", "in-s", "tiny-in"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_resolves_and_says_where_each_setting_comes_from(path):
    config = resolve_config(path, shards="subsets/x")
    relative = path.relative_to(path.parents[2]).as_posix()
    assert f"spa-train --config {relative} --shards subsets/{path.parent.name}-train" in path.read_text()
    for line in path.read_text().splitlines():
        if re.match(r"\s*\w+:", line) and not line.startswith("model_args:"):
            assert SOURCE.search(line), f"{path.name}: no source on {line!r}"
    with torch.device("meta"):  # the architecture and its options, no weights
        model = spa_model.create_model(config.model, **backbone_options(config.selector, config.model_args))
    assert (model.cfg.spa is not None) == config.model.startswith("spt")


def test_spa_train_runs_a_paper_config(spa_train_cli, coco_s_demo, tmp_path):
    # the COCO-S recipe as given (36-epoch step schedule, multi-scale, threshold 0.01), shrunk to run here
    args = ["--config", str(next(p for p in CONFIGS if p.parent.name == "coco-s" and p.stem == "spt_tiny")),
            "--shards", str(coco_s_demo), "--val-shards", str(coco_s_demo), "--out", str(tmp_path / "run"),
            "pretrained=none", "model_args.embed_dim=8", "model_args.depths=[1, 1, 2, 2]",
            "model_args.num_heads=[1, 1, 2, 2]", "multiscale=[48, 64]", "fpn_channels=16", "mask_head_channels=8",
            "max_steps=2", "num_workers=0", "progress=false", "curves=false"]
    code, _, err = spa_train_cli(args)
    assert code == 0, err
    saved = resolve_config(tmp_path / "run" / "config.yaml")
    assert (saved.lr_schedule, saved.lr_steps, saved.multiscale) == ("step", (27, 33), (48, 64))
    assert saved.model_args == {"drop_path_rate": 0.2, "threshold": 0.01, "embed_dim": 8, "depths": [1, 1, 2, 2],
                                "num_heads": [1, 1, 2, 2]}
