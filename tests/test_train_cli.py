"""`spa-train` end to end on demo shards, its config handling, and bad input (one line, exit 1)."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from spa_train.config import TrainConfig, resolve_config

TINY = "model_args={embed_dim: 8, depths: [1, 1, 2, 2], num_heads: [1, 1, 2, 2]}"


@pytest.fixture(scope="module")
def in_s(demo_shards) -> dict[str, Path]:
    """IN-S train and val subsets of the demo data with their shards (shared: copy to change), and the
    train subset labelled at strides 16 and 32 only."""
    return {"train": demo_shards("in-s", "train"), "val": demo_shards("in-s", "val"),
            "train-16-32": demo_shards("in-s", "train", "--scales", "16,32")}


def test_train_then_eval_end_to_end(spa_train_cli, in_s, tmp_path):
    run = tmp_path / "run"
    code, out, err = spa_train_cli(["--shards", str(in_s["train"]), "--val-shards", str(in_s["val"]),
                                      "--task", "cls", "--model", "spt_tiny", "--out", str(run), TINY,
                                      "batch_size=9", "epochs=1", "max_steps=3", "num_workers=0", "progress=false",
                                      "log_interval=2"])
    assert code == 0, err
    assert f"{run}: done at step 3" in out
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epoch = [r for r in rows if r["kind"] == "epoch"][-1]
    for key in ("val/top1", "val/top5", "train/select_ratio/stage3", "train/select_ratio/stage4",
                "train/label_ratio/s16", "val/gmacs_per_image", "img_s", "peak_mem_mb", "lr"):
        assert key in epoch, key
    assert 0.0 < epoch["train/label_ratio/s8"] < 0.5          # IN-S: the image is a quarter of the canvas
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("kind,epoch,step,")

    # without a bar (progress off, or no terminal): a line per log_interval steps, and the last step's
    steps = [r for r in rows if r["kind"] == "step"]
    lines = [line for line in out.splitlines() if line.startswith("epoch 1/1  step ")]
    assert [r["step"] for r in steps] == [2, 3] and len(lines) == 2
    for row, line in zip(steps, lines):
        assert re.fullmatch(rf"epoch 1/1  step {row['step']}/3  loss {row['loss']:.4f}  lr {row['lr']:.2e}  "
                            rf"img/s \d+\.\d", line), line
        assert row["img_s"] > 0
    # the epoch row: the training loss, and the share of the epoch max_steps stopped at, rounded
    steps_per_epoch = json.loads((in_s["train"] / "shards" / "index.json").read_text())["num_samples"] // 9
    assert epoch["epoch"] == round(3 / steps_per_epoch, 4) != 3 / steps_per_epoch   # 3/13: 0.2308
    summary = next(line for line in out.splitlines() if line.startswith(f"epoch {epoch['epoch']:.4g}  step 3  "))
    assert f"train/loss {epoch['train/loss']:.4g}" in summary and 0 < epoch["train/loss"] < 10

    # the saved config reproduces the run's settings
    saved = resolve_config(run / "config.yaml")
    assert saved == resolve_config(None, [TINY, "batch_size=9", "epochs=1", "max_steps=3", "num_workers=0",
                                          "progress=false", "log_interval=2"], shards=str(in_s["train"]), val_shards=str(in_s["val"]),
                                   task="cls", model="spt_tiny", out=str(run))

    code, out, err = spa_train_cli(["eval", "--checkpoint", str(run / "best.pt"), "--shards", str(in_s["val"]),
                                      "--num-workers", "0", "--json", str(tmp_path / "eval.json")])
    assert code == 0, err
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["val/images"] == 30
    assert result["val/top1"] == pytest.approx(epoch["val/top1"])   # same weights, same images


def test_bench_reports_throughput_and_macs(spa_train_cli, tmp_path):
    code, out, err = spa_train_cli(["bench", "--model", "swin_tiny", "--size", "64", "64", "--batch", "2",
                                      "--steps", "1", "--warmup", "0", "--device", "cpu", "--json", str(tmp_path / "b.json"),
                                      "embed_dim=8", "depths=[1, 1, 2, 2]", "num_heads=[1, 1, 2, 2]"])
    assert code == 0, err
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["infer_img_s"] > 0 and result["train_img_s"] > 0
    # patch embedding alone: (64/4)^2 positions x 8 channels x (3*16 + 1) MACs
    assert result["gmacs_per_image"] * 1e9 > 16 * 16 * 8 * 49


def test_config_precedence_and_round_trip(tmp_path):
    (tmp_path / "c.toml").write_text('lr = 0.1\nepochs = 3\nmodel = "swin_tiny"\n')
    config = resolve_config(tmp_path / "c.toml", ["lr=0.2", "model_args.embed_dim=8", "betas=[0.9, 0.95]"],
                            model="spt_tiny", task=None)
    assert (config.lr, config.epochs, config.model, config.model_args, config.betas) == \
        (0.2, 3, "spt_tiny", {"embed_dim": 8}, (0.9, 0.95))
    assert resolve_config(None, ["amp=off", "val_shards=none"]).amp == "off"     # not YAML's False
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config.to_dict()))
    assert resolve_config(tmp_path / "c.yaml") == config
    assert TrainConfig().alpha == 0.01 and TrainConfig().selector is None   # None: the model's own


def _foreign_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, path)
    return path


BAD = {
    "other task": (lambda d, t: ["--shards", str(d["train"]), "--task", "det", "--model", "spt_tiny"],
                   "shards are for task 'cls', not 'det'"),
    "unknown key": (lambda d, t: ["--shards", str(d["train"]), "--task", "cls", "lr_warmup=5"],
                    "unknown config key 'lr_warmup' (did you mean 'warmup_steps'?)"),
    "bad value": (lambda d, t: ["--shards", str(d["train"]), "epochs=many"], "config key 'epochs': expected an integer"),
    "not key=value": (lambda d, t: ["--shards", str(d["train"]), "lr"], "override 'lr': expected key=value"),
    "unknown model": (lambda d, t: ["--shards", str(d["train"]), "--model", "spt_tiyn", "--out", str(t / "r")],
                      "unknown model 'spt_tiyn' (did you mean 'spt_tiny'?)"),
    "model does not fit": (lambda d, t: ["--shards", str(d["train"]), "--model", "swin_tiny", "--selector", "topk",
                                         "--out", str(t / "r")], "model 'swin_tiny' does not fit"),
    "strides the model reads": (lambda d, t: ["--shards", str(d["train-16-32"]), "--model", "spt_tiny", TINY,
                                              "--out", str(t / "r")],
                                "shards labelled at strides 16,32, but model 'spt_tiny' reads selection labels at "
                                "8,16,32"),
    "selector in model_args": (lambda d, t: ["--shards", str(d["train"]), "model_args.selector=gt", "--out",
                                             str(t / "r")], "model_args.selector: the selector has its own key"),
    "missing shards": (lambda d, t: ["--shards", str(t / "nowhere"), "--task", "cls"], "nowhere"),
    "missing config": (lambda d, t: ["--config", str(t / "none.yaml")], "none.yaml: config file not found"),
    "missing checkpoint": (lambda d, t: ["eval", "--checkpoint", str(t / "gone.pt"), "--shards", str(d["val"])],
                           "gone.pt: checkpoint not found"),
    "foreign checkpoint": (lambda d, t: ["eval", "--checkpoint", str(_foreign_checkpoint(t)), "--shards", str(d["val"])],
                           "foreign.pt: not a spa-train checkpoint"),
    "not a checkpoint": (lambda d, t: ["eval", "--checkpoint", str(d["val"] / "manifest.jsonl"), "--shards",
                                       str(d["val"])], "manifest.jsonl: not a spa-train checkpoint"),
    "missing resume": (lambda d, t: ["--resume", str(t / "run-that-never-was")], "checkpoint not found"),
    "occupied run dir": (lambda d, t: ["--shards", str(d["train"]), "--out", str(_occupied(t))],
                         "already holds a run (last.pt); continue it with --resume"),
    "no shards": (lambda d, t: ["--task", "cls", "--out", str(t / "r")], "no training shards given (set --shards)"),
}


def _occupied(tmp_path: Path) -> Path:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "last.pt").write_bytes(b"")
    return tmp_path / "old"


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_exit_1(spa_train_cli, in_s, tmp_path, case):
    make_args, message = BAD[case]
    code, out, err = spa_train_cli(make_args(in_s, tmp_path))
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when there is no GPU")
def test_asking_for_a_missing_gpu(spa_train_cli, in_s):
    code, _, err = spa_train_cli(["--shards", str(in_s["train"]), "--device", "cuda"])
    assert code == 1 and err == "error: device cuda: no CUDA device is available " \
                                "(torch.cuda.is_available() is False)\n"


def test_help_lists_every_config_key_with_a_default_that_reads_back(spa_train_cli):
    code, out, _ = spa_train_cli(["--help"])
    assert code == 0
    listed = dict(re.findall(r"^    (\w+)=(\S*)", out, re.M))
    assert list(listed) == [f.name for f in dataclasses.fields(TrainConfig)]
    for name, text in listed.items():   # as given on the command line, each default is the default
        assert getattr(resolve_config(None, [f"{name}={text}"]), name) == getattr(TrainConfig(), name), name
    assert 'log_interval=10 steps between "step" rows in metrics.jsonl (and lines on stdout where no progress bar ' \
           'shows) eval_interval=1' in " ".join(out.split())   # the comment, wrapped under its key
    assert "\n  bookkeeping\n" in out
    assert spa_train_cli(["train", "--help"])[1].endswith(out[out.index("Config keys"):])
