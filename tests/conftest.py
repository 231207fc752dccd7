"""Shared test fixtures: the real dataset samples, and the demo chain (demo data -> subsets -> shards)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
_NO_FIXTURES = "dataset fixtures not found"   # the skip reason the run's summary counts


def _fixtures_dir() -> Path:
    return Path(os.environ.get("SPA_FIXTURES", REPO.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """../shared/fixtures (override with SPA_FIXTURES); skips when absent."""
    path = _fixtures_dir()
    if not path.is_dir():
        pytest.skip(f"{_NO_FIXTURES} at {path} (set SPA_FIXTURES)")
    return path


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small generated dataset tree in every official layout (spa-data demo-data)."""
    from spa_data.demo import write_demo_data

    out = tmp_path_factory.mktemp("demo")
    write_demo_data(out)
    return out


@pytest.fixture
def run_interpreted():
    """``run_interpreted(__file__)``: run a test module's ``__main__`` checks in a fresh process with
    Triton's interpreter (chosen at import, hence the process), its Triton kernels on the CPU."""
    pytest.importorskip("triton")

    def run(path: str) -> None:
        search = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))
        env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=search)
        result = subprocess.run([sys.executable, path], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    return run


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_subset(demo_root, tmp_path_factory):
    """``demo_subset(recipe, split="val")``: `spa-data build RECIPE --split SPLIT` of the demo dataset the
    recipe reads (its source's folder under ``demo_root``). Built once per session and shared: read it,
    or copy it to change it."""
    from spa_cli.data import main as spa_data
    from spa_data.demo import ROOTS
    from spa_data.recipes import load_recipe

    out = tmp_path_factory.mktemp("demo-subsets")

    def build(recipe: str, split: str = "val") -> Path:
        subset = out / f"{recipe}-{split}"
        if not subset.is_dir():
            root = demo_root / ROOTS[load_recipe(recipe).source]
            spa_data(["build", recipe, "--root", str(root), "--split", split, "--out", str(subset)])
        return subset

    return build


@pytest.fixture(scope="session")
def demo_shards(demo_subset, tmp_path_factory):
    """``demo_shards(recipe, split="val", *labels_args)``: a copy of ``demo_subset(recipe, split)`` with
    the shards `spa-data labels LABELS_ARGS` writes into its ``shards/``; returns the subset directory
    (which ``ShardDataset``, ``spa-train --shards`` and ``spa-data verify`` all take). Made once per
    session per arguments and shared: read it, or copy it to change it."""
    from spa_cli.data import main as spa_data

    out = tmp_path_factory.mktemp("demo-shards")

    def label(recipe: str, split: str = "val", *labels_args: str) -> Path:
        subset = out / re.sub(r"[^\w.,-]+", "_", " ".join((recipe, split, *labels_args)))
        if not (subset / "shards" / "index.json").is_file():
            shutil.copytree(demo_subset(recipe, split), subset)
            spa_data(["labels", str(subset), *labels_args])
        return subset

    return label


@pytest.fixture(scope="session")
def coco_s_demo(demo_shards) -> Path:
    """COCO-S demo shards at a small fit size (96x64), the one detection set the CPU tests train on."""
    return demo_shards("coco-s", "val", "--size", "96,64")


@pytest.fixture
def spa_train_cli(capsys):
    """``spa-train ARGS`` in this process: returns (exit code, stdout, stderr)."""
    from spa_cli.train import main

    def run(args: list[str]) -> tuple[int, str, str]:
        try:
            main(args)
            code = 0
        except SystemExit as e:
            code = e.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def pytest_terminal_summary(terminalreporter):
    """One line for the tests skipped for want of the dataset fixtures, not one silent skip each."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if _NO_FIXTURES in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} tests skipped: {_NO_FIXTURES} at {_fixtures_dir()} "
                                    "(put the shared fixtures there, or set SPA_FIXTURES)")
