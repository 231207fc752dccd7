"""The three tasks: how a backbone becomes a trainable model, its loss, and its evaluation.

Every task model has the same signature, ``model(images, select, targets=None, image_sizes=None,
original_sizes=None)`` -> dict with ``predictions`` (eval) or ``task_loss`` (training, when targets
are given), plus the backbone's ``scores`` and its whole ``backbone_output`` (select ratios, dropped
tokens, containers for the FLOPs count), so one DDP-wrapped forward serves the trainer, and the
trainer adds ``alpha * selection_loss(scores, select)`` the same way for every task.
``original_sizes`` (detection): the (h, w) the predictions are mapped back to. A detector also
returns ``input_sizes``: the (h, w) each image's backbone input has when it comes alone (its crop,
padded as the detector pads), where the FLOPs counter counts it; a classifier's are counted on the
batch's canvas, which every shipped classification recipe makes the same for all its images.
"""
from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spa_common.errors import SpaError
from spa_model.selection import SELECTORS
from spa_train.config import TrainConfig
from spa_train.detection import build_detector
from spa_train.distributed import DistInfo, all_gather_objects, all_reduce_sum, broadcast_object
from spa_train.metrics import mean_average_precision, topk_correct


class Classifier(nn.Module):
    """Backbone + its classification head; ``loss_fn(logits, targets)`` is the task loss."""

    def __init__(self, backbone: nn.Module, *, loss_fn: Callable):
        super().__init__()
        self.backbone = backbone
        self.loss_fn = loss_fn
        self.needs_labels = backbone.contract().needs_labels

    def forward(self, images, select, targets=None, image_sizes=None, original_sizes=None) -> dict[str, Any]:
        features = self.backbone.forward_features(images, select_labels=select if self.needs_labels else None)
        logits = self.backbone.forward_head(features)
        out = {"predictions": logits, "scores": features.scores, "backbone_output": features}
        if targets is not None:
            out["task_loss"] = self.loss_fn(logits, targets)
        return out


class Detector(nn.Module):
    """torchvision R-CNN around the backbone; training returns the summed R-CNN losses.

    Each image is its content crop ``image_sizes`` of the canvas. In eval, predictions are mapped
    to ``original_sizes`` (boxes scaled, masks pasted there) by torchvision's own postprocess, as
    GeneralizedRCNN does after its resize: predictions and the dataset's annotations then share
    one frame (docs/design.md, "Detection and training recipes").
    """

    def __init__(self, backbone: nn.Module, *, num_classes: int, masks: bool, detector_args: Optional[dict] = None):
        super().__init__()
        self.detector = build_detector(backbone, num_classes=num_classes, masks=masks, **(detector_args or {}))
        self.needs_labels = backbone.contract().needs_labels

    @property
    def backbone(self) -> nn.Module:
        return self.detector.backbone.body.backbone

    def forward(self, images, select, targets=None, image_sizes=None, original_sizes=None) -> dict[str, Any]:
        adapter = self.detector.backbone.body
        adapter.select_labels = select if self.needs_labels else None
        sizes = [tuple(s) for s in image_sizes] if image_sizes else [tuple(images.shape[-2:])] * len(images)
        crops = [image[:, :h, :w] for image, (h, w) in zip(images, sizes)]
        if self.training:
            out = {"task_loss": sum(self.detector(crops, [_trainable(t) for t in targets]).values())}
        else:
            detections = self._detect(crops)
            out = {"predictions": self.postprocess(detections, sizes, original_sizes or sizes)}
        features = adapter.last_output
        step = self.detector.transform.size_divisible
        alone = [(-(-h // step) * step, -(-w // step) * step) for h, w in sizes]
        return {**out, "scores": features.scores, "backbone_output": features, "input_sizes": alone}

    def _detect(self, crops: list[torch.Tensor]) -> list[dict]:
        """GeneralizedRCNN's eval forward up to (excluding) its postprocess: boxes on the crops, 28x28 masks."""
        detector = self.detector
        images, _ = detector.transform(crops)
        features = detector.backbone(images.tensors)
        proposals, _ = detector.rpn(images, features)
        detections, _ = detector.roi_heads(features, proposals, images.image_sizes)
        return detections

    def postprocess(self, detections: list[dict], crop_sizes: list[tuple[int, int]],
                    original_sizes: list[tuple[int, int]]) -> list[dict]:
        """Detections on the crops -> at ``original_sizes`` (torchvision: boxes rescaled, masks pasted)."""
        return self.detector.transform.postprocess(detections, crop_sizes, [tuple(s) for s in original_sizes])


def _trainable(target: dict) -> dict:
    """torchvision has no notion of crowd regions: train on the non-crowd objects only."""
    if "iscrowd" not in target:
        return target
    keep = target["iscrowd"] == 0
    return {k: (v[keep] if k in ("boxes", "labels", "masks") else v) for k, v in target.items()}


# --- evaluation ----------------------------------------------------------------------------

class AccuracyMeter:
    """Top-1 / top-5 accuracy in percent, exact across ranks (summed counts)."""

    def __init__(self):
        self.counts = torch.zeros(3, dtype=torch.float64)

    def update(self, predictions, batch) -> None:
        labels = batch.targets
        hits = topk_correct(predictions.float(), labels, (1, 5)).cpu()
        self.counts += torch.cat([hits, torch.tensor([float(len(labels))], dtype=torch.float64)])

    def compute(self, info: DistInfo) -> dict[str, float]:
        top1, top5, n = all_reduce_sum(self.counts.to(_reduce_device(info)), info).tolist()
        return {"top1": 100 * top1 / max(n, 1), "top5": 100 * top5 / max(n, 1), "images": int(n)}


class MultiLabelMeter:
    """mAP in percent over the classes with positives (see ``spa_train.metrics``)."""

    def __init__(self, classes: list[str]):
        self.classes = classes
        self.scores: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, predictions, batch) -> None:
        self.scores.append(predictions.float().sigmoid().cpu())
        self.targets.append(batch.targets.cpu())

    def compute(self, info: DistInfo) -> dict[str, float]:
        gathered = all_gather_objects((torch.cat(self.scores), torch.cat(self.targets)), info)
        scores = torch.cat([s for s, _ in gathered])
        targets = torch.cat([t for _, t in gathered])
        mean_ap, per_class = mean_average_precision(scores, targets)
        return {"mAP": 100 * mean_ap, "images": len(scores),
                **{f"AP/{name}": 100 * ap for name, ap in zip(self.classes, per_class)}}


class CocoMeter:
    """COCOeval (bbox, and segm when the shards have masks) in percent, on rank 0, then shared.

    At the original image size: the ground truth is each image's stored annotations (boxes and
    RLE masks as in the dataset's files, read from ``dataset``), the predictions arrive there
    from ``Detector`` (``original_sizes``). Flipped images would not match their annotations.
    """

    def __init__(self, dataset):
        from spa_train.coco_eval import CocoEvaluator  # pycocotools: needed for detection only

        if dataset.hflip:
            raise SpaError(f"{dataset.path}: detection is evaluated on unflipped images (hflip is {dataset.hflip})")
        self.dataset = dataset
        self.masks = dataset_has_masks(dataset)
        self.evaluator = CocoEvaluator(num_classes=dataset.num_classes, category_ids=dataset.category_ids,
                                       iou_types=("bbox", "segm") if self.masks else ("bbox",))
        self._index: Optional[dict] = None

    def update(self, predictions, batch) -> None:
        if self._index is None:
            self._index = {image_id: i for i, image_id in enumerate(self.dataset.image_ids)}
        for image_id, prediction in zip(batch.image_ids, predictions):
            raw = self.dataset.raw(self._index[image_id])
            if "masks" in prediction:  # binarise on the device: a quarter of the bytes to copy
                prediction = {**prediction, "masks": (prediction["masks"] > 0.5).to(torch.uint8)}
            self.evaluator.add(image_id, original_target(raw, masks=self.masks),
                               {k: v.cpu() for k, v in prediction.items()}, size=raw["orig_hw"])

    def compute(self, info: DistInfo) -> dict[str, float]:
        states = all_gather_objects(self.evaluator.state(), info)
        stats = None
        if info.is_main:
            self.evaluator.merge(states)
            stats = {k: 100 * v if v >= 0 else v for k, v in self.evaluator.summarize().items()}
            stats["images"] = len(self.evaluator.images)
        return broadcast_object(stats, info)


def original_target(raw: dict, *, masks: bool) -> dict:
    """An image's ground truth at its original size from its stored fields (``ShardDataset.raw``):
    boxes, 0-based categories, crowd flags and, with ``masks``, its RLE masks decoded (a box where
    an object has none, rasterised by pycocotools)."""
    target = {"boxes": torch.from_numpy(raw["boxes"].astype(np.float32)).reshape(-1, 4),
              "categories": torch.from_numpy(raw["categories"].astype(np.int64)),
              "iscrowd": torch.from_numpy(raw["iscrowd"].astype(np.uint8))}
    if masks:
        from pycocotools import mask as mask_utils

        h, w = raw["orig_hw"]
        rles = [{"size": [h, w], "counts": rle} if rle else
                mask_utils.frPyObjects([[x1, y1, x2 - x1, y2 - y1]], h, w)[0]
                for rle, (x1, y1, x2, y2) in zip(raw["rles"], raw["boxes"].tolist())]
        decoded = mask_utils.decode(rles) if rles else np.zeros((h, w, 0), np.uint8)
        target["masks"] = torch.from_numpy(np.ascontiguousarray(decoded.transpose(2, 0, 1)))
    return target


def _reduce_device(info: DistInfo) -> torch.device:
    """NCCL reduces CUDA tensors only."""
    return torch.device("cuda", torch.cuda.current_device()) if info.enabled and torch.cuda.is_available() \
        and torch.distributed.get_backend() == "nccl" else torch.device("cpu")


# --- the task registry ----------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    """What differs between tasks; looked up by name in ``TASKS`` (one per name of spa_data's tasks)."""

    name: str
    metric: str                                   # the validation metric that picks best.pt
    heads: bool                                   # backbone built with a classification head
    build: Callable[..., nn.Module]               # (backbone, dataset, config) -> task model
    meter: Callable[..., Any]                     # (dataset) -> meter with update/compute
    unused_parameters: bool = False               # some parameters may get no gradient in a step (DDP must look)


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def _binary_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label: one sigmoid per class, mean over images and classes."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels)


def _build_classifier(backbone, dataset, config: TrainConfig) -> nn.Module:
    loss = functools.partial(_cross_entropy, label_smoothing=config.label_smoothing)
    return Classifier(backbone, loss_fn=loss)


def _build_multilabel(backbone, dataset, config: TrainConfig) -> nn.Module:
    return Classifier(backbone, loss_fn=_binary_cross_entropy)


def _build_detector(backbone, dataset, config: TrainConfig) -> nn.Module:
    return Detector(backbone, num_classes=dataset.num_classes, masks=dataset_has_masks(dataset),
                    detector_args={"fpn_channels": config.fpn_channels,
                                   "mask_head_channels": config.mask_head_channels, **config.detector_args})


def dataset_has_masks(dataset, *, probe: int = 64) -> bool:
    """Whether the shards carry instance masks (Mask R-CNN) or only boxes (Faster R-CNN).

    Decided from the first ``probe`` samples' stored masks (BDD det labels have none, COCO's do).
    """
    if not dataset.with_masks:
        return False
    return any(any(len(r) for r in dataset.raw(i)["rles"]) for i in range(min(len(dataset), probe)))


TASKS: dict[str, Task] = {
    "cls": Task("cls", "top1", True, _build_classifier, lambda ds: AccuracyMeter()),
    "multilabel": Task("multilabel", "mAP", True, _build_multilabel, lambda ds: MultiLabelMeter(list(ds.classes))),
    # the heads get no gradient from an image without objects
    "det": Task("det", "bbox_AP", False, _build_detector, CocoMeter, unused_parameters=True),
}


def build_task_model(config: TrainConfig, dataset) -> nn.Module:
    """The backbone ``config.model`` (spa_model) wrapped for ``config.task``; SpaError when they do not fit."""
    import spa_model

    task = TASKS[config.task]
    names = list(spa_model.list_models())
    if config.model not in names:
        close = difflib.get_close_matches(config.model, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(names)}"
        raise SpaError(f"unknown model {config.model!r}{hint}")
    try:
        backbone = spa_model.create_model(config.model, num_classes=dataset.num_classes if task.heads else 0,
                                          **backbone_options(config.selector, config.model_args))
    except (TypeError, ValueError) as e:
        raise SpaError(f"model {config.model!r} does not fit: {e} (selector {config.selector!r}, "
                       f"model_args {config.model_args})") from None
    return task.build(backbone, dataset, config)


def backbone_options(selector: Optional[str], model_args: dict) -> dict:
    """``create_model`` keyword overrides: ``model_args`` and the selector (None: the model's own; Swin
    and STViT-R have none and refuse one). The selector comes through its own key only."""
    if "selector" in model_args:
        raise SpaError(f"model_args.selector: the selector has its own key, selector "
                       f"({', '.join(SELECTORS)})")
    return dict(model_args) if selector is None else {**model_args, "selector": selector}
