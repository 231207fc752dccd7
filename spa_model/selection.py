"""Token selection for SPA blocks: score gates, selectors and the selection loss.

Scores are logits on a block's (unpadded) grid, (B, H, W). A selector turns them into a
:class:`Selection`: a bool ``keep`` map and, where gradients should reach the gate through the
choice itself, a straight-through ``weight`` (1.0 / 0.0 in the forward pass) that the SPA block
multiplies into the attention input (the paper's r_p = GumbelSoftmax(s) * r_g).

Selectors (``SpaConfig.selector``; :data:`SELECTORS` is the one table of their names, which the
trainer and its command line offer too):

* ``"gumbel"`` (the paper's): Gumbel-sigmoid with a threshold, as in the authors' predecessor code
  (destiny301/SSR ``gumbel_sigmoid``): ``soft = sigmoid((s + g) / tau)``, g ~ Gumbel(0, 1),
  ``keep = soft > threshold`` (threshold 0.01), straight-through ``keep - soft.detach() + soft``.
  Training samples g; eval is deterministic (g = 0: ``sigmoid(s / tau) > threshold``) so an image's
  output is reproducible and independent of its batch; ``stochastic_eval=True`` samples in eval too.
* ``"topk"``: SparseViT-style uniform budget, k = ceil(keep_ratio * H * W) tokens per image by score.
* ``"gt"``: the oracle, ``select_labels[stride] > 0`` on the block's grid.
* ``"all"``: every token, padding included; the gate is not evaluated, so SPT computes exactly what
  Swin computes (a test checks it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Mapping, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Selection", "Selector", "GumbelSelector", "TopKSelector", "OracleSelector", "AllSelector",
           "SELECTORS", "selector_class", "build_selector", "SelectionState", "gumbel_sigmoid", "prior_logit", "labels_on_grid",
           "selection_loss"]


@dataclass
class Selection:
    """keep (B, H, W) bool; weight (B, H, W) float with straight-through gradient, or None."""

    keep: Tensor
    weight: Tensor | None = None


class Selector(Protocol):
    uses_gate: ClassVar[bool]      # False: scores are not computed at all
    keeps_padding: ClassVar[bool]  # True: window padding tokens are kept too (only "all", to equal Swin)
    needs_labels: ClassVar[bool]   # True: chooses from the selection labels, which the forward must then get

    def __call__(self, scores: Tensor | None, *, labels: Tensor | None, training: bool) -> Selection: ...


def gumbel_sigmoid(scores: Tensor, *, tau: float, threshold: float, stochastic: bool) -> Selection:
    """Hard threshold on a (noisy) sigmoid with a straight-through gradient."""
    if not stochastic and not scores.requires_grad:  # the same choice in one comparison of the logits
        return Selection(scores > tau * _logit(threshold))
    logits = scores
    if stochastic:
        logits = scores - torch.empty_like(scores).exponential_().log()  # + Gumbel(0, 1) noise
    soft = torch.sigmoid(logits / tau if tau != 1 else logits)
    keep = soft > threshold
    weight = keep.to(soft.dtype) - soft.detach() + soft if soft.requires_grad else None
    return Selection(keep, weight)


def _logit(p: float) -> float:
    if p <= 0:
        return -math.inf
    return math.inf if p >= 1 else math.log(p / (1 - p))


def prior_logit(share: float, *, threshold: float, tau: float) -> float:
    """The score at which training's Gumbel selection keeps a token with probability ``share``.

    keep iff (s + g) / tau > logit(threshold), g ~ Gumbel(0, 1): P(keep) = 1 - exp(-exp(s - t)) with
    t = tau * logit(threshold), so s = t + log(-log(1 - share)). Gates whose bias starts there
    (weights near 0) start by selecting about ``share`` of the tokens (docs/design.md, "Gate prior").
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"gate_prior {share}: the initial selected share must be in (0, 1)")
    return tau * math.log(threshold / (1.0 - threshold)) + math.log(-math.log1p(-share))


@dataclass
class GumbelSelector:
    threshold: float = 0.01
    tau: float = 1.0
    stochastic_eval: bool = False
    uses_gate: ClassVar[bool] = True
    keeps_padding: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False

    def __call__(self, scores: Tensor, *, labels: Tensor | None, training: bool) -> Selection:
        return gumbel_sigmoid(scores, tau=self.tau, threshold=self.threshold,
                              stochastic=training or self.stochastic_eval)


@dataclass
class TopKSelector:
    keep_ratio: float = 0.5
    uses_gate: ClassVar[bool] = True
    keeps_padding: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False

    def __call__(self, scores: Tensor, *, labels: Tensor | None, training: bool) -> Selection:
        batch, height, width = scores.shape
        count = min(height * width, math.ceil(self.keep_ratio * height * width))
        top = scores.detach().flatten(1).topk(count, dim=1).indices
        keep = torch.zeros(batch, height * width, dtype=torch.bool, device=scores.device)
        return Selection(keep.scatter_(1, top, True).view(batch, height, width))


@dataclass
class OracleSelector:
    uses_gate: ClassVar[bool] = True
    keeps_padding: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = True

    def __call__(self, scores: Tensor, *, labels: Tensor | None, training: bool) -> Selection:
        if labels is None:
            raise ValueError("selector 'gt' needs select_labels for every SPA stride")
        return Selection(labels_on_grid(labels, scores.shape[-2:]) > 0)


@dataclass
class AllSelector:
    uses_gate: ClassVar[bool] = False
    keeps_padding: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = False

    def __call__(self, scores: Tensor | None, *, labels: Tensor | None, training: bool) -> Selection:
        raise RuntimeError("AllSelector keeps every token; the SPA block does not ask it")


SELECTORS: Mapping[str, type] = {
    "gumbel": GumbelSelector, "topk": TopKSelector, "gt": OracleSelector, "all": AllSelector,
}


def selector_class(name: str) -> type:
    """The selector class registered as ``name``; a ValueError naming the known ones otherwise."""
    if name not in SELECTORS:
        raise ValueError(f"unknown selector {name!r}; expected one of {', '.join(SELECTORS)}")
    return SELECTORS[name]


def build_selector(name: str, settings: Any) -> Selector:
    """The selector registered as ``name``, its fields read from ``settings`` (a ``SpaConfig``, whose
    fields of the same names are the selectors' settings)."""
    cls = selector_class(name)
    return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


def labels_on_grid(labels: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Crop (B, h, w) labels to ``size`` and zero-pad where the grid is larger (padded maps)."""
    height, width = size
    labels = labels[:, :height, :width]
    if labels.shape[-2:] == (height, width):
        return labels  # no copy
    return F.pad(labels, (0, width - labels.shape[-1], 0, height - labels.shape[-2]))


def selection_loss(scores: Mapping[int, list[Tensor]], select_labels: Mapping[int, Tensor]) -> Tensor:
    """BCE-with-logits of every gate's score map against its stride's labels, summed over gates.

    Each map's BCE is the mean over its cells; the sum runs over the stride-8 gate and every SPA
    block (the paper's L_select; alpha is the trainer's). Empty ``scores`` (Swin, or the "all"
    selector) give 0.
    """
    total = None
    for stride, maps in scores.items():
        if not maps:
            continue
        if stride not in select_labels:
            raise ValueError(f"selection_loss: gates score at stride {stride} but the selection labels are at "
                             f"strides {', '.join(map(str, sorted(select_labels))) or 'none'}")
        target = labels_on_grid(select_labels[stride], maps[0].shape[-2:]).float()
        for logits in maps:
            term = F.binary_cross_entropy_with_logits(logits.float(), target)
            total = term if total is None else total + term
    if total is None:
        device = next((l.device for l in select_labels.values()), None)
        return torch.zeros((), device=device)
    return total


@dataclass
class SelectionState:
    """What flows between the SPA blocks of one forward pass, and what they record.

    ``s_up``: the finer scale's score map, already pooled to the current stage's grid (or None);
    ``labels``: the current stage's selection labels (or None); ``stride``: the current stage's.
    """

    selector: Selector
    select_labels: Mapping[int, Tensor] | None
    stride: int = 0
    s_up: Tensor | None = None
    scores: dict[int, list[Tensor]] = field(default_factory=dict)
    blocks: list = field(default_factory=list)  # one spa_model.models.BlockSelection per SPA block

    @property
    def labels(self) -> Tensor | None:
        return None if self.select_labels is None else self.select_labels.get(self.stride)

    def record_scores(self, stride: int, scores: Tensor) -> None:
        self.scores.setdefault(stride, []).append(scores)
