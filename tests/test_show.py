"""`spa-data show`: an overlay that reads on any image, boxes with class names, a legend, picked samples."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from spa_common.errors import SpaError
from spa_data.loader import ShardDataset
from spa_data.visualize import draw_samples, overlay, pick_samples

matplotlib.use("Agg")


def test_selected_cells_keep_their_colours_and_stand_out_on_a_blue_image():
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal((30, 60, 220), 10, size=(64, 64, 3)), 0, 255).astype(np.uint8)  # the demo's blue
    grid = np.zeros((4, 4))
    grid[1:3, 1:3] = 1
    out = overlay(image, grid, 16)
    inside, outside = np.s_[17:32, 17:32], np.s_[49:64, 1:16]   # cell interiors, away from the borders drawn
    np.testing.assert_array_equal(out[inside], image[inside])
    grey = out[outside].astype(int)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    # brightness alone tells them apart, whatever the hue (a blue tint on blue differed by a few levels)
    assert out[inside].mean() - out[outside].mean() > 60


def test_pick_samples_by_index_and_id(coco_s_demo):
    ds = ShardDataset(coco_s_demo, masks=False)
    spread = pick_samples(ds, n=3)   # by default: n samples from the first to the last
    assert len(set(spread)) == 3 and spread == sorted(spread) and spread[0] == 0 and spread[-1] == len(ds) - 1
    assert pick_samples(ds, n=100) == list(range(len(ds)))
    ids = ds.image_ids
    assert pick_samples(ds, n=1, indices=[2, 0], image_ids=[str(ids[1])]) == [2, 0, 1]
    with pytest.raises(SpaError, match=rf"no sample at index {len(ds)} \(it holds {len(ds)}: 0 to {len(ds) - 1}\)"):
        pick_samples(ds, n=1, indices=[len(ds)])
    with pytest.raises(SpaError, match="no image with id 12345678, nope"):
        pick_samples(ds, n=1, image_ids=["12345678", str(ids[0]), "nope"])


def test_boxes_carry_their_class_names_and_the_legend_names_every_mark(coco_s_demo):
    ds = ShardDataset(coco_s_demo, masks=False)
    picks = [0, len(ds) - 1]
    fig = draw_samples(ds, picks, select_threshold=0.0)
    axes = np.array(fig.axes).reshape(len(picks), len(ds.strides))
    for row, i in enumerate(picks):
        sample = ds[i]
        names = sorted(ds.classes[int(c)] for c in sample["categories"])
        for ax in axes[row]:
            boxes = [p.get_bbox().bounds for p in ax.patches]
            want = [(x1, y1, x2 - x1, y2 - y1) for x1, y1, x2, y2 in sample["boxes"].tolist()]
            np.testing.assert_allclose(sorted(boxes), sorted(want), rtol=1e-6)
            assert sorted(t.get_text() for t in ax.texts) == names
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["selected cell (label 1): image colours", "not selected: greyed", "object box, class"]


def test_show_command_draws_the_picked_samples(coco_s_demo, tmp_path, capsys):
    from spa_cli.data import main

    ds = ShardDataset(coco_s_demo, masks=False)
    png = tmp_path / "show.png"
    main(["show", str(coco_s_demo), "--index", "0,2", "--id", str(ds.image_ids[1]), "--out", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit) as stop:
        main(["show", str(coco_s_demo), "--id", "nope", "--out", str(tmp_path / "no.png")])
    err = capsys.readouterr().err
    assert stop.value.code == 1 and err.count("\n") == 1 and err.startswith("error: ") and "no image with id nope" in err
    assert not (tmp_path / "no.png").exists()
