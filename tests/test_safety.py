"""Data safety (issue 15), one test per finding, on real fixture files where the finding was on
real data: nothing a user owns is replaced, every file a later stage trusts is checked where it
is trusted, every stop (SIGTERM to the process group, SIGINT, kill -9, a full disk) leaves the
old state or the new one and one line, every bad input or option ends in one line.

Fault tests run the commands in subprocesses and send real signals; disk-full tests mount a
small tmpfs (root only; skipped with the reason otherwise).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import spa_cli.data
import spa_cli.train
from spa_common.errors import SpaError
from spa_common.io import directory_lock
from spa_data.loader import ShardDataset, make_loader
from spa_data.shards import LOCK, load_index, verify_shards
from spa_train.checkpoint import load_checkpoint
from spa_train.config import resolve_config
from spa_train.engine import train

REPO = Path(__file__).resolve().parents[1]
COCO_JSON = "annotations/instances_val2017.json"
HALF_JPEG = "val2017/000000037777.jpg"
TINY = "model_args={embed_dim: 8, depths: [1, 1, 2, 2], num_heads: [1, 1, 2, 2]}"


# ------------------------------------------------------------------------------------------- helpers


def run_cli(main, capsys, *args) -> tuple[int, str, str]:
    """A command line in this process: (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def spa_data(capsys, *args):
    return run_cli(spa_cli.data.main, capsys, *args)


def env() -> dict:
    search = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # packages put there stay
    return {**os.environ, "PYTHONPATH": search, "OMP_NUM_THREADS": "1"}


def command(tool: str, *args) -> list[str]:
    return [sys.executable, "-c", f"from spa_cli.{tool} import main; main()", *map(str, args)]


def one_line_error(code: int, err: str, *names: str, exit_code: int = 1) -> str:
    lines = [line for line in err.splitlines() if line.strip() and "\r" not in line and "%|" not in line]
    assert code == exit_code, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def edit_coco(root: Path, edit) -> None:
    data = json.loads((root / COCO_JSON).read_text())
    edit(data)
    (root / COCO_JSON).write_text(json.dumps(data))


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid``."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


@pytest.fixture()
def coco_root(fixtures_dir, tmp_path) -> Path:
    root = tmp_path / "data" / "coco"
    shutil.copytree(fixtures_dir / "coco" / "val-2img", root)
    return root


@pytest.fixture(scope="module")
def in_s(demo_shards) -> dict[str, Path]:
    """IN-S train and val subsets of the demo data with their shards (shared: copy to change)."""
    return {split: demo_shards("in-s", split) for split in ("train", "val")}


@pytest.fixture()
def small_disk(tmp_path):
    """mount(size) -> a directory on a tmpfs of that many bytes (unmounted afterwards)."""
    mounts = []

    def mount(size: int) -> Path:
        path = tmp_path / f"disk{len(mounts)}"
        path.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip() or 'mount failed'}); "
                        "the disk-full tests need root")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# ------------------------------------------------------------------------------------------- 1, 2


def test_1_build_never_replaces_the_dataset_or_files_it_did_not_write(capsys, coco_root, tmp_path):
    before = tree(coco_root.parent)
    for out, relation in ((coco_root, "is the dataset root"), (coco_root.parent, "contains the dataset root"),
                          (coco_root / "subsets", "lies inside the dataset root")):
        code, _, err = spa_data(capsys, "build", "coco", "--root", coco_root, "--split", "val", "--out", out,
                                "--overwrite")
        one_line_error(code, err, str(out), relation)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, _, err = spa_data(capsys, "build", "coco", "--root", coco_root, "--split", "val", "--out", foreign,
                            "--overwrite")
    one_line_error(code, err, str(foreign), "not a `spa-data build` output")
    assert tree(coco_root.parent) == before and (foreign / "notes.txt").read_text() == "mine"
    # an earlier output (with its shards) is replaced
    out = tmp_path / "subset"
    assert spa_data(capsys, "build", "coco", "--root", coco_root, "--split", "val", "--out", out)[0] == 0
    assert spa_data(capsys, "labels", out)[0] == 0
    code, _, err = spa_data(capsys, "build", "coco-s", "--root", coco_root, "--split", "val", "--out", out,
                            "--max-ratio", "0.3", "--overwrite")
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["subset"] == "coco-s" and not (out / "shards").exists()


def test_2_demo_data_never_overwrites_a_real_dataset(capsys, coco_root, tmp_path):
    before = tree(coco_root.parent)
    code, _, err = spa_data(capsys, "demo-data", "--out", coco_root.parent)
    one_line_error(code, err, str(coco_root.parent), "not a `spa-data demo-data` output")
    assert tree(coco_root.parent) == before
    demo = tmp_path / "demo"
    assert spa_data(capsys, "demo-data", "--out", demo)[0] == 0
    first = tree(demo)
    assert spa_data(capsys, "demo-data", "--out", demo)[0] == 0      # an earlier demo is replaced
    assert tree(demo) == first


# ------------------------------------------------------------------------------------------- 3, 4


def test_3_relabelling_rewrites_a_damaged_shard_instead_of_rehashing_it(capsys, coco_root, tmp_path):
    subset = tmp_path / "subset"
    assert spa_data(capsys, "build", "coco", "--root", coco_root, "--split", "val", "--out", subset)[0] == 0
    assert spa_data(capsys, "labels", subset, "--shard-size", 1)[0] == 0
    shard = subset / "shards" / "shard-00001.h5"
    written = shard.read_bytes()
    damaged = bytearray(written)
    damaged[len(damaged) // 2] ^= 0x01
    shard.write_bytes(bytes(damaged))
    code, _, err = spa_data(capsys, "labels", subset, "--shard-size", 1)
    assert code == 0, err
    assert "shard-00001.h5: changed since it was written" in err
    assert shard.read_bytes() == written
    verify_shards(subset, sample=2)


def test_4_unreadable_images_are_found_at_label_time_and_can_be_skipped(capsys, fixtures_dir, coco_root, tmp_path):
    image = coco_root / HALF_JPEG
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])   # a JPEG cut in half
    subset = tmp_path / "subset"
    assert spa_data(capsys, "build", "coco", "--root", coco_root, "--split", "val", "--out", subset)[0] == 0
    code, _, err = spa_data(capsys, "labels", subset)
    one_line_error(code, err, str(image), "image 37777", "truncated")
    assert not (subset / "shards").exists()
    code, out, err = spa_data(capsys, "labels", subset, "--on-bad-image", "skip")
    assert code == 0 and "1 unreadable images left out" in out, err
    index = load_index(subset)[1]
    assert [(s["line"], s["image_id"]) for s in index["skipped_images"]] == [(1, 37777)]
    assert ShardDataset(subset).image_ids == [397133]
    assert verify_shards(subset)["samples"] == 1

    shutil.copy(fixtures_dir / "coco" / "val-2img" / HALF_JPEG, image)
    other = coco_root / "val2017/000000397133.jpg"
    other.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())   # noise
    shutil.rmtree(subset)
    assert spa_data(capsys, "build", "coco", "--root", coco_root, "--split", "val", "--out", subset)[0] == 0
    code, _, err = spa_data(capsys, "labels", subset)
    one_line_error(code, err, str(other), "image 397133", "not an image")
    code, _, err = spa_data(capsys, "labels", subset, "--on-bad-image", "skip")
    assert code == 0 and ShardDataset(subset).image_ids == [37777] and "BytesIO" not in err


def test_4_an_undecodable_image_met_in_training_names_image_and_shard(capsys, coco_root, tmp_path):
    subset = tmp_path / "subset"
    assert spa_data(capsys, "build", "coco", "--root", coco_root, "--split", "val", "--out", subset)[0] == 0
    assert spa_data(capsys, "labels", subset, "--shard-size", 1)[0] == 0
    shard = subset / "shards" / "shard-00000.h5"
    with h5py.File(shard, "r+") as f:        # damage the stored JPEG after labelling
        data = f["image/data"]
        data[len(data) // 2:] = 0
    loader = make_loader(ShardDataset(subset, train=True), batch_size=2, num_workers=2)
    with pytest.raises(SpaError) as caught:
        next(iter(loader))
    loader.close()
    message = str(caught.value)
    assert "\n" not in message and str(shard) in message and "image 37777" in message, message


@pytest.mark.gpu
def test_4_an_undecodable_image_on_the_gpu_path_names_image_and_shard(capsys, coco_root, tmp_path):
    subset = tmp_path / "subset"
    assert spa_data(capsys, "build", "coco", "--root", coco_root, "--split", "val", "--out", subset)[0] == 0
    assert spa_data(capsys, "labels", subset, "--shard-size", 1)[0] == 0
    shard = subset / "shards" / "shard-00000.h5"
    with h5py.File(shard, "r+") as f:        # not a JPEG any more: nvJPEG cannot parse it
        data = f["image/data"]
        data[:] = np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8)
    loader = make_loader(ShardDataset(subset), batch_size=2, num_workers=2, device="cuda")
    with pytest.raises(SpaError) as caught:
        next(iter(loader))
    loader.close()
    message = str(caught.value)
    assert "\n" not in message and str(shard) in message and "image 37777" in message, message


# ------------------------------------------------------------------------------------------- 5, 6, 13


def _train_args(in_s: dict, run: Path, *extra) -> list:
    return ["--shards", in_s["train"], "--val-shards", in_s["val"], "--task", "cls", "--model", "spt_tiny",
            "--out", run, TINY, "batch_size=16", "epochs=2", "max_steps=9", "num_workers=2", "warmup_steps=1",
            "progress=false", "curves=false", "device=cpu", *extra]


@pytest.fixture()
def one_thread():
    """Runs in this process then sum like the subprocesses (OMP_NUM_THREADS=1): bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_5_6_13_sigterm_to_the_group_saves_and_resume_is_exact_with_workers(capsys, in_s, tmp_path, one_thread):
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert run_cli(spa_cli.train.main, capsys, *_train_args(in_s, straight))[0] == 0
    proc = subprocess.Popen(command("train", *_train_args(in_s, run, "log_interval=1")), env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(lambda: (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text(), 120, "a first step")
    os.killpg(proc.pid, signal.SIGTERM)                  # as a scheduler does: every process of the group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "interrupted: saved" in out + err and "Traceback" not in err
    wait_for(lambda: _group_gone(proc.pid), 10, "the workers to exit")
    step = load_checkpoint(run / "last.pt")["position"]["step"]
    assert 1 <= step < 9

    code, out, err = run_cli(spa_cli.train.main, capsys, "--resume", run)
    assert code == 0 and f"resuming {run / 'last.pt'} at step {step}" in out + err, err
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(run / "last.pt")
    assert a["position"] == b["position"] == {"epoch": 1, "step": 9, "consumed": 2}
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key

    # 6: last.pt and best.pt carry the best validation score so far
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = max(r["val/top1"] for r in rows if "val/top1" in r)
    assert b["best"] == best == load_checkpoint(run / "best.pt")["best"]

    # 13: a finished run says so; an older checkpoint never rewinds the run
    code, out, err = run_cli(spa_cli.train.main, capsys, "--resume", run)
    assert code == 0 and "this run is finished (step 9" in out + err, err
    metrics, last = (run / "metrics.jsonl").read_bytes(), (run / "last.pt").read_bytes()
    code, _, err = run_cli(spa_cli.train.main, capsys, "--resume", run / "best.pt")
    one_line_error(code, err, "best.pt", "would overwrite that run's last.pt")
    assert (run / "metrics.jsonl").read_bytes() == metrics and (run / "last.pt").read_bytes() == last


@pytest.mark.gpu
def test_5_sigterm_to_the_group_on_cuda_saves_and_exits(in_s, tmp_path):
    """The CUDA path (pinned memory, a side stream, workers returning JPEG bytes) stops as cleanly."""
    run = tmp_path / "run"
    args = [a if a != "device=cpu" else "device=cuda" for a in _train_args(in_s, run, "log_interval=1", "max_steps=200",
                                                                            "epochs=30")]
    proc = subprocess.Popen(command("train", *args), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)

    def stepped():
        return (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text()

    with contextlib.suppress(AssertionError):
        wait_for(lambda: stepped() or proc.poll() is not None, 120, "a first step")
    if not stepped():  # say why there was none
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"no first step in 120 s (exit {proc.returncode}): {(out + err)[-3000:]}")
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "interrupted: saved" in out + err and "Traceback" not in err, err
    wait_for(lambda: _group_gone(proc.pid), 10, "the workers to exit")
    assert load_checkpoint(run / "last.pt")["position"]["step"] >= 1


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_5_a_program_that_leaves_a_loader_open_still_exits(in_s, device):
    """Workers ignore SIGTERM, which multiprocessing would send them at exit and then wait on; on CUDA
    a helper thread is reading from them."""
    script = ("import sys; from spa_data.loader import ShardDataset, make_loader\n"
              "loader = make_loader(ShardDataset(sys.argv[1], train=True), batch_size=4, num_workers=2, device=sys.argv[2])\n"
              "batches = iter(loader); next(batches); print('one batch', flush=True)")
    result = subprocess.run([sys.executable, "-c", script, str(in_s["val"]), device], env=env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "one batch\n", result.stderr


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_6_12_last_checkpoint_has_its_epochs_best_and_eval_names_no_missing_option(capsys, in_s, tmp_path):
    config = resolve_config(None, [TINY, "batch_size=8", "epochs=1", "max_steps=2", "num_workers=0", "curves=false",
                                   "progress=false"], task="cls", model="spt_tiny", shards=str(in_s["train"]),
                            val_shards=str(in_s["val"]), out=str(tmp_path / "run"))
    row = train(config)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["best"] == row["val/top1"]
    state["config"]["task"] = "multilabel"
    torch.save(state, tmp_path / "other-task.pt")
    code, _, err = run_cli(spa_cli.train.main, capsys, "eval", "--checkpoint", tmp_path / "other-task.pt", "--shards",
                           in_s["val"], "--num-workers", 0)
    line = one_line_error(code, err, "shards are for task 'cls', not 'multilabel'")
    assert "--task" not in line


# ------------------------------------------------------------------------------------------- 7, 8


def test_7_one_labels_run_per_shard_directory(capsys, coco_root, tmp_path):
    subset = tmp_path / "subset"
    assert spa_data(capsys, "build", "coco", "--root", coco_root, "--split", "val", "--out", subset)[0] == 0
    (subset / "shards").mkdir()
    with directory_lock(subset / "shards" / LOCK, "test"):      # flock: another open file, so it conflicts
        code, _, err = spa_data(capsys, "labels", subset)
        one_line_error(code, err, str(subset / "shards"), "another `spa-data labels`", f"pid {os.getpid()}")
        assert sorted(p.name for p in (subset / "shards").iterdir()) == [LOCK]
        with pytest.raises(SpaError, match=f"pid {os.getpid()}\\) is still writing these shards"):
            ShardDataset(subset)
    # two runs with different options at once: one writes, the other is refused or comes after it
    runs = [subprocess.Popen(command("data", "labels", subset, "--shard-size", size), env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for size in (1, 2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in runs]
    assert any(code == 0 for code, _ in results), results
    for code, err in results:
        assert code == 0 or ("another `spa-data labels`" in err and "Traceback" not in err), err
    verify_shards(subset, sample=2)
    assert spa_data(capsys, "stats", subset)[0] == 0


def test_7_stats_on_an_inconsistent_shard_directory_is_one_line(capsys, coco_root, tmp_path):
    subset = tmp_path / "subset"
    assert spa_data(capsys, "build", "coco", "--root", coco_root, "--split", "val", "--out", subset)[0] == 0
    assert spa_data(capsys, "labels", subset, "--shard-size", 1)[0] == 0
    assert spa_data(capsys, "labels", subset, "--shard-size", 1, "--scales", "8,16", "--out", tmp_path / "other")[0] == 0
    shutil.copy(tmp_path / "other" / "shard-00001.h5", subset / "shards" / "shard-00001.h5")
    code, _, err = spa_data(capsys, "stats", subset)
    one_line_error(code, err, "shard-00001.h5", "strides [8, 16]")
    (subset / "shards" / "shard-00001.h5").unlink()
    code, _, err = spa_data(capsys, "stats", subset)
    one_line_error(code, err, "shard-00001.h5", "missing")


def test_8_a_moved_subset_verifies_and_a_moved_dataset_labels_with_root(capsys, coco_root, tmp_path):
    subset = tmp_path / "a" / "subset"
    assert spa_data(capsys, "build", "coco", "--root", coco_root, "--split", "val", "--out", subset)[0] == 0
    assert spa_data(capsys, "labels", subset)[0] == 0
    moved = tmp_path / "b"
    (tmp_path / "a").rename(moved)
    code, out, err = spa_data(capsys, "verify", moved / "subset" / "shards")
    assert code == 0 and "ok" in out, err
    dataset = tmp_path / "moved-data"
    coco_root.parent.rename(dataset)
    code, _, err = spa_data(capsys, "labels", moved / "subset", "--out", tmp_path / "shards2")
    one_line_error(code, err, str(coco_root), "not found")
    code, _, err = spa_data(capsys, "labels", moved / "subset", "--out", tmp_path / "shards2",
                            "--root", dataset / "coco")
    assert code == 0, err
    assert (tmp_path / "shards2" / "shard-00000.h5").read_bytes() == \
        (moved / "subset" / "shards" / "shard-00000.h5").read_bytes()


# ------------------------------------------------------------------------------------------- 9, 10


@pytest.mark.parametrize("edit, names", [
    (lambda d: d["images"][0].update(width=10**12), ["image 397133", "1000000000000", "65535"]),
    (lambda d: (d["images"][1].update(id=2**70), [a.update(image_id=2**70) for a in d["annotations"]
                                                   if a["image_id"] == 37777]),
     ["neither a string nor an integer within 64 bits"]),
])
def test_9_absurd_sizes_and_ids_end_in_one_line(capsys, coco_root, tmp_path, edit, names):
    edit_coco(coco_root, edit)
    out = tmp_path / "out"
    code, _, err = spa_data(capsys, "build", "coco", "--root", coco_root, "--split", "val", "--out", out)
    one_line_error(code, err, COCO_JSON.split("/")[1], *names)
    assert not out.exists() and not list(tmp_path.glob("out.*"))


def test_9_a_huge_label_size_is_one_line(capsys, coco_root, tmp_path):
    subset = tmp_path / "subset"
    assert spa_data(capsys, "build", "coco", "--root", coco_root, "--split", "val", "--out", subset)[0] == 0
    code, _, err = spa_data(capsys, "labels", subset, "--size", "99999999,99999999")
    one_line_error(code, err, "99999999", "16384")


def test_10_labels_pool_workers_die_with_the_command(in_s, tmp_path):
    subset = tmp_path / "subset"
    shutil.copytree(in_s["train"], subset, ignore=shutil.ignore_patterns("shards"))
    labels = command("data", "labels", subset, "--workers", 2, "--shard-size", 1)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        done = len(list((subset / "shards").glob("shard-*.h5")))
        proc = subprocess.Popen(labels, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: len(list((subset / "shards").glob("shard-*.h5"))) >= done + 2 or proc.poll() is not None,
                 60, "two more shards")
        workers = children(proc.pid)
        assert proc.poll() is None and len(workers) >= 2, "labels finished before it could be stopped"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        wait_for(lambda: not alive(workers), 10, "the pool workers to exit")
        if sig == signal.SIGTERM:
            one_line_error(proc.returncode, err, "interrupted (SIGTERM)", exit_code=143)
            assert not list((subset / "shards").glob(".shard-*")) and not (subset / "shards" / LOCK).exists()
    rerun = subprocess.run(labels, env=env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    verify_shards(subset, sample=4)


# ------------------------------------------------------------------------------------------- 11


def test_11_full_disk_ends_in_one_line_and_leaves_no_partial_file(capsys, coco_root, in_s, tmp_path, small_disk):
    disk = small_disk(16 * 1024)
    out = disk / "subset"
    code, _, err = spa_data(capsys, "build", "coco", "--root", coco_root, "--split", "val", "--out", out)
    one_line_error(code, err, str(out), "disk full")
    assert not list(disk.iterdir())

    subset = tmp_path / "subset"
    assert spa_data(capsys, "build", "coco", "--root", coco_root, "--split", "val", "--out", subset)[0] == 0
    code, _, err = spa_data(capsys, "labels", subset, "--shard-size", 1, "--out", disk / "shards")
    one_line_error(code, err, str(disk / "shards"), "disk full")
    assert not list(disk.rglob(".*"))

    disk = small_disk(1024 * 1024)                      # config and metrics fit, a checkpoint does not
    run = disk / "run"
    code, _, err = run_cli(spa_cli.train.main, capsys, "--shards", in_s["train"], "--task", "cls", "--model", "spt_tiny",
                       "--out", run, TINY, "batch_size=8", "max_steps=1", "num_workers=0", "progress=false",
                       "curves=false")
    one_line_error(code, err, str(run / "last.pt"), "disk full")
    assert not [p.name for p in run.iterdir() if "tmp" in p.name] and not (run / "last.pt").exists()


# ------------------------------------------------------------------------------------------- 12


def _voc_with_a_non_utf8_name(fixtures_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "VOC2012"
    shutil.copytree(fixtures_dir / "voc2012" / "VOCdevkit" / "VOC2012", root)
    for folder, suffix in (("Annotations", ".xml"), ("JPEGImages", ".jpg")):
        source = root / folder / f"2007_000063{suffix}"
        shutil.copy(source, os.fsdecode(os.fsencode(root / folder) + b"/caf\xe9" + suffix.encode()))
    return root


def _voc_object_without_name(fixtures_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "VOC2012"
    shutil.copytree(fixtures_dir / "voc2012" / "VOCdevkit" / "VOC2012", root)
    xml = root / "Annotations" / "2007_000063.xml"
    xml.write_text(xml.read_text().replace("<name>dog</name>", "", 1))
    return root


def _coco_as_a_list(fixtures_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    shutil.copytree(fixtures_dir / "coco" / "val-2img", root)
    (root / COCO_JSON).write_text(json.dumps([json.loads((root / COCO_JSON).read_text())]))
    return root


@pytest.mark.parametrize("make, source, names", [
    (_voc_with_a_non_utf8_name, "voc", ["caf\\xe9.jpg", "not valid UTF-8"]),
    (_voc_object_without_name, "voc", ["2007_000063.xml: object 1: no <name>"]),
    (_coco_as_a_list, "coco", ["instances_val2017.json", "top level is a JSON list"]),
])
def test_12_bad_dataset_files_are_one_clear_line(capsys, fixtures_dir, tmp_path, make, source, names):
    root = make(fixtures_dir, tmp_path)
    code, _, err = spa_data(capsys, "build", source, "--root", root, "--split", "val", "--out", tmp_path / "out")
    line = one_line_error(code, err, *names)
    assert "list indices" not in line and "unknown class ''" not in line


def test_12_bad_options_are_one_line(capsys, in_s):
    code, _, err = run_cli(spa_cli.train.main, capsys, "--shards", in_s["train"], "lr=-1")
    one_line_error(code, err, "lr must be a finite number in (0, inf), got -1")
    code, _, err = spa_data(capsys, "verify", in_s["train"], "--sample", -1)
    one_line_error(code, err, "--sample -1")
    code, _, err = run_cli(spa_cli.train.main, capsys, "eval", "--checkpoint", in_s["train"] / "none.pt", "--shards",
                       in_s["val"], "--batch-size", 0)
    one_line_error(code, err, "--batch-size 0")


def test_12_a_truncated_shard_met_in_training_is_one_line(capsys, in_s, tmp_path):
    subset = tmp_path / "subset"
    shutil.copytree(in_s["train"], subset)
    shard = subset / "shards" / "shard-00000.h5"
    shard.write_bytes(shard.read_bytes()[:4096])
    code, _, err = run_cli(spa_cli.train.main, capsys, "--shards", subset, "--task", "cls", "--model", "spt_tiny",
                       "--out", tmp_path / "run", TINY, "batch_size=8", "max_steps=1", "num_workers=2",
                       "progress=false", "curves=false")
    one_line_error(code, err, str(shard), "not a readable HDF5 shard")
