"""Packing plan of Select and Pack Attention: where each selected token goes.

The selected ("positive") tokens of a batch are laid out in fixed-length *containers* of
``container_len`` slots (the paper's L = M^2). A plan is pure index arithmetic on the device
(cumulative sums and one scatter), so building it costs no host sync when ``capacity`` is given.

Two layouts:

* ``per_image=True`` (default, and required in eval): each image's tokens start a fresh container,
  so at most L - 1 slots per image are padding and an image's attention partners never depend on
  the other images of the batch (outputs are batch-invariant). With everything kept and N a
  multiple of L the containers are exactly Swin's windows (the caller orders tokens window-major).
* ``per_image=False``: the paper's layout. All positive tokens of the batch fill the containers in
  order and only the last container is padded; a container may straddle two images, so attention
  needs a same-image mask (always applied by :func:`spa_model.packed_attention.packed_attention`).

Capacity: ``capacity=None`` allocates exactly the containers needed, at the price of one host sync
(images packed one after the other). A given ``capacity`` is static, which is what torch.compile
and CUDA graphs need: with ``per_image=True`` it counts containers *per image* (image b owns
containers ``[b * capacity, (b + 1) * capacity)``, so a batch-invariant budget), with
``per_image=False`` containers in all. Kept tokens beyond it are *dropped*: in index order, an
image's tokens past its ``capacity * L`` slots (or the batch's past the last slot) stay out of
attention like unselected ones, and the plan counts them (``selected - placed``). Dropping is for
rare outliers of a budget that follows the selection (:mod:`spa_model.budget`); see
docs/design.md, "Capacity and token budgets".
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PackPlan", "plan_packing", "max_containers"]


@dataclass(frozen=True)
class PackPlan:
    """Where the kept tokens of a (B, N) batch sit in ``num_containers`` containers of L slots.

    Attributes:
        token_index: (num_containers * L,) long: flat token (b * N + n) held by each slot; padding
            slots hold B * N.
        token_slot: (B * N,) long: slot of each token, ``num_containers * L`` for unkept and dropped
            tokens (the inverse of ``token_index``).
        selected: (B,) long: tokens each image selected, dropped ones included.
        container_len: L.
        num_tokens: N.
        per_image: the layout (see the module docstring).
        per_image_capacity: containers each image owns in the static per-image layout, else None.
    """

    token_index: Tensor
    token_slot: Tensor
    selected: Tensor
    container_len: int
    num_tokens: int
    per_image: bool = True
    per_image_capacity: int | None = None

    @property
    def num_containers(self) -> int:
        return self.token_index.shape[0] // self.container_len

    @property
    def num_slots(self) -> int:
        return self.token_index.shape[0]

    @property
    def slot_image(self) -> Tensor:
        """(num_containers, L) long: image index of each slot, -1 for padding (computed on use:
        the Triton kernel derives it from ``token_index`` itself)."""
        total = self.token_slot.shape[0]
        image = torch.where(self.token_index < total, self.token_index // max(self.num_tokens, 1), -1)
        return image.view(self.num_containers, self.container_len)

    @property
    def placed(self) -> Tensor:
        """(B,) long: tokens of each image that got a slot (``selected`` minus the dropped)."""
        if self.per_image_capacity is not None:
            return self.selected.clamp(max=self.per_image_capacity * self.container_len)
        if self.per_image:  # exact capacity: nothing dropped
            return self.selected
        batch = self.selected.shape[0]
        return (self.token_slot.view(batch, -1) < self.num_slots).sum(1)

    @property
    def containers_used(self) -> Tensor:
        """() long: containers holding at least one token."""
        length = self.container_len
        if self.per_image:
            return ((self.placed + length - 1) // length).sum()
        return (self.placed.sum() + length - 1) // length


def max_containers(batch_size: int, num_tokens: int, *, container_len: int, per_image: bool = True) -> int:
    """A capacity that holds any selection of a (batch_size, num_tokens) batch (per image when
    ``per_image``, in all otherwise: what ``plan_packing``'s ``capacity`` counts)."""
    if per_image:
        return -(-num_tokens // container_len)
    return -(-(batch_size * num_tokens) // container_len)


def plan_packing(keep: Tensor, *, container_len: int, per_image: bool = True,
                 capacity: int | None = None) -> PackPlan:
    """Plan how the kept tokens of ``keep`` (B, N) bool fill containers of ``container_len`` slots.

    Tokens of each image are taken in index order n. See the module docstring for ``per_image``,
    ``capacity`` and what happens to tokens beyond it.
    """
    if keep.dim() != 2 or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a (B, N) bool tensor, got {tuple(keep.shape)} {keep.dtype}")
    if container_len < 1:
        raise ValueError(f"container_len must be positive, got {container_len}")
    if capacity is not None and capacity < 0:
        raise ValueError(f"capacity must be >= 0, got {capacity}")
    batch, num_tokens = keep.shape
    length = container_len
    rank = keep.cumsum(1, dtype=torch.long)                   # 1-based rank of each kept token in its image
    selected = rank[:, -1] if num_tokens else keep.sum(1)
    if per_image and capacity is not None:
        per_image_slots = capacity * length
        before_first = (torch.arange(-1, batch * per_image_slots - 1, per_image_slots, device=keep.device)
                        if per_image_slots else keep.new_full((batch,), -1, dtype=torch.long))  # image b: b * slots - 1
        slot = rank + before_first[:, None]
        fits = keep & (rank <= per_image_slots)
        num_slots = batch * per_image_slots
    elif per_image:
        containers = (selected + length - 1) // length
        ends = containers.cumsum(0)
        num_slots = int(ends[-1]) * length if batch else 0    # the one documented host sync
        slot = rank + ((ends - containers) * length - 1)[:, None]
        fits = keep
    else:
        slot = (keep.flatten().cumsum(0, dtype=torch.long) - 1).view(batch, num_tokens)
        if capacity is None:
            kept = int(slot[-1, -1]) + 1 if batch * num_tokens else 0  # the one documented host sync
            capacity = -(-kept // length)
        num_slots = capacity * length
        fits = keep & (slot < num_slots)
    token_slot = torch.where(fits, slot, num_slots).flatten()
    token_index = torch.full((num_slots + 1,), batch * num_tokens, dtype=torch.long, device=keep.device)
    token_index.scatter_(0, token_slot, torch.arange(batch * num_tokens, device=keep.device))
    return PackPlan(token_index=token_index[:num_slots],  # the slot past the end collects the unkept
                    token_slot=token_slot, selected=selected, container_len=length, num_tokens=num_tokens,
                    per_image=per_image, per_image_capacity=capacity if per_image else None)
