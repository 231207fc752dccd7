"""configs/ (shipped as spa_train.configs): every paper recipe resolves to a valid TrainConfig and model,
every setting says where it comes from, and `spa-train --config NAME --shards ... --val-shards ...` runs one."""
from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

import pytest
import torch

import spa_model
from spa_common.errors import SpaError
from spa_train.config import SHIPPED_CONFIGS, read_config_file, resolve_config, shipped_configs
from spa_train.tasks import backbone_options

REPO = Path(__file__).resolve().parents[1]
CONFIGS = shipped_configs()
SOURCE = re.compile(r"#.*\[(paper|swin-det|swin-cls|ours)\]")


def _text(name: str) -> str:
    return importlib.resources.files(SHIPPED_CONFIGS).joinpath(*f"{name}.yaml".split("/")).read_text()


def test_every_paper_table_has_its_recipes():
    assert CONFIGS == sorted(p.relative_to(REPO / "configs").with_suffix("").as_posix()
                             for p in (REPO / "configs").glob("*/*.yaml"))   # every file of configs/ ships
    tables = " ".join(_text(name).splitlines()[0] for name in CONFIGS)
    assert all(f"Table {n}" in tables for n in range(1, 8)), tables
    assert {name.split("/")[0] for name in CONFIGS} == {"bdd", "bdd-s", "coco-s", "voc-s", "in-s", "tiny-in"}


def test_a_config_is_read_by_name_or_as_a_file(tmp_path):
    assert read_config_file("coco-s/spt_tiny") == read_config_file("coco-s/spt_tiny.yaml") \
        == read_config_file(REPO / "configs" / "coco-s" / "spt_tiny.yaml")
    (tmp_path / "coco-s").mkdir()
    (tmp_path / "coco-s" / "spt_tiny.yaml").write_text("epochs: 3\n")   # a file of one's own comes first
    assert read_config_file(tmp_path / "coco-s" / "spt_tiny.yaml") == {"epochs": 3}
    with pytest.raises(SpaError, match="coco-s/spt_huge: config file not found"):
        read_config_file("coco-s/spt_huge")


@pytest.mark.parametrize("name", CONFIGS)
def test_config_resolves_and_says_where_each_setting_comes_from(name):
    config = resolve_config(name, shards="subsets/x")
    text = _text(name)
    assert f"spa-train --config {name} --shards subsets/{name.split('/')[0]}-train" in text
    for line in text.splitlines():
        if re.match(r"\s*\w+:", line) and not line.startswith("model_args:"):
            assert SOURCE.search(line), f"{name}: no source on {line!r}"
    with torch.device("meta"):  # the architecture and its options, no weights
        model = spa_model.create_model(config.model, **backbone_options(config.selector, config.model_args))
    assert (model.cfg.spa is not None) == config.model.startswith("spt")


def test_spa_train_runs_a_paper_config(spa_train_cli, coco_s_demo, tmp_path):
    # the COCO-S recipe as given (36-epoch step schedule, multi-scale, threshold 0.01), shrunk to run here
    args = ["--config", "coco-s/spt_tiny",
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
