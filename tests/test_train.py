"""Training on demo shards made by the real chain (demo data -> spa-data build -> spa-data labels).

Checks: the loss of each task is finite and falls on a fixed batch; a run resumed from a
mid-epoch checkpoint ends with exactly the parameters of an uninterrupted run (CPU); a
non-finite loss stops with a clear message and keeps the last good checkpoint; two gloo
processes follow one process with the same global batch. (Signals: tests/test_safety.py.)
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spa_common.errors import SpaError
from spa_data.loader import make_loader
from spa_train.checkpoint import load_checkpoint, save_checkpoint
from spa_train.config import resolve_config
from spa_train.engine import open_shards, train, training_loss
from spa_train.tasks import build_task_model

REPO = Path(__file__).resolve().parents[1]
TINY = "model_args={embed_dim: 8, depths: [1, 1, 2, 2], num_heads: [1, 1, 2, 2], drop_path_rate: 0.1}"
SMALL_DETECTOR = ["fpn_channels=16", "mask_head_channels=8",
                  "detector_args={rpn_batch_size_per_image: 32, box_batch_size_per_image: 16, "
                  "rpn_pre_nms_top_n_train: 100, rpn_post_nms_top_n_train: 50, rpn_pre_nms_top_n_test: 50, "
                  "rpn_post_nms_top_n_test: 25, box_detections_per_img: 10}"]
SMALL = ("--size", "96,64")   # detection shards at a size the CPU tests train on


@pytest.mark.parametrize("data, task, extra", [
    (("in-s", "train"), "cls", []),
    (("voc-s", "train", "--size", "96,96"), "multilabel", []),
    (("coco-s", "val", *SMALL), "det", SMALL_DETECTOR),      # masks: Mask R-CNN
    (("bdd-s", "val", *SMALL), "det", [*SMALL_DETECTOR, "masks=false"]),       # boxes only: Faster R-CNN
], ids=["in-s", "voc-s", "coco-s", "bdd-s"])
def test_loss_is_finite_and_falls_on_a_fixed_batch(demo_shards, data, task, extra):
    torch.manual_seed(0)
    config = resolve_config(None, [TINY.replace("0.1", "0.0"), *extra], task=task, shards=str(demo_shards(*data)))
    dataset = open_shards(config.shards, config, train=False)
    model = build_task_model(config, dataset)
    if task == "det":
        assert model.detector.roi_heads.has_mask() == (data[0] == "coco-s")
    batch = next(iter(make_loader(dataset, batch_size=4)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        _, loss, _, select_loss = training_loss(model, batch, alpha=0.01)
        assert select_loss > 0                       # SPT gates are trained against the labels
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def _config(shards_dir: Path, out: Path, *extra: str):
    return resolve_config(None, [TINY, "batch_size=4", "epochs=2", "num_workers=0", "warmup_steps=1",
                                 "progress=false", "curves=false", *extra], task="cls", model="spt_tiny",
                          shards=str(shards_dir), out=str(out))


def test_resume_is_exact_and_a_nonfinite_loss_keeps_the_last_good_checkpoint(demo_shards, tmp_path):
    data = demo_shards("in-s", "train")
    train(_config(data, tmp_path / "straight", "max_steps=3"))

    train(_config(data, tmp_path / "split", "max_steps=1"))      # stops mid-epoch, saves last.pt
    last = tmp_path / "split" / "last.pt"
    base = load_checkpoint(last)["config"]
    poisoned = tmp_path / "poisoned" / "last.pt"                 # a copy whose first weight is NaN
    state = load_checkpoint(last)
    state["model"] = {k: v.clone() for k, v in state["model"].items()}
    next(v for v in state["model"].values() if v.is_floating_point()).view(-1)[0] = float("nan")
    poisoned.parent.mkdir()
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, poisoned)
    good = poisoned.read_bytes()
    with pytest.raises(SpaError, match=r"non-finite loss \(nan\) at step 2 \(epoch 1\).*poisoned/last\.pt"):
        train(resolve_config(None, ["max_steps=3", f"out={poisoned.parent}"], base=base), resume=poisoned)
    assert poisoned.read_bytes() == good                          # untouched by the failed run
    train(resolve_config(None, ["max_steps=3"], base=base), resume=tmp_path / "split")

    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(last)
    assert resumed["position"] == straight["position"] == {"epoch": 0, "step": 3, "consumed": 3}
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for a, b in zip(straight["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "step"]
    assert steps == sorted(set(steps))                            # a resumed run never logs a step twice


def test_step_statistics_are_read_at_log_steps_only_and_none_is_lost(demo_shards, tmp_path, monkeypatch):
    """The loop reads the losses from the device at log steps (and before checkpoints, at epoch ends),
    not after every step; every step's loss still counts in the epoch's mean and the logged values."""
    from spa_train.engine import Trainer

    reads = []
    read_steps = Trainer._read_steps
    monkeypatch.setattr(Trainer, "_read_steps", lambda self, steps: reads.append(len(self.pending_steps))
                        or read_steps(self, steps))
    data = demo_shards("in-s", "train")
    rows = {}
    for interval in (1, 3):
        reads.clear()
        train(_config(data, tmp_path / f"log{interval}", "max_steps=7", "epochs=1", f"log_interval={interval}"))
        rows[interval] = [json.loads(line) for line in (tmp_path / f"log{interval}" / "metrics.jsonl").read_text().splitlines()]
        assert sum(reads) == 7 and len(reads) == (7 if interval == 1 else 3)     # steps 3, 6 and the last, 7
    every, sparse = ([r for r in rows[i] if r["kind"] == "step"] for i in (1, 3))
    assert [r["step"] for r in sparse] == [3, 6, 7]
    for row in sparse:
        assert row["loss"] == every[row["step"] - 1]["loss"] and row["lr"] == every[row["step"] - 1]["lr"]
    epoch = {i: next(r for r in rows[i] if r["kind"] == "epoch") for i in (1, 3)}
    assert epoch[1]["train/loss"] == epoch[3]["train/loss"]
    assert epoch[1]["train/loss"] == pytest.approx(sum(r["loss"] for r in every) / 7)


def _cli(device: str = "device=cpu") -> list[str]:
    return ["-m", "spa_cli.train", "--task", "cls", "--model", "spt_tiny", TINY.replace("0.1", "0.0"),
            "batch_size=8", "epochs=1", "num_workers=0", "warmup_steps=1", "progress=false", device]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}


def _one_vs_two_processes(shards_dir: Path, tmp_path: Path, *, device: str, tolerance: float) -> None:
    # hflip off and the oracle selector: no per-rank randomness, so only float summation order differs
    common = ["--shards", str(shards_dir), "--selector", "gt", "hflip=0.0", "max_steps=3", "amp=off", "curves=false"]
    one = subprocess.run([sys.executable, *_cli(f"device={device}"), *common, "--out", str(tmp_path / "one")],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29731"]
    two = subprocess.run([*torchrun, *_cli(f"device={device}"), *common, "--out", str(tmp_path / "two")],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    a = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "two" / "last.pt")["model"]
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < tolerance
    loss = [[json.loads(l)["loss"] for l in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
             if '"kind": "step"' in l] for run in ("one", "two")]
    assert loss[0] == pytest.approx(loss[1], rel=tolerance)


@pytest.mark.slow
def test_two_gloo_processes_follow_one_process_with_the_same_global_batch(demo_shards, tmp_path):
    _one_vs_two_processes(demo_shards("in-s", "train"), tmp_path, device="cpu", tolerance=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_follow_one_gpu_with_the_same_global_batch(demo_shards, tmp_path):
    _one_vs_two_processes(demo_shards("in-s", "train"), tmp_path, device="cuda", tolerance=2e-3)  # TF32 matmuls


@pytest.mark.gpu
def test_bf16_training_on_cuda(demo_shards, tmp_path):
    row = train(_config(demo_shards("in-s", "train"), tmp_path / "run", "max_steps=3", "device=cuda", "amp=bf16"))
    assert row["step"] == 3 and row["peak_mem_mb"] > 0
    losses = [json.loads(l)["loss"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"kind": "step"' in l]
    assert losses and all(math.isfinite(v) for v in losses)


@pytest.mark.gpu
def test_cuda_training_validates_through_cuda_graphs_while_loader_threads_decode(demo_shards, tmp_path):
    """Validation captures CUDA graphs (eval batches of 4: 7 of one shape) while the loaders' helper
    threads allocate and decode on their own streams; a captured graph must not see their work."""
    config = resolve_config(None, [TINY, "batch_size=4", "eval_batch_size=4", "epochs=2", "num_workers=2",
                                   "warmup_steps=1", "progress=false", "curves=false", "device=cuda", "amp=bf16"],
                            task="cls", model="spt_tiny", shards=str(demo_shards("in-s", "train")),
                            val_shards=str(demo_shards("in-s", "val")), out=str(tmp_path / "run"))
    row = train(config)
    assert row["epoch"] == 2 and math.isfinite(row["val/top1"])


def test_lr_schedule_warms_up_linearly_then_follows_a_cosine_to_min_lr():
    from spa_train.optim import lr_factor

    factors = [lr_factor(step, warmup_steps=4, total_steps=14, min_ratio=0.1) for step in range(15)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[9] == pytest.approx(0.1 + 0.9 * 0.5)          # half-way through the decay: cos(pi/2) = 0
    assert factors[14] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))


def test_gradient_accumulation_matches_one_big_batch(demo_shards, tmp_path):
    # oracle selector, no flips, no drop-path: the two runs see the same images and no noise
    common = ["max_steps=2", "selector=gt", "hflip=0.0", "batch_size=8", TINY.replace("0.1", "0.0")]
    train(_config(demo_shards("in-s", "train"), tmp_path / "big", *common))
    train(_config(demo_shards("in-s", "train"), tmp_path / "accum", *common, "grad_accum_steps=2"))
    big = load_checkpoint(tmp_path / "big" / "last.pt")["model"]
    accum = load_checkpoint(tmp_path / "accum" / "last.pt")["model"]
    assert max((big[k] - accum[k]).abs().max().item() for k in big) < 1e-5
    # AdamW hides a mis-scaled gradient; the logged pre-clipping gradient norm does not
    norms = [[json.loads(line)["grad_norm"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
              if '"kind": "step"' in line] for run in ("big", "accum")]
    assert norms[0] == pytest.approx(norms[1], rel=1e-4)


@pytest.mark.parametrize("capacity, warned", [("exact", True), (None, False), ("0.5", False)])
def test_compile_with_a_data_dependent_capacity_says_so(demo_shards, tmp_path, capsys, capacity, warned):
    """compile=true and the exact (host-synced) capacity: one line saying so; the default is static."""
    from spa_train.engine import Trainer

    model_args = TINY if capacity is None else TINY.replace("}", f", capacity: {capacity}}}")
    config = resolve_config(None, [model_args, "batch_size=4", "num_workers=0", "compile=true", "progress=false"],
                            task="cls", model="spt_tiny", shards=str(demo_shards("in-s", "train")),
                            out=str(tmp_path / "run"))
    Trainer(config)  # torch.compile is lazy: nothing compiles before the first step
    assert ("capacity 'auto' is static" in capsys.readouterr().out) == warned
