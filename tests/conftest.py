"""Shared test fixtures: the real dataset samples and a generated demo tree."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _fixtures_dir() -> Path:
    return Path(os.environ.get("SPA_FIXTURES", REPO.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """../shared/fixtures (override with SPA_FIXTURES); skips when absent."""
    path = _fixtures_dir()
    if not path.is_dir():
        pytest.skip(f"dataset fixtures not found at {path} (set SPA_FIXTURES)")
    return path


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small generated dataset tree in every official layout (spa-data demo-data)."""
    from spa_data.demo import write_demo_data

    out = tmp_path_factory.mktemp("demo")
    write_demo_data(out)
    return out


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def coco_s_demo(demo_root, tmp_path_factory) -> Path:
    """COCO-S shards of the demo data at a small fit size (96x64), as `spa-data build` + `labels` make them."""
    from spa_cli.data import main as spa_data

    out = tmp_path_factory.mktemp("coco-s-demo")
    spa_data(["build", "coco-s", "--root", str(demo_root / "coco"), "--split", "val", "--out", str(out / "subset")])
    spa_data(["labels", str(out / "subset"), "--size", "96,64"])
    return out / "subset"


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
