"""COCO-style detection evaluation with pycocotools, on exactly the evaluated images.

Ground truth and detections are added image by image at one ``size`` (the trainer uses the
original image size, see docs/design.md "Detection and training recipes"). Masks may lie on a canvas
larger than the image (the loader's padded canvas): they are cropped to its top-left ``size``
first, because pycocotools gives IoU -1 (never a match) to RLEs of different sizes. Category
indices are mapped back to the dataset's original category ids when it has them (COCO), else to
``index + 1``. ``params.imgIds`` is restricted to the images seen, so images outside the subset
never count as misses. Box areas are the box area, mask areas the RLE pixel count (the subset
files carry no polygon areas).
"""
from __future__ import annotations

import contextlib
import io
from typing import Optional, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class CocoEvaluator:
    """Collects ground truth and detections image by image, then runs COCOeval.

    ``add(image_id, target, prediction, size=(h, w))``: ``target`` has ``boxes`` (K, 4) xyxy,
    ``categories`` (K,) 0-based, optional ``masks`` (K, H, W) uint8 and ``iscrowd`` (K,);
    ``prediction`` has torchvision's ``boxes``, ``labels`` (1-based), ``scores`` and optional
    ``masks`` (N, 1, H, W) probabilities (binarised at 0.5). H, W >= size: larger canvases are
    cropped to the image; smaller masks are a ValueError.
    """

    def __init__(self, *, num_classes: int, category_ids: Optional[Sequence[int]] = None,
                 iou_types: Sequence[str] = ("bbox",)):
        self.category_ids = list(category_ids) if category_ids else list(range(1, num_classes + 1))
        self.iou_types = tuple(iou_types)
        self.images: list[dict] = []
        self.gt: list[dict] = []
        self.dt: list[dict] = []

    def add(self, image_id, target: dict, prediction: dict, *, size: tuple[int, int]) -> None:
        coco_id = len(self.images) + 1  # dataset ids may be strings (BDD): COCO needs ints
        height, width = size
        self.images.append({"id": coco_id, "source_id": image_id, "height": height, "width": width})
        segm = "segm" in self.iou_types
        gt_masks = _on_image(target.get("masks"), size, image_id=image_id, what="ground-truth") if segm else None
        dt_masks = _on_image(_binarise(prediction.get("masks")), size, image_id=image_id,
                             what="predicted") if segm else None
        self.gt.extend(_annotations(coco_id, target["boxes"], target["categories"], self.category_ids,
                                    masks=gt_masks, iscrowd=target.get("iscrowd")))
        self.dt.extend(_annotations(coco_id, prediction["boxes"], prediction["labels"] - 1, self.category_ids,
                                    masks=dt_masks, scores=prediction["scores"]))

    def state(self) -> dict:
        """Picklable contents, to gather from every rank (see ``merge``)."""
        return {"images": self.images, "gt": self.gt, "dt": self.dt}

    def merge(self, states: Sequence[dict]) -> None:
        """Combine the states of several evaluators (ranks), renumbering image ids."""
        self.images, self.gt, self.dt = [], [], []
        for state in states:
            offset = len(self.images)
            self.images += [{**im, "id": im["id"] + offset} for im in state["images"]]
            self.gt += [{**a, "image_id": a["image_id"] + offset} for a in state["gt"]]
            self.dt += [{**a, "image_id": a["image_id"] + offset} for a in state["dt"]]

    def summarize(self) -> dict[str, float]:
        """``{'bbox_AP': .., 'bbox_AP50': .., ..., 'segm_AP': ..}`` on the 0-1 scale (-1: undefined)."""
        results: dict[str, float] = {}
        if not self.images:
            return results
        for iou_type in self.iou_types:
            stats = evaluate(self.images, self.gt, self.dt, self.category_ids, iou_type=iou_type)
            results.update({f"{iou_type}_{name}": float(v) for name, v in zip(STAT_NAMES, stats)})
        return results


def evaluate(images: list[dict], gt: list[dict], dt: list[dict], category_ids: Sequence[int], *,
             iou_type: str) -> np.ndarray:
    """COCOeval's 12 summary statistics for ``iou_type`` ('bbox' or 'segm'), quietly."""
    ground_truth = COCO()
    ground_truth.dataset = {
        "images": [{k: im[k] for k in ("id", "height", "width")} for im in images],
        "annotations": [{**a, "id": i + 1} for i, a in enumerate(gt)],
        "categories": [{"id": c, "name": str(c)} for c in category_ids],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
        detections = ground_truth.loadRes([dict(a) for a in dt]) if dt else COCO()
        if not dt:  # loadRes refuses an empty list: an empty result set scores 0
            detections.dataset = {"images": ground_truth.dataset["images"], "annotations": [],
                                  "categories": ground_truth.dataset["categories"]}
            detections.createIndex()
        coco_eval = COCOeval(ground_truth, detections, iouType=iou_type)
        coco_eval.params.imgIds = [im["id"] for im in images]
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats[: len(STAT_NAMES)]


def _annotations(coco_id: int, boxes: torch.Tensor, categories: torch.Tensor, category_ids: Sequence[int], *,
                 masks: Optional[torch.Tensor] = None, iscrowd: Optional[torch.Tensor] = None,
                 scores: Optional[torch.Tensor] = None) -> list[dict]:
    boxes = boxes.detach().float().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    rles = _encode(masks) if masks is not None and len(boxes) else [None] * len(boxes)
    out = []
    for k, (box, category, rle) in enumerate(zip(xywh, categories.tolist(), rles)):
        ann = {"image_id": coco_id, "category_id": category_ids[int(category)], "bbox": box}
        if rle is not None:
            ann["segmentation"] = rle
        if scores is None:  # ground truth
            ann["iscrowd"] = int(iscrowd[k]) if iscrowd is not None else 0
            ann["area"] = float(mask_utils.area(rle)) if rle is not None else box[2] * box[3]
        else:
            ann["score"] = float(scores[k])
        out.append(ann)
    return out


def _encode(masks: torch.Tensor) -> list[dict]:
    array = np.asfortranarray(masks.detach().to(torch.uint8).cpu().numpy().transpose(1, 2, 0))
    rles = mask_utils.encode(array)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")  # JSON-able, picklable across ranks
    return rles


def _binarise(masks: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if masks is None else (masks[:, 0] > 0.5)


def _on_image(masks: Optional[torch.Tensor], size: tuple[int, int], *, image_id, what: str) -> Optional[torch.Tensor]:
    """(K, H, W) masks cropped to the image's ``size``, its top-left corner of the canvas."""
    if masks is None:
        return None
    height, width = size
    if masks.shape[-2] < height or masks.shape[-1] < width:
        raise ValueError(f"image {image_id!r}: {what} masks are {masks.shape[-2]}x{masks.shape[-1]}, "
                         f"smaller than the image ({height}x{width})")
    return masks[..., :height, :width]
