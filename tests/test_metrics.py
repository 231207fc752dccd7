"""Task metrics against hand-worked values, and COCOeval (pycocotools) on tiny known cases."""
from __future__ import annotations

import math

import pytest
import torch

from spa_train.coco_eval import CocoEvaluator
from spa_train.metrics import average_precision, mean_average_precision, topk_correct


# --- top-k ---------------------------------------------------------------------------------

def test_topk_correct_counts_hits_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.2, 0.3, 0.4],    # label 1: top-1
                           [0.9, 0.1, 0.8, 0.7, 0.6, 0.5],    # label 5: rank 5 -> top-5 only
                           [0.9, 0.1, 0.8, 0.7, 0.6, 0.5]])   # label 1: rank 6 -> neither
    hits = topk_correct(logits, torch.tensor([1, 5, 1]), (1, 5))
    assert hits.tolist() == [1.0, 2.0]


# --- multi-label AP (VOC all-points interpolation) --------------------------------------------

def test_average_precision_hand_worked():
    # ranks 1..5 hit, miss, hit, miss, hit: precision 1, 1/2, 2/3, 2/4, 3/5 at recall 1/3 .. 1.
    # Envelope at the three recall steps: 1, 2/3, 3/5 -> AP = (1 + 2/3 + 3/5) / 3 = 34/45.
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    targets = torch.tensor([1, 0, 1, 0, 1])
    assert average_precision(scores, targets) == pytest.approx(34 / 45, abs=1e-12)


def test_average_precision_uses_the_precision_envelope():
    # miss, hit, hit: raw precision at the recall steps 1/2, 2/3; the envelope lifts the first
    # to 2/3 -> AP = 2/3 (the non-interpolated sum would give 7/12).
    assert average_precision(torch.tensor([0.9, 0.5, 0.4]), torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)


def test_average_precision_ignores_input_order():
    scores = torch.tensor([0.5, 0.9, 0.7, 0.8, 0.6])
    targets = torch.tensor([1, 1, 1, 0, 0])
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert average_precision(scores, targets) == pytest.approx(average_precision(scores[perm], targets[perm]))


def test_map_leaves_out_classes_without_positives():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.8, 0.2, 0.1], [0.1, 0.7, 0.2]])
    targets = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 1, 0]])
    mean_ap, per_class = mean_average_precision(scores, targets)
    assert per_class[0] == pytest.approx(1.0)          # the positive is ranked first
    assert per_class[1] == pytest.approx(1.0)
    assert math.isnan(per_class[2])                      # no positive: undefined, not 0
    assert mean_ap == pytest.approx(1.0)


# --- COCOeval -------------------------------------------------------------------------------

def _gt(boxes, categories, masks=None):
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32), "categories": torch.tensor(categories),
              "iscrowd": torch.zeros(len(boxes), dtype=torch.uint8)}
    if masks is not None:
        target["masks"] = masks
    return target


def _dt(boxes, labels, scores, masks=None):
    pred = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64), "scores": torch.tensor(scores, dtype=torch.float32)}
    if masks is not None:
        pred["masks"] = masks
    return pred


def test_coco_perfect_detection_scores_one_with_original_category_ids():
    mask = torch.zeros(1, 40, 40, dtype=torch.uint8)
    mask[0, 10:20, 10:30] = 1
    evaluator = CocoEvaluator(num_classes=2, category_ids=[3, 7], iou_types=("bbox", "segm"))
    evaluator.add("img-a", _gt([[10, 10, 30, 20]], [1], mask),
                  _dt([[10, 10, 30, 20]], [2], [0.9], mask[:, None].float() * 0.9), size=(40, 40))
    assert evaluator.gt[0]["category_id"] == 7           # index 1 -> original id 7
    stats = evaluator.summarize()
    assert stats["bbox_AP"] == pytest.approx(1.0)
    assert stats["segm_AP"] == pytest.approx(1.0)


def test_coco_iou_06_passes_three_of_ten_thresholds():
    # gt 10x10, detection 10x6 inside it: IoU 0.6 >= 0.50, 0.55, 0.60 only -> AP = 3/10.
    evaluator = CocoEvaluator(num_classes=1)
    evaluator.add(1, _gt([[0, 0, 10, 10]], [0]), _dt([[0, 0, 10, 6]], [1], [0.9]), size=(40, 40))
    stats = evaluator.summarize()
    assert stats["bbox_AP50"] == pytest.approx(1.0)
    assert stats["bbox_AP75"] == pytest.approx(0.0)
    assert stats["bbox_AP"] == pytest.approx(0.3)


def test_coco_wrong_class_is_a_miss():
    evaluator = CocoEvaluator(num_classes=2)
    evaluator.add(1, _gt([[0, 0, 10, 10]], [0]), _dt([[0, 0, 10, 10]], [2], [0.9]), size=(40, 40))
    assert evaluator.summarize()["bbox_AP"] == pytest.approx(0.0)


def test_coco_images_without_detections_count_as_misses_and_ranks_merge():
    # Two images, one object each, only the first detected: recall tops at 1/2 with precision 1,
    # so 51 of COCO's 101 recall points have precision 1 -> AP = 51/101.
    first, second = CocoEvaluator(num_classes=1), CocoEvaluator(num_classes=1)
    first.add("a", _gt([[0, 0, 10, 10]], [0]), _dt([[0, 0, 10, 10]], [1], [0.9]), size=(40, 40))
    second.add("b", _gt([[5, 5, 15, 15]], [0]), _dt([], [], []), size=(40, 40))
    merged = CocoEvaluator(num_classes=1)
    merged.merge([first.state(), second.state()])
    assert [im["id"] for im in merged.images] == [1, 2]
    assert merged.summarize()["bbox_AP"] == pytest.approx(51 / 101)


def test_coco_masks_on_a_canvas_larger_than_the_image_are_cropped_to_it():
    # A 30x35 image on a 40x64 canvas (the loader's padding); ground truth on the canvas, the
    # prediction pasted at the image size (or the reverse): the same pixels, so IoU 1. Without the
    # crop pycocotools gives RLEs of different sizes IoU -1, and segm AP 0.
    canvas = torch.zeros(1, 40, 64, dtype=torch.uint8)
    canvas[0, 5:25, 3:30] = 1
    on_image = canvas[:, :30, :35]
    for gt, dt in ((canvas, on_image), (on_image, canvas)):
        evaluator = CocoEvaluator(num_classes=1, iou_types=("bbox", "segm"))
        evaluator.add(1, _gt([[3, 5, 30, 25]], [0], gt), _dt([[3, 5, 30, 25]], [1], [0.9], dt[:, None].float()),
                      size=(30, 35))
        assert evaluator.summarize()["segm_AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="smaller than the image"):
        CocoEvaluator(num_classes=1, iou_types=("bbox", "segm")).add(
            1, _gt([[3, 5, 30, 25]], [0], on_image), _dt([], [], [], torch.zeros(0, 1, 30, 35)), size=(40, 64))
