"""Task metrics as pure functions: top-k accuracy and multi-label average precision.

Multi-label AP (VOC-S) follows the PASCAL VOC 2010+ devkit ("all points" interpolation):
rank the images by the class score (descending; ties keep input order), compute precision
and recall after each rank, replace each precision by the highest precision at any equal
or higher recall (the monotone envelope), and sum the envelope over the recall steps:
``AP = sum_i (r_i - r_{i-1}) * max_{j >= i} p_j``. mAP is the mean over the classes that
have at least one positive image; classes without positives have no defined AP and are
left out of the mean (reported as NaN per class).
"""
from __future__ import annotations

import math

import torch


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """Number of samples whose label is among the top-k logits, for each k (float64 tensor)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top == labels[:, None]
    return torch.stack([hits[:, :min(k, kmax)].any(dim=1).sum() for k in ks]).double()


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """VOC all-points AP of one class; ``targets`` in {0, 1}. NaN when there is no positive."""
    targets = targets.double().flatten()
    num_pos = float(targets.sum())
    if num_pos == 0:
        return math.nan
    order = torch.sort(scores.double().flatten(), descending=True, stable=True).indices
    hits = targets[order]
    tp = hits.cumsum(0)
    precision = tp / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    recall = tp / num_pos
    envelope = precision.flip(0).cummax(0).values.flip(0)
    recall_step = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((recall_step * envelope).sum())


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> tuple[float, list[float]]:
    """(mAP over classes with positives, per-class AP list with NaN where undefined); inputs (N, K)."""
    per_class = [average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])]
    defined = [ap for ap in per_class if not math.isnan(ap)]
    return (sum(defined) / len(defined) if defined else math.nan), per_class
