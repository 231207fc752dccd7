"""Static token budgets of SPA blocks: containers per image, following the selections the gate makes.

A static number of containers (no host sync, one shape for torch.compile and CUDA graphs) has to
come from somewhere. With ``SpaConfig.capacity="auto"`` (the default) each SPA block holds a
:class:`TokenBudget`: a share of each image's tokens, a persistent buffer saved with the model, so
a trained model evaluates with the budget its training settled on. It starts at 1.0 (every
selection fits). In training the block records the largest share any image selected (on the
device, no sync); :func:`update_token_budgets`, called once per optimizer step, looks at that peak
every ``interval`` calls (one host read) and moves the budget to the peak plus a margin, rounded up
to a multiple of ``1 / levels`` (so torch.compile sees few shapes): at once when it must grow,
after ``patience`` looks in a row when it may shrink. Selections beyond the budget between two
looks are dropped from attention (:mod:`spa_model.packing`) and counted per block
(``FeatureOutput.dropped``). The reasoning and the measurements: docs/design.md, "Capacity and
token budgets".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["BudgetPolicy", "TokenBudget", "rank_local_buffers", "token_budgets", "update_token_budgets"]


@dataclass(frozen=True)
class BudgetPolicy:
    """How a learned budget follows the selections."""

    levels: int = 32        # budgets are multiples of 1 / levels of an image's tokens
    margin: float = 0.05    # headroom above the largest share seen, relative
    interval: int = 20      # optimizer steps between two looks at the recorded peak (one host read)
    patience: int = 5       # looks in a row below the budget before it shrinks

    def __post_init__(self):
        if self.levels < 1 or self.interval < 1 or self.patience < 1 or self.margin < 0:
            raise ValueError(f"invalid budget policy {self}")

    def level(self, share: float) -> float:
        """The smallest level >= share * (1 + margin), within [1 / levels, 1]."""
        return min(1.0, max(1, math.ceil(share * (1 + self.margin) * self.levels - 1e-9)) / self.levels)


class TokenBudget(nn.Module):
    """The budget of one SPA block: ``share`` of each image's (unpadded) tokens.

    ``learned=False`` keeps it fixed (a float ``capacity``); a learned one moves in
    :func:`update_token_budgets`. ``value`` is the host copy read for shapes, kept equal to the
    ``share`` buffer (also after ``load_state_dict``).
    """

    def __init__(self, share: float, *, learned: bool):
        super().__init__()
        if not 0 < share <= 1:
            raise ValueError(f"a token budget is a share in (0, 1], got {share}")
        self.learned = learned
        self.value = float(share)
        self.register_buffer("share", torch.tensor(self.value))
        self.register_buffer("peak", torch.full((), -1.0), persistent=False)  # -1: nothing seen since the last look
        self._calls = 0
        self._shrink_to: float | None = None
        self._shrink_looks = 0

    def containers(self, tokens: int, *, container_len: int, batch: int | None = None) -> int:
        """Containers for ``share`` of ``tokens`` per image (``batch`` given: for a batch-wide layout)."""
        budget = math.ceil(self.value * tokens) * (batch or 1)
        return max(1, -(-budget // container_len))

    def observe(self, selected: Tensor, tokens: int) -> None:
        """Record (B,) selected counts of a training batch of images with ``tokens`` tokens each."""
        if self.learned and selected.numel():
            torch.maximum(self.peak, selected.amax() * (1.0 / max(tokens, 1)), out=self.peak)

    def due(self, policy: BudgetPolicy) -> bool:
        """Count one optimizer step; True on the steps a learned budget looks at its peak."""
        self._calls += 1
        return self.learned and self._calls % policy.interval == 0

    def move(self, peak: float, policy: BudgetPolicy) -> bool:
        """Move the budget after a looked-at ``peak`` (-1: nothing seen); True if it changed."""
        if peak < 0:
            return False
        target = policy.level(peak)
        if target > self.value:
            self._shrink_to, self._shrink_looks = None, 0
            return self._set(target)
        if target < self.value:
            self._shrink_to = max(target, self._shrink_to or 0.0)
            self._shrink_looks += 1
            if self._shrink_looks >= policy.patience:
                shrink_to, self._shrink_to, self._shrink_looks = self._shrink_to, None, 0
                return self._set(shrink_to)
        else:
            self._shrink_to, self._shrink_looks = None, 0
        return False

    def _set(self, share: float) -> bool:
        self.value = share
        self.share.fill_(share)
        return True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.value = float(self.share)

    def extra_repr(self) -> str:
        return f"share={self.value:.4g}, learned={self.learned}"


def token_budgets(model: nn.Module) -> list[TokenBudget]:
    """The model's learned and fixed token budgets, in module order."""
    return [module for module in model.modules() if isinstance(module, TokenBudget)]


def update_token_budgets(model: nn.Module | Iterable[TokenBudget], policy: BudgetPolicy = BudgetPolicy()) -> bool:
    """Call once per optimizer step in a training loop (with the model, or with its
    :func:`token_budgets` found once); True when a budget changed (a new shape: torch.compile
    recompiles). Does nothing for models without learned budgets.

    Every ``policy.interval`` calls the peaks of all budgets are read in one host transfer; under
    ``torch.distributed`` they are first reduced to their maximum over ranks, so every rank moves
    to the same budgets (leave :func:`rank_local_buffers` out of DistributedDataParallel's broadcast).
    That makes it a collective call: every rank calls it after every optimizer step."""
    budgets = token_budgets(model) if isinstance(model, nn.Module) else model
    due = [budget for budget in budgets if budget.due(policy)]
    if not due:
        return False
    with torch.no_grad():
        peaks = torch.stack([budget.peak for budget in due])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
        for budget in due:
            budget.peak.fill_(-1.0)
    changed = False
    for budget, peak in zip(due, peaks.tolist()):                 # the one host read
        changed |= budget.move(peak, policy)
    return changed


def rank_local_buffers(model: nn.Module) -> list[str]:
    """Names of the buffers each rank records for itself (the budgets' peaks), for
    ``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model``: broadcast from rank 0
    at every forward, they would lose the other ranks' selections."""
    return [f"{name}.peak" if name else "peak" for name, module in model.named_modules()
            if isinstance(module, TokenBudget)]
