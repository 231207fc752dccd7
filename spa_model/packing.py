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
        containers_used: () long: containers holding at least one token (for FLOPs counting).
        container_len: L.
        token_slot: (B * N,) long: slot of each token, ``num_containers * L`` for unkept tokens
            (the inverse of ``token_index``, used to scatter results back with a gather).
        num_tokens: N.
    """

    token_index: Tensor
    containers_used: Tensor
    container_len: int
    token_slot: Tensor
    num_tokens: int

    @property
    def num_containers(self) -> int:
        return self.token_index.shape[0] // self.container_len

    @property
    def slot_image(self) -> Tensor:
        """(num_containers, L) long: image index of each slot, -1 for padding (computed on use:
        the Triton kernel derives it from ``token_index`` itself)."""
        total = self.token_slot.shape[0]
        image = torch.where(self.token_index < total, self.token_index // max(self.num_tokens, 1), -1)
        return image.view(self.num_containers, self.container_len)


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
    if per_image:
        # Each image starts a fresh container: its first slot is L * (containers of earlier images).
        kept_so_far = keep.cumsum(1, dtype=torch.long)                            # (B, N)
        kept = kept_so_far[:, -1] if num_tokens else keep.sum(1)
        per_image_containers = (kept + length - 1) // length                      # (B,)
        containers_end = per_image_containers.cumsum(0)
        containers_used = containers_end[-1] if batch else containers_end.sum()
        first_slot_minus_one = (containers_end - per_image_containers) * length - 1
        slot = kept_so_far + first_slot_minus_one[:, None]
    else:
        slot = (keep.flatten().cumsum(0, dtype=torch.long) - 1).view(batch, num_tokens)
        kept = slot[-1, -1] + 1 if batch * num_tokens else keep.sum()
        containers_used = (kept + length - 1) // length

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
    token_slot = torch.where(keep, slot, num_slots).clamp_(max=num_slots).flatten()
    token_index = torch.full((num_slots + 1,), batch * num_tokens, dtype=torch.long, device=keep.device)
    token_index.scatter_(0, token_slot, flat_index)
    return PackPlan(token_index=token_index[:num_slots],  # the trash slot dropped
                    containers_used=containers_used, container_len=length, token_slot=token_slot,
                    num_tokens=num_tokens)
