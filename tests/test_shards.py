"""Shards: index and checksums, byte-identical resume, verify, show/stats, and every bad input."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import spa_data.shards as shards
from spa_cli.data import main as spa_data_main
from spa_common.errors import SpaError
from spa_common.hashing import sha256_file
from spa_data.loader import ShardDataset
from spa_data.shards import load_index, shard_stats, verify_shards, write_shards

RECIPES = ("coco-s", "in-s", "voc-s", "bdd-s")


@pytest.fixture(scope="module")
def subsets(demo_subset) -> dict[str, Path]:
    """`spa-data build` outputs of the demo datasets (val split), without shards (shared: copy to change)."""
    return {name: demo_subset(name) for name in RECIPES}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`spa-data ARGS` in this process (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            spa_data_main(list(args))
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def tree_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def copy_subset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("shards"))
    return dst


@pytest.fixture(scope="module")
def labelled(demo_shards) -> dict[str, Path]:
    """The demo subsets with their shards (3 samples per shard) in ``shards/`` (shared: copy to change)."""
    return {name: demo_shards(name, "val", "--shard-size", "3") for name in RECIPES}


def test_index_lists_every_shard_with_count_and_sha256(labelled, subsets):
    for name, subset in labelled.items():
        shard_dir = subset / "shards"
        index = json.loads((shard_dir / "index.json").read_text())
        manifest = (subsets[name] / "manifest.jsonl").read_text().splitlines()
        assert index["num_samples"] == len(manifest) == sum(e["num_samples"] for e in index["shards"])
        assert sorted(p.name for p in shard_dir.glob("*.h5")) == [e["file"] for e in index["shards"]]
        assert not list(shard_dir.glob(".*"))   # no temporary files left
        for entry in index["shards"]:
            assert hashlib.sha256((shard_dir / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
            with h5py.File(shard_dir / entry["file"]) as f:
                assert f.attrs["schema_version"] == shards.SCHEMA_VERSION
        ids = [json.loads(line)["image_id"] for line in manifest]
        assert ShardDataset(shard_dir).image_ids == ids


def test_det_images_are_the_original_jpeg_bytes(labelled, subsets, demo_root):
    ds = ShardDataset(labelled["coco-s"])
    for i, line in enumerate((subsets["coco-s"] / "manifest.jsonl").read_text().splitlines()):
        entry = json.loads(line)
        assert ds.raw(i)["image"].tobytes() == (demo_root / "coco" / entry["file"]).read_bytes()


def test_resume_after_interruption_gives_identical_bytes(subsets, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    write_shards(subsets["coco-s"], reference, shard_size=2, progress=False)
    out = tmp_path / "resumed"
    real_write = shards.write_shard
    calls = []

    def interrupted(job):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(job.index)
        return real_write(job)

    monkeypatch.setattr(shards, "write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_shards(subsets["coco-s"], out, shard_size=2, progress=False)
    monkeypatch.setattr(shards, "write_shard", real_write)
    assert not (out / "index.json").exists()   # unfinished runs have no index
    with pytest.raises(SpaError, match="no index.json .*interrupted"):
        ShardDataset(out)
    (out / ".shard-00002.h5.tmp-999").write_bytes(b"half a shard")   # what a kill mid-write leaves
    resumed = []
    monkeypatch.setattr(shards, "write_shard", lambda job: resumed.append(job.index) or real_write(job))
    write_shards(subsets["coco-s"], out, shard_size=2, progress=False)
    assert resumed == [2, 3]                   # finished shards were kept
    assert tree_bytes(out) == tree_bytes(reference)


def test_resume_after_sigkill_gives_identical_bytes(subsets, tmp_path):
    subset = copy_subset(subsets["in-s"], tmp_path / "in-s")
    reference = tmp_path / "reference"
    write_shards(subset, reference, shard_size=1, progress=False)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", "from spa_cli.data import main; main()", "labels", str(subset),
                             "--shard-size", "1", "--out", str(out)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out.glob("shard-*.h5"))) < 3 and proc.poll() is None:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    (out / "shard-00029.h5").write_bytes(b"\x89HDF\r\n")   # a truncated file under a final name is redone too
    rerun = subprocess.run([sys.executable, "-c", "from spa_cli.data import main; main()", "labels", str(subset),
                            "--shard-size", "1", "--out", str(out)], capture_output=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert tree_bytes(out) == tree_bytes(reference)


def test_changed_plan_rewrites_and_drops_stale_shards(subsets, tmp_path):
    out = tmp_path / "shards"
    write_shards(subsets["in-s"], out, shard_size=4, progress=False)
    write_shards(subsets["in-s"], out, shard_size=16, progress=False)
    index = json.loads((out / "index.json").read_text())
    assert sorted(p.name for p in out.glob("*.h5")) == [e["file"] for e in index["shards"]]
    assert [e["num_samples"] for e in index["shards"]] == [16, len(ShardDataset(out)) - 16]


def test_verify_passes_and_rederives(labelled):
    for shard_dir in labelled.values():
        report = verify_shards(shard_dir, sample=4)
        assert report["rederived"] >= 1


def _damaged_copy(subset: Path, tmp_path: Path) -> Path:
    """The shard directory of a copy of ``subset`` (verify re-derives labels from the subset beside it)."""
    shutil.copytree(subset, tmp_path / "damaged")
    return tmp_path / "damaged" / "shards"


def test_verify_catches_a_flipped_byte(labelled, tmp_path):
    out = _damaged_copy(labelled["coco-s"], tmp_path)
    shard = out / "shard-00001.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(SpaError, match="shard-00001.h5: sha256 .* does not match index.json"):
        verify_shards(out)
    result = run_cli("verify", str(out))
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "sha256" in result.stderr


def test_verify_catches_labels_that_disagree_with_annotations(labelled, tmp_path):
    out = _damaged_copy(labelled["in-s"], tmp_path)
    shard = out / "shard-00000.h5"
    with h5py.File(shard, "r+") as f:
        f["select/8"][0] ^= 1
    index = json.loads((out / "index.json").read_text())
    index["shards"][0]["sha256"] = sha256_file(shard)   # checksums consistent: only labels are wrong
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(SpaError, match="stride-8 selection labels differ from a re-derivation"):
        verify_shards(out, sample=len(ShardDataset(out)))


def test_wrong_schema_version_in_index_and_in_shard(labelled, tmp_path):
    out = _damaged_copy(labelled["voc-s"], tmp_path)
    index = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps(dict(index, schema_version=99)))
    with pytest.raises(SpaError, match="index.json: schema version 99"):
        ShardDataset(out)
    (out / "index.json").write_text(json.dumps(index))
    with h5py.File(out / "shard-00000.h5", "r+") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(SpaError, match="shard-00000.h5: schema version 99"):
        ShardDataset(out)[0]


def test_truncated_shard_is_one_clear_error(labelled, tmp_path):
    out = _damaged_copy(labelled["coco-s"], tmp_path)
    shard = out / "shard-00000.h5"
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(SpaError, match="shard-00000.h5: not a readable HDF5 shard"):
        ShardDataset(out)[0]
    result = run_cli("verify", str(out))
    assert result.returncode == 1 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_bad_inputs_on_the_command_line(subsets, tmp_path):
    cases = [
        (("labels", str(tmp_path)), "not a `spa-data build` output"),
        (("labels", str(subsets["coco-s"]), "--scales", "8,16,x"), "--scales 8,16,x: 'x' is not a power of two"),
        (("labels", str(subsets["voc-s"]), "--size", "440"), "scale 16 does not divide the square geometry 440x440"),
        (("verify", str(tmp_path)), "no shards here"),
    ]
    for args, message in cases:
        result = run_cli(*args)
        assert result.returncode == 1, args
        assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (subsets["voc-s"] / "shards").exists()   # nothing half-written


def test_mismatched_subset_files_are_rejected(subsets, tmp_path):
    subset = copy_subset(subsets["coco-s"], tmp_path / "coco-s")
    lines = (subset / "annotations.jsonl").read_text().splitlines()
    (subset / "annotations.jsonl").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(SpaError, match="manifest.jsonl has 8 lines, annotations.jsonl 7"):
        write_shards(subset, progress=False)
    (subset / "annotations.jsonl").write_text("\n".join(lines[1:] + lines[:1]) + "\n")
    with pytest.raises(SpaError, match="annotations.jsonl: image .* has .* on that line"):
        write_shards(subset, progress=False)
    assert not list((subset / "shards").glob("*"))


def test_stats_against_the_builders_pixel_ratio(labelled):
    report = shard_stats(labelled["in-s"])
    # IN-S: the builder's ratio is on the 2x2 canvas, the shard's on the 64x64 content.
    assert report["pixel_ratio_content"] == pytest.approx(4 * report["pixel_ratio_manifest"], abs=4 / 255)
    for s in (8, 16, 32):
        assert report["pixel_ratio_content"] <= report["positive_ratio_content"][s] <= 1
    coarse = [report["positive_ratio_canvas"][s] for s in (8, 16, 32)]
    assert coarse == sorted(coarse)            # coarser cells are positive at least as often
    assert shard_stats(labelled["in-s"], select_threshold=0.5)["positive_ratio_canvas"][8] <= coarse[0]


def test_show_and_stats_commands(labelled, tmp_path):
    png = tmp_path / "show.png"
    result = run_cli("show", str(labelled["coco-s"]), "--n", "2", "--out", str(png))
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = run_cli("stats", str(labelled["in-s"]), "--json", str(tmp_path / "stats.json"))
    assert result.returncode == 0 and "positive/canvas" in result.stdout
    assert set(json.loads((tmp_path / "stats.json").read_text())["positive_ratio_canvas"]) == {"8", "16", "32"}


def test_load_index_accepts_subset_dir_shard_dir_and_index(labelled):
    subset = labelled["bdd-s"]
    for path in (subset, subset / "shards", subset / "shards" / "index.json"):
        assert load_index(path)[0] == subset / "shards"
    np.testing.assert_array_equal(ShardDataset(subset)[0]["image"], ShardDataset(subset / "shards")[0]["image"])


def test_worker_processes_write_the_same_bytes(subsets, tmp_path):
    write_shards(subsets["in-s"], tmp_path / "one", shard_size=8, workers=1, progress=False)
    write_shards(subsets["in-s"], tmp_path / "two", shard_size=8, workers=2, progress=False)
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "two")


def test_missing_or_changed_image_is_one_clear_error(subsets, tmp_path):
    subset = copy_subset(subsets["coco-s"], tmp_path / "coco-s")
    summary = json.loads((subset / "summary.json").read_text())
    root = Path(shutil.copytree(summary["root"], tmp_path / "coco"))
    (subset / "summary.json").write_text(json.dumps(dict(summary, root=str(root))))
    first = json.loads((subset / "manifest.jsonl").read_text().splitlines()[0])
    assert first["image_id"] == 5007
    (root / first["file"]).write_bytes(b"not a jpeg")
    with pytest.raises(SpaError, match=f"{first['file']}: image {first['image_id']}: sha256 differs"):
        write_shards(subset, shard_size=2, progress=False)
    (root / first["file"]).unlink()
    result = run_cli("labels", str(subset))
    last = result.stderr.splitlines()[-1]   # after the progress bar: one line
    assert result.returncode == 1 and last.startswith("error: ") and "image 5007: cannot read" in last
    assert not (subset / "shards" / "index.json").exists() and not list((subset / "shards").glob(".*"))
