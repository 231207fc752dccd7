"""Detection evaluation on real COCO val2017 images (fixtures), against pycocotools on the official file.

Predictions are made from the ground truth the way Mask R-CNN outputs them (boxes on the crop the
detector sees, 28x28 masks from torchvision's roi_align, as its mask targets are made) and go through
``Detector.postprocess`` and ``CocoMeter``: the trainer's path from detections to AP. The reference
scores the same predictions with pycocotools against the dataset's own annotation file. The two
images are 640x427 and 352x230: fit to 1333x800, their canvases are wider than their content and
the batch's canvas wider still. (With the ground truth on the padded canvas and predictions on the
crop, pycocotools gives IoU -1 to every mask pair: segm AP was 0.)
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import roi_align

import spa_model
from spa_cli.data import main as spa_data
from spa_common.errors import SpaError
from spa_data.loader import ShardDataset, make_loader
from spa_train.distributed import DistInfo
from spa_train.tasks import CocoMeter, Detector

COCO_2IMG = "coco/val-2img"
TINY = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))


def _crowd_root(fixtures: Path, out: Path) -> Path:
    """The fixture with its largest object of image 397133 turned into a crowd region
    (uncompressed RLE, as COCO stores crowds), images linked."""
    data = json.loads((fixtures / COCO_2IMG / "annotations/instances_val2017.json").read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    ann = max((a for a in data["annotations"] if a["image_id"] == 397133), key=lambda a: a["area"])
    h, w = sizes[ann["image_id"]]
    mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w)))
    flat = mask.flatten(order="F")
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    ann.update(iscrowd=1, segmentation={"counts": np.diff(np.concatenate([[0], edges])).tolist(), "size": [h, w]})
    (out / "annotations").mkdir(parents=True)
    (out / "annotations/instances_val2017.json").write_text(json.dumps(data))
    (out / "val2017").symlink_to(fixtures / COCO_2IMG / "val2017")
    return out


@pytest.fixture(scope="module", params=["official", "crowd"])
def coco(request, fixtures_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(annotation root, shards) built from the real images with `spa-data build coco` + `labels`."""
    out = tmp_path_factory.mktemp(request.param)
    root = fixtures_dir / COCO_2IMG if request.param == "official" else _crowd_root(fixtures_dir, out / "root")
    spa_data(["build", "coco", "--root", str(root), "--split", "val", "--out", str(out / "subset")])
    spa_data(["labels", str(out / "subset")])
    return root, out / "subset" / "shards"


def _detections_from_ground_truth(batch) -> list[dict]:
    """Per image: every object, crowd regions included (COCOeval must ignore a detection there, not
    count it as a false positive), as Mask R-CNN's roi heads return it (crop coordinates, 28x28 mask
    probabilities), scores falling with the object's order."""
    out = []
    for target in batch.targets:
        boxes, masks = target["boxes"], target["masks"].float()
        rois = torch.cat([torch.arange(len(boxes))[:, None].float(), boxes], dim=1)
        out.append({"boxes": boxes, "labels": target["labels"],
                    "scores": torch.linspace(0.99, 0.5, len(boxes)),
                    "masks": roi_align(masks[:, None], rois, (28, 28), 1.0)})
    return out


def _reference_stats(annotation_file: Path, predictions: list[dict], image_ids: list, category_ids: list) -> dict:
    """pycocotools on the dataset's own annotation file, the same predictions as COCO results."""
    results = []
    for image_id, p in zip(image_ids, predictions):
        masks = np.asfortranarray((p["masks"][:, 0] > 0.5).numpy().astype(np.uint8).transpose(1, 2, 0))
        for box, label, score, rle in zip(p["boxes"].tolist(), p["labels"].tolist(), p["scores"].tolist(),
                                          mask_utils.encode(masks)):
            results.append({"image_id": image_id, "category_id": category_ids[label - 1], "score": score,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "segmentation": rle})
    stats = {}
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(annotation_file))
        for iou_type in ("bbox", "segm"):
            evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), iouType=iou_type)
            evaluation.params.imgIds = list(image_ids)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            stats.update({f"{iou_type}_{k}": 100 * v for k, v in zip(("AP", "AP50", "AP75"), evaluation.stats)})
    return stats


def test_mask_and_box_ap_equal_pycocotools_on_the_dataset_file(coco):
    root, shards = coco
    dataset = ShardDataset(shards)
    batch = next(iter(make_loader(dataset, batch_size=2)))
    assert any(t["masks"].shape[-1] > w for t, (h, w) in zip(batch.targets, batch.image_sizes))  # padded canvas
    detector = Detector(spa_model.create_model("swin_tiny", **TINY), num_classes=dataset.num_classes, masks=True).eval()
    predictions = detector.postprocess(_detections_from_ground_truth(batch), batch.image_sizes, batch.original_sizes)
    assert [p["masks"].shape[-2:] for p in predictions] == [torch.Size(s) for s in batch.original_sizes]

    meter = CocoMeter(dataset)
    meter.update(predictions, batch)
    stats = meter.compute(DistInfo())
    reference = _reference_stats(root / "annotations/instances_val2017.json", predictions, batch.image_ids,
                                 dataset.category_ids)
    assert stats["images"] == 2
    for key, value in reference.items():
        assert stats[key] == pytest.approx(value, abs=1e-6), key
    assert stats["bbox_AP"] > 99 and stats["segm_AP"] > 50   # ground truth as predictions: near-perfect


def test_detector_predicts_at_the_original_size_in_eval(coco):
    _, shards = coco
    dataset = ShardDataset(shards)
    batch = next(iter(make_loader(dataset, batch_size=2)))
    torch.manual_seed(0)
    detector = Detector(spa_model.create_model("spt_tiny", **TINY), num_classes=dataset.num_classes, masks=True,
                        detector_args={"fpn_channels": 16, "mask_head_channels": 8, "box_score_thresh": 0.0,
                                       "box_detections_per_img": 5, "rpn_post_nms_top_n_test": 20}).eval()
    with torch.no_grad():
        out = detector(batch.images, batch.select, None, batch.image_sizes, batch.original_sizes)
    for prediction, (h, w) in zip(out["predictions"], batch.original_sizes):
        assert len(prediction["boxes"]) > 0
        assert prediction["masks"].shape[-2:] == (h, w)
        assert prediction["boxes"][:, 2].max() <= w and prediction["boxes"][:, 3].max() <= h


def test_evaluation_refuses_flipped_images(coco):
    _, shards = coco
    with pytest.raises(SpaError, match="unflipped"):
        CocoMeter(ShardDataset(shards, train=True, hflip=0.5))


@pytest.mark.parametrize("coco", ["official"], indirect=True)
def test_an_images_gmacs_do_not_depend_on_its_batch(coco):
    """The two images in one batch (padded to the wider) and each alone: each is counted at the size
    the detector feeds it at alone, so the batch's figure is the mean of the two alone."""
    _, shards = coco
    dataset = ShardDataset(shards)
    torch.manual_seed(0)
    detector = Detector(spa_model.create_model("spt_tiny", selector="gt", **TINY), num_classes=dataset.num_classes,
                        masks=True, detector_args={"fpn_channels": 16, "mask_head_channels": 8,
                                                   "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 10,
                                                   "box_detections_per_img": 1}).eval()

    def gmacs(batch) -> tuple[float, float]:
        with torch.no_grad():
            out = detector(batch.images, batch.select, None, batch.image_sizes, batch.original_sizes)
        for (h, w), size in zip(batch.image_sizes, out["input_sizes"]):
            assert detector.detector.transform([torch.zeros(3, h, w)])[0].tensors.shape[-2:] == size
        backbone_output = out["backbone_output"]
        return (spa_model.count_flops(detector.backbone, backbone_output, image_sizes=out["input_sizes"]).total,
                spa_model.count_flops(detector.backbone, backbone_output).total)

    pair, pair_padded = gmacs(next(iter(make_loader(dataset, batch_size=2))))
    alone = [gmacs(batch)[0] for batch in make_loader(dataset, batch_size=1)]
    assert pair == pytest.approx(sum(alone) / 2, rel=1e-12)
    assert pair_padded > pair   # what the batch's padded canvas costs
