"""`pip install` of the wheel (not editable) into a fresh venv, then `spa-data` run from another directory.

The recipes (manifests/) and training configs (configs/) must come with the package, read through
importlib.resources, and the command line must be the package ``spa_cli``, with no top-level ``cli``.
The venv borrows this environment's third-party packages through a .pth file, so nothing is downloaded;
spa itself comes only from the wheel.
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"spa_common", "spa_data", "spa_model", "spa_train", "spa_cli"}
NOT_SOURCES = {".git", ".venv", "build", "dist", "runs", "out", "demo", ".pytest_cache"}   # .gitignore's tops
UNREACHABLE = ("No matching distribution", "Could not find a version", "Failed to establish", "Network is unreachable")


def _sources(directory: str, names: list[str]) -> set[str]:
    top = Path(directory) == REPO
    return {n for n in names if n == "__pycache__" or n.endswith(".egg-info") or (top and n in NOT_SOURCES)}


def _run(args: list, *, cwd: Path, env: dict | None = None) -> str:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def _wheel(src: Path, dist: Path) -> Path:
    """Build the wheel offline where this environment can; else in pip's isolated build (skip if unreachable)."""
    offline = _offline_backend()
    args = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)]
    proc = subprocess.run(args + (["--no-build-isolation"] if offline else []), capture_output=True, text=True,
                          timeout=300)
    if proc.returncode and not offline and any(s in proc.stderr for s in UNREACHABLE):
        pytest.skip("no offline wheel backend here (setuptools>=70.1 or wheel) and no index to fetch one: "
                    f"{proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(dist.glob("spa-*.whl"))


def _offline_backend() -> bool:
    """setuptools >= 70.1 (which builds wheels itself), or an older one with ``wheel``, in this environment."""
    try:
        major, minor = (int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    if (major, minor) >= (70, 1):   # bdist_wheel moved into setuptools
        return True
    try:
        importlib.metadata.version("wheel")
    except importlib.metadata.PackageNotFoundError:
        return False
    return major >= 64                # pyproject.toml's build requirement


def test_wheel_installs_and_builds_the_demo_from_another_directory(tmp_path):
    src = tmp_path / "src"     # a copy: a build writes build/ and *.egg-info beside its sources
    shutil.copytree(REPO, src, ignore=_sources)
    wheel = _wheel(src, tmp_path / "dist")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops - {n for n in tops if n.endswith(".dist-info")} == PACKAGES   # no generic `cli`, no manifests/

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp_path).strip())
    borrowed = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    (purelib / "borrowed-dependencies.pth").write_text("".join(f"{p}\n" for p in borrowed))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], cwd=tmp_path, env=env)

    elsewhere = tmp_path / "elsewhere"   # neither the source tree nor its copy is on the path from here
    elsewhere.mkdir()
    where = _run([python, "-c", "import spa_cli, spa_data; from spa_data.recipes import recipe_names; "
                  "from spa_train.config import read_config_file; print(spa_data.__file__); "
                  "print(','.join(recipe_names())); print(read_config_file('coco-s/spt_tiny')['model'])"],
                 cwd=elsewhere, env=env).splitlines()
    assert Path(where[0]).is_relative_to(purelib) and where[2] == "spt_tiny"
    assert where[1].split(",") == sorted(p.stem for p in (REPO / "manifests").glob("*.toml"))
    assert subprocess.run([python, "-c", "import cli"], cwd=elsewhere, env=env, capture_output=True).returncode == 1

    _run([bin_dir / "spa-data", "demo-data", "--out", tmp_path / "demo"], cwd=elsewhere, env=env)
    out = _run([bin_dir / "spa-data", "build", "coco-s", "--root", tmp_path / "demo" / "coco", "--split", "val",
                "--out", "subset"], cwd=elsewhere, env=env)
    assert "kept" in out and (elsewhere / "subset" / "summary.json").is_file()
