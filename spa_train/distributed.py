"""DistributedDataParallel plumbing: torchrun's environment, samplers, reductions.

One process per GPU (or per CPU slot with gloo), started by ``torchrun``; a plain
``spa-train`` run is the world of size 1 and never touches ``torch.distributed``.
Rank 0 writes every file; every rank sees the same reduced metrics.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, Sampler

from spa_data.jitter import draw_short_sides
from spa_model.budget import rank_local_buffers


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), else a world of one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    info = DistInfo(rank=int(os.environ["RANK"]), world_size=world_size,
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def wrap_ddp(model: torch.nn.Module, device: torch.device, *, find_unused_parameters: bool) -> DistributedDataParallel:
    """DistributedDataParallel around ``model``, whose buffers rank 0 broadcasts at every forward
    (BatchNorm statistics), except those each rank records for itself (the token budgets' peaks,
    reduced over ranks by :func:`spa_model.update_token_budgets`)."""
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, rank_local_buffers(model))
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=find_unused_parameters)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (returns a new tensor; identity for a world of one)."""
    values = values.clone()
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not info.enabled:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start mid-epoch, for exact resume.

    The epoch's order depends only on (seed, epoch), as in ``DistributedSampler``;
    ``set_epoch(epoch, start=n)`` skips the first ``n`` indices of this rank's share.
    """

    def __init__(self, dataset, *, info: DistInfo, shuffle: bool, seed: int, drop_last: bool):
        super().__init__(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle,
                         seed=seed, drop_last=drop_last)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start


class RunBatchSampler(Sampler[list]):
    """A training run's micro-batches, epoch after epoch, for ONE DataLoader iterator per run.

    Epoch e yields the first ``batches_per_epoch`` batches of ``sampler``'s order for e (batches
    never straddle epochs), so persistent workers keep loading across epoch ends instead of
    draining and restarting. ``start_at(epoch, consumed)`` places the next iteration (resume).
    Items are dataset keys ``(epoch, index)`` (a sample's random draws depend on them alone), with
    ``short_sides`` ``(epoch, index, short_side)``, the sides drawn here in the main
    process by ``spa_data.jitter.draw_short_sides`` for the epoch's whole order, so a resumed
    run gets the same draws.
    """

    def __init__(self, sampler: ResumableSampler, *, batch_size: int, batches_per_epoch: int, epochs: int,
                 seed: int, short_sides: tuple[int, ...] = ()):
        self.sampler, self.batch_size, self.batches_per_epoch = sampler, batch_size, batches_per_epoch
        self.epochs, self.seed, self.short_sides = epochs, seed, tuple(short_sides)
        self.epoch, self.consumed = 0, 0

    def start_at(self, epoch: int, consumed: int) -> None:
        """The next iteration starts at ``epoch`` with ``consumed`` of its batches already done."""
        self.epoch, self.consumed = epoch, consumed

    def __iter__(self) -> Iterator[list]:
        for epoch in range(self.epoch, self.epochs):
            skip = self.consumed * self.batch_size if epoch == self.epoch else 0
            self.sampler.set_epoch(epoch, start=skip)
            items: list = [(epoch, i) for i in self.sampler]
            if self.short_sides:
                sides = draw_short_sides(self.short_sides, skip + len(items), seed=self.seed, epoch=epoch,
                                         rank=self.sampler.rank)[skip:]
                items = [(epoch, i, side) for (_, i), side in zip(items, sides)]
            first = skip // self.batch_size
            for k in range(self.batches_per_epoch - first):
                yield items[k * self.batch_size:(k + 1) * self.batch_size]

    def __len__(self) -> int:
        return (self.epochs - self.epoch) * self.batches_per_epoch - self.consumed


class ShareSampler(Sampler[int]):
    """Evaluation: rank r takes indices r, r + W, r + 2W, ... (no padding, no duplicates)."""

    def __init__(self, length: int, info: DistInfo):
        self.indices = range(info.rank, length, info.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
