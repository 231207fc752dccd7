"""The benchmark scripts still run: each imports, and the backbone ones finish a CPU smoke run.

Benchmarks are timed on the GPU only (benchmarks/README.md); these tests catch the scripts falling
behind the library they measure (a renamed function, a changed signature) before a device call does.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def _run(args: list[str], tmp_path: Path, **env) -> subprocess.CompletedProcess:
    search = os.pathsep.join(filter(None, [str(REPO), str(BENCHMARKS), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "PYTHONPATH": search, **env}
    result = subprocess.run([sys.executable, *args], cwd=tmp_path, env=environment, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_every_benchmark_script_imports(tmp_path):
    scripts = sorted(p.stem for p in BENCHMARKS.glob("*.py"))
    code = "import importlib, sys; sys.argv = ['x']\nfor name in %r: importlib.import_module(name)" % scripts
    _run(["-c", code], tmp_path)


@pytest.mark.parametrize("script", sorted(BENCHMARKS.glob("*.sh")), ids=lambda p: p.name)
def test_shell_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_bench_backbone_quick_times_every_variant(tmp_path):
    _run([str(BENCHMARKS / "bench_backbone.py"), "--quick", "--out", str(tmp_path), "--shape", "64x64:2",
          "--modes", "eager", "--rounds", "1", "--iters", "1", "--warmup", "1"], tmp_path)
    report = json.loads((tmp_path / "bench_backbone.json").read_text())
    assert report["meta"]["torch"] and report["meta"]["argv"]
    rows = report["results"]
    labels = {row["label"] for row in rows}
    assert {"swin_t", "spt_t_gt", "spt_t_gt_tuned", "spt_t_topk", "spt_t_gt_exact", "stvit_r_t"} <= labels
    for row in rows:
        assert "error" not in row, row
        assert row["img_s"] > 0 and row["vs_swin"] > 0
        if row["label"].startswith("spt"):
            assert 0 < row["select_ratio"] < 1 and row["dropped_share"] >= 0


def test_profile_backbone_quick_tables_each_variant(tmp_path):
    _run([str(BENCHMARKS / "profile_backbone.py"), "--quick", "--out", str(tmp_path), "--shape", "64x64:2",
          "--phases", "train", "--top", "1000"], tmp_path)   # every op: the ranking by host time varies with load
    table = (tmp_path / "profile_train_host.txt").read_text().splitlines()
    assert "swin_t" in table[1] and "spt_t_gt" in table[1]
    assert any(line.startswith("aten::index_select") for line in table)  # the packing SPT adds


def test_bench_packed_attention_smoke_agrees_with_sdpa(tmp_path):
    result = _run([str(BENCHMARKS / "bench_packed_attention.py"), "--smoke", "--out", str(tmp_path), "--dtype",
                   "float32", "--batch", "2", "--height", "10", "--width", "16", "--channels", "32", "--heads", "2"],
                  tmp_path, TRITON_INTERPRET="1")
    errors = json.loads(result.stdout.split("max relative error:")[1].splitlines()[0])
    assert errors and max(errors.values()) < 1e-4


def test_bench_trainer_quick_compares_trainer_and_bare_step(tmp_path, fixtures_dir):
    _run([str(BENCHMARKS / "bench_trainer.py"), "--quick", "--fixtures", str(fixtures_dir), "--out", str(tmp_path),
          "--models", "spt_tiny"], tmp_path)
    row, = json.loads((tmp_path / "trainer.json").read_text())["results"]
    assert row["model"] == "spt_tiny" and row["img_s"] > 0 and row["bare_img_s"] > 0 and row["trainer_over_bare"] > 0
