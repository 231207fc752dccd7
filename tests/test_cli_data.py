"""`spa-data build / merge`: the command line, and bad input ending in one clear line.

Every bad input must give exit code 1, exactly one line on stderr that starts with
``error:`` and names the file, no traceback, and nothing left at --out (nor a
temporary sibling).
"""
from __future__ import annotations

import dataclasses

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import spa_cli.data
from spa_cli.data_labels import COMMANDS as LABEL_COMMANDS
from spa_common.errors import SpaError
from spa_data.recipes import load_recipe
from spa_data.subsets import BuildOptions, Part, build_subset, merge_parts

COCO_JSON = "annotations/instances_val2017.json"


def spa_data(capsys, *args) -> tuple[int, str, str]:
    """Run `spa-data ARGS` in-process: (exit code, stdout, stderr)."""
    try:
        spa_cli.data.main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *names: str) -> None:
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, lines[0])


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f"{out.name}.tmp-*"))


@pytest.fixture()
def coco_root(fixtures_dir, tmp_path) -> Path:
    root = tmp_path / "coco"
    shutil.copytree(fixtures_dir / "coco" / "val-2img", root)
    return root


def edit_coco(root: Path, edit) -> None:
    path = root / COCO_JSON
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def build_args(root: Path, out: Path, subset: str = "coco", split: str = "val", *extra) -> list:
    return ["build", subset, "--root", root, "--split", split, "--out", out, *extra]


def test_group_has_every_command():
    names = set(spa_cli.data.group.commands)
    assert {"build", "merge", "demo-data"} <= names
    assert {c.name for c in LABEL_COMMANDS} <= names


def test_build_then_parts_and_merge(capsys, coco_root, tmp_path):
    code, out, err = spa_data(capsys, *build_args(coco_root, tmp_path / "single", "coco-s", "val", "--max-ratio", "0.3"))
    assert code == 0, err
    assert "kept 1 of 2 images" in out
    parts = [tmp_path / "p0", tmp_path / "p1"]
    for i, part in enumerate(parts):
        code, out, err = spa_data(capsys, *build_args(coco_root, part, "coco-s", "val", "--max-ratio", "0.3",
                                                      "--num-parts", 2, "--part", i))
        assert code == 0, err
        kept = json.loads((part / "summary.json").read_text())["part"]["stats"]["kept"]
        assert ("a part may keep none; the merged subset must keep some" in out) == (kept == 0), out
    code, _, err = spa_data(capsys, "merge", *parts, "--out", tmp_path / "merged")
    assert code == 0, err
    for name in ("manifest.jsonl", "annotations.jsonl", "summary.json", "ratio_hist.png"):
        assert (tmp_path / "single" / name).read_bytes() == (tmp_path / "merged" / name).read_bytes()


def test_a_subset_of_no_image_is_refused_and_not_written(capsys, coco_root, tmp_path):
    # both fixture images cover more than COCO-S's 25%
    out = tmp_path / "empty"
    code, _, err = spa_data(capsys, *build_args(coco_root, out, "coco-s", "val"))
    assert_one_line_error(code, err, f"{out}: kept 0 of 2 images (coco-s, val; dropped: ratio_at_or_above_max 2): "
                                     f"an empty subset is not written")
    assert_nothing_written(out)
    parts = [tmp_path / "p0", tmp_path / "p1"]
    for i, part in enumerate(parts):
        assert spa_data(capsys, *build_args(coco_root, part, "coco-s", "val", "--num-parts", 2, "--part", i))[0] == 0
    code, _, err = spa_data(capsys, "merge", *parts, "--out", out)
    assert_one_line_error(code, err, f"{out}: kept 0 of 2 images")


def test_library_errors_name_the_options_given(capsys, coco_root, tmp_path):
    """The library names its parameters (part, num_parts, root); the command line its options."""
    with pytest.raises(SpaError, match=r"^part 2: must be from 0 to 1 \(num_parts 2\)$"):
        Part(2, 2)
    code, _, err = spa_data(capsys, *build_args(coco_root, tmp_path / "p", "coco", "val", "--num-parts", 2,
                                                "--part", 2))
    assert_one_line_error(code, err, "--part 2: must be from 0 to 1 (--num-parts 2)")
    other_root = tmp_path / "elsewhere" / "coco"
    shutil.copytree(coco_root, other_root)
    parts = [tmp_path / "p0", tmp_path / "p1"]
    for i, (part, root) in enumerate(zip(parts, (coco_root, other_root))):
        assert spa_data(capsys, *build_args(root, part, "coco", "val", "--num-parts", 2, "--part", i))[0] == 0
    with pytest.raises(SpaError, match="built from different roots .*; give root$"):
        merge_parts(parts, tmp_path / "merged")
    code, _, err = spa_data(capsys, "merge", *parts, "--out", tmp_path / "merged")
    assert_one_line_error(code, err, "built from different roots", "give --root")
    assert_nothing_written(tmp_path / "merged")
    code, _, err = spa_data(capsys, "merge", *parts, "--out", tmp_path / "merged", "--root", coco_root)
    assert code == 0, err


BAD_GEOMETRY = {   # [geometry] table: the one line naming the recipe file and the field
    'mode = "fitt"\nsize = [640, 480]': "geometry.mode 'fitt' is not one of fit, square, pad",
    'mode = "fit"\nsize = [640]': "geometry.size [640]: need two integers from 1 to 16384",
    'mode = "fit"\nsize = [640.5, 480]': "geometry.size [640.5, 480]: need two integers",
    'mode = "pad"\nsize = [0, 128]': "geometry.size [0, 128]: need two integers",
    'mode = "square"\nsize = "448"': "geometry.size '448': need two integers",
    'mode = "fit"': "geometry.size is missing",
    'mode = "fit"\nsize = [640, 480]\nsizes = [1, 2]': "geometry: unknown key(s) sizes",
}


@pytest.mark.parametrize("table", sorted(BAD_GEOMETRY))
def test_bad_geometry_fails_when_the_recipe_is_read(capsys, tmp_path, table):
    """At `spa-data build`, before any data is read (the root does not even exist), not at `labels`."""
    recipe = tmp_path / "bad.toml"
    recipe.write_text(f'name = "bad"\nsource = "coco"\ntask = "det"\nsplits = ["val"]\n[geometry]\n{table}\n')
    out = tmp_path / "out"
    code, _, err = spa_data(capsys, "build", "--recipe", recipe, "--root", tmp_path / "no-data", "--split", "val",
                            "--out", out)
    assert_one_line_error(code, err, f"{recipe}: {BAD_GEOMETRY[table]}")
    assert_nothing_written(out)


def test_no_crowd_ratio_from_and_no_checksums_are_recorded(capsys, coco_root, tmp_path):
    code, _, err = spa_data(capsys, *build_args(coco_root, tmp_path / "o", "coco", "val", "--no-crowd",
                                                "--ratio-from", "boxes", "--no-checksums"))
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["recipe"]["crowd"] is False and summary["recipe"]["ratio_from"] == "boxes"
    assert summary["ratio_methods"] == {"boxes": 2}
    assert all(json.loads(line)["sha256"] is None for line in (tmp_path / "o" / "manifest.jsonl").open())


def test_from_manifest_names_every_missing_or_changed_image(capsys, coco_root, tmp_path):
    assert spa_data(capsys, *build_args(coco_root, tmp_path / "pub"))[0] == 0
    (coco_root / "val2017" / "000000037777.jpg").write_bytes(b"not the image")
    (coco_root / "val2017" / "000000397133.jpg").unlink()
    out = tmp_path / "rebuilt"
    code, _, err = spa_data(capsys, "build", "--from-manifest", tmp_path / "pub" / "manifest.jsonl",
                            "--root", coco_root, "--out", out)
    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err
    assert any(line.startswith("changed: image 37777") and "000000037777.jpg" in line for line in lines)
    assert any(line.startswith("missing: image 397133") and "000000397133.jpg" in line for line in lines)
    assert lines[-1].startswith("error: ") and "2 of 2 images missing or changed" in lines[-1]
    assert_nothing_written(out)


# ---------------------------------------------------------------- bad input: one line, exit 1, nothing written

def _delete_image(root):
    (root / "val2017" / "000000037777.jpg").unlink()


def _truncate_json(root):
    path = root / COCO_JSON
    path.write_bytes(path.read_bytes()[:1000])


def _unknown_category(root):
    edit_coco(root, lambda d: d["annotations"][0].update(category_id=999))


def _odd_polygon(root):
    edit_coco(root, lambda d: d["annotations"][0].update(segmentation=[[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]))


BAD_COCO = {
    "missing image file": (_delete_image, ["000000037777.jpg"]),
    "malformed JSON": (_truncate_json, ["instances_val2017.json", "malformed JSON"]),
    "unknown category": (_unknown_category, ["instances_val2017.json", "unknown category id 999"]),
    "polygon with an odd number of coordinates": (_odd_polygon, ["instances_val2017.json", "annotation 22328"]),
}


@pytest.mark.parametrize("case", sorted(BAD_COCO))
def test_bad_coco_input(capsys, coco_root, tmp_path, case):
    damage, names = BAD_COCO[case]
    damage(coco_root)
    out = tmp_path / "out"
    code, _, err = spa_data(capsys, *build_args(coco_root, out))
    assert_one_line_error(code, err, *names)
    assert_nothing_written(out)


def test_malformed_voc_xml(capsys, fixtures_dir, tmp_path):
    root = tmp_path / "VOC2012"
    shutil.copytree(fixtures_dir / "voc2012" / "VOCdevkit" / "VOC2012", root)
    xml = root / "Annotations" / "2007_000063.xml"
    xml.write_text(xml.read_text()[:200])
    out = tmp_path / "out"
    code, _, err = spa_data(capsys, *build_args(root, out, "voc", "val"))
    assert_one_line_error(code, err, "2007_000063.xml")
    assert_nothing_written(out)


@pytest.mark.parametrize("args, names", [
    (["--max-ratio", "1.5"], ["--max-ratio", "1.5", "outside [0, 1]"]),
    (["--min-ratio", "-0.1"], ["min_ratio", "-0.1", "outside [0, 1]"]),
    (["--min-ratio", "0.3", "--max-ratio", "0.2"], ["min_ratio 0.3 is not below max_ratio 0.2"]),
    (["--workers", "0"], ["--workers 0"]),
])
def test_bad_values(capsys, coco_root, tmp_path, args, names):
    out = tmp_path / "out"
    code, _, err = spa_data(capsys, *build_args(coco_root, out, "coco-s", "val", *args))
    assert_one_line_error(code, err, *names)
    assert_nothing_written(out)


def test_missing_root_and_split(capsys, coco_root, tmp_path):
    out = tmp_path / "out"
    code, _, err = spa_data(capsys, *build_args(tmp_path / "nowhere", out))
    assert_one_line_error(code, err, str(tmp_path / "nowhere"))
    code, _, err = spa_data(capsys, *build_args(coco_root, out, "coco", "train"))
    assert_one_line_error(code, err, "instances_train2017.json")
    code, _, err = spa_data(capsys, *build_args(coco_root, out, "coco", "test2017"))
    assert_one_line_error(code, err, "split 'test2017'")
    assert_nothing_written(out)


def test_unwritable_or_occupied_out(capsys, coco_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, err = spa_data(capsys, *build_args(coco_root, blocker / "out"))
    assert_one_line_error(code, err, str(blocker / "out"), "cannot create")

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    for overwrite in ((), ("--overwrite",)):   # not an earlier output: never replaced
        code, _, err = spa_data(capsys, *build_args(coco_root, occupied, "coco", "val", *overwrite))
        assert_one_line_error(code, err, str(occupied), "not a `spa-data build` output")
    assert (occupied / "keep.txt").read_text() == "mine"
    earlier = tmp_path / "earlier"
    assert spa_data(capsys, *build_args(coco_root, earlier))[0] == 0
    code, _, err = spa_data(capsys, *build_args(coco_root, earlier, "coco-s", "val", "--max-ratio", "0.3"))
    assert_one_line_error(code, err, str(earlier), "(pass --overwrite to replace it)")
    with pytest.raises(SpaError, match=r"\(pass overwrite to replace it\)$"):   # the library's own word
        build_subset(dataclasses.replace(load_recipe("coco-s"), max_ratio=0.3), BuildOptions(root=coco_root, split="val"),
                     earlier, progress=False)
    code, _, err = spa_data(capsys, *build_args(coco_root, earlier, "coco-s", "val", "--max-ratio", "0.3",
                                                "--overwrite"))
    assert code == 0 and sorted(p.name for p in earlier.iterdir()) == [
        "annotations.jsonl", "manifest.jsonl", "ratio_hist.png", "summary.json"]


def test_full_disk_leaves_nothing(capsys, coco_root, tmp_path, monkeypatch):
    """ENOSPC while writing the last output: the temporary directory is removed."""
    def no_space(summary, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("spa_data.subsets.plot_histogram", no_space)
    out = tmp_path / "out"
    code, _, err = spa_data(capsys, *build_args(coco_root, out))
    assert_one_line_error(code, err, str(out / "ratio_hist.png"), "disk full")
    assert_nothing_written(out)


def test_degenerate_objects_are_counted_not_fatal(capsys, coco_root, tmp_path):
    def damage(d):
        anns = d["annotations"]
        anns[0]["segmentation"] = [anns[0]["segmentation"][0], [1.0, 1.0, 5.0, 5.0]]   # a 2-point part
        anns[1]["bbox"] = [10.0, 10.0, 0.0, 5.0]                                        # zero width
        anns[2]["bbox"] = [5000.0, 10.0, 20.0, 20.0]                                    # outside the image
    edit_coco(coco_root, damage)
    code, _, err = spa_data(capsys, *build_args(coco_root, tmp_path / "out"))
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["skipped_objects"] == {"box_outside_image": 1, "box_zero_size": 1, "polygon_part_under_3_points": 1}
    assert summary["counts"]["kept"] == 2
    assert sum(json.loads(line)["num_objects"] for line in (tmp_path / "out" / "manifest.jsonl").open()) == 33 - 2


def test_console_script_errors_and_debug(coco_root, tmp_path):
    exe = Path(sys.executable).with_name("spa-data")
    if not exe.exists():
        pytest.skip("spa-data console script not installed next to this interpreter")
    args = [exe, *build_args(tmp_path / "nowhere", tmp_path / "out")]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    proc = subprocess.run([*args, "--debug"], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_rerun_after_a_killed_run_starts_clean(capsys, coco_root, tmp_path):
    stale = tmp_path / "out.tmp-999999999"   # no such process
    stale.mkdir()
    (stale / "manifest.jsonl").write_text("half")
    code, _, err = spa_data(capsys, *build_args(coco_root, tmp_path / "out"))
    assert code == 0, err
    assert not stale.exists() and (tmp_path / "out" / "summary.json").is_file()


def test_user_recipe_file(capsys, coco_root, tmp_path):
    recipe = tmp_path / "tight.toml"
    recipe.write_text('name = "coco-tight"\nsource = "coco"\ntask = "det"\nsplits = ["val"]\nmax_ratio = 0.3\n'
                      '[geometry]\nmode = "fit"\nsize = [640, 480]\n')
    code, out, err = spa_data(capsys, "build", "--recipe", recipe, "--root", coco_root, "--split", "val",
                              "--out", tmp_path / "out")
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["subset"] == "coco-tight" and summary["recipe"]["geometry"] == {"mode": "fit", "size": [640, 480]}
    assert summary["counts"]["kept"] == 1
