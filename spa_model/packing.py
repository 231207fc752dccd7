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
  needs a same-image mask (always applied by :func:`spa_model.packed_attention.select_pack_attention`).

Capacity (static shapes for ``torch.compile`` / CUDA graphs): ``capacity=None`` allocates exactly
the containers needed, at the price of one host sync. A given ``capacity`` must be an upper bound:
:func:`max_containers` is always safe. A too small capacity is never handled by dropping tokens: it
fails loudly through ``torch._assert_async`` (an immediate ``RuntimeError`` on CPU; a device-side
assert on CUDA, reported at the next sync), which costs no host sync on the happy path.
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
        token_index: (num_containers * L,) long: row of the flattened (B * N) token tensor held by
            each slot; padding slots hold B * N (a dummy row the caller appends).
        slot_image: (num_containers, L) long: image index of each slot, -1 for padding.
        containers_used: () long: containers holding at least one token (for FLOPs counting).
        container_len: L.
        token_slot: (B * N,) long: slot of each token, ``num_containers * L`` for unkept tokens
            (the inverse of ``token_index``, used to scatter results back with a gather).
    """

    token_index: Tensor
    slot_image: Tensor
    containers_used: Tensor
    container_len: int
    token_slot: Tensor

    @property
    def num_containers(self) -> int:
        return self.slot_image.shape[0]


def max_containers(batch_size: int, num_tokens: int, *, container_len: int, per_image: bool = True) -> int:
    """A capacity that holds any selection of a (batch_size, num_tokens) batch."""
    if per_image:
        return batch_size * -(-num_tokens // container_len)
    return -(-(batch_size * num_tokens) // container_len)


def plan_packing(keep: Tensor, *, container_len: int, per_image: bool = True,
                 capacity: int | None = None) -> PackPlan:
    """Plan how the kept tokens of ``keep`` (B, N) bool fill containers of ``container_len`` slots.

    Tokens of each image are taken in index order n. See the module docstring for ``per_image``
    and ``capacity``.
    """
    if keep.dim() != 2 or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a (B, N) bool tensor, got {tuple(keep.shape)} {keep.dtype}")
    if container_len < 1:
        raise ValueError(f"container_len must be positive, got {container_len}")
    batch, num_tokens = keep.shape
    length = container_len
    keep_long = keep.long()
    if per_image:
        # Each image starts a fresh container: its first slot is L * (containers of earlier images).
        rank = keep_long.cumsum(1) - 1                                  # (B, N) rank inside its image
        per_image_containers = (keep_long.sum(1) + length - 1) // length  # (B,)
        first_container = per_image_containers.cumsum(0) - per_image_containers
        slot = first_container[:, None] * length + rank
        containers_used = per_image_containers.sum()
    else:
        slot = (keep_long.flatten().cumsum(0) - 1).view(batch, num_tokens)
        containers_used = (keep_long.sum() + length - 1) // length

    if capacity is None:
        capacity = int(containers_used)  # the one documented host sync
    elif capacity < 0:
        raise ValueError(f"capacity must be >= 0, got {capacity}")
    else:
        torch._assert_async(containers_used <= capacity,
                            "plan_packing: capacity is smaller than the containers this selection needs")

    num_slots = capacity * length
    flat_index = torch.arange(batch * num_tokens, device=keep.device)
    # Unkept tokens (and, after a failed capacity assert, overflowing ones) go to a trash slot.
    token_slot = torch.where(keep & (slot < num_slots), slot, num_slots).flatten()
    token_index = torch.full((num_slots + 1,), batch * num_tokens, dtype=torch.long, device=keep.device)
    token_index.scatter_(0, token_slot, flat_index)
    token_index = token_index[:num_slots]  # drop the trash slot
    slot_image = torch.where(token_index < batch * num_tokens, token_index // max(num_tokens, 1), -1)
    return PackPlan(token_index=token_index, slot_image=slot_image.view(capacity, length),
                    containers_used=containers_used, container_len=length, token_slot=token_slot)
