"""The training loop: ``train(config)`` and ``evaluate_checkpoint(path, shards)``.

One optimizer step consumes ``config.batch_size`` images in all: ``grad_accum_steps``
micro-batches on each of the ``world_size`` ranks, so a run on two GPUs follows the same
trajectory as on one with the same global batch (the DDP sampler deals rank r the indices
r, r + W, ... of the same seeded permutation). Loss = task loss + alpha * selection loss.

Exact resume: a checkpoint holds the model, optimizer, scheduler, the position (epoch,
optimizer step, micro-batches consumed in the epoch) and every rank's RNG states; the
sampler skips what the epoch already consumed, and the loader's random flips are a function
of (seed, epoch, sample index), not of a worker's RNG. So a resumed CPU run reproduces the
uninterrupted one bit for bit with any ``num_workers``.

Stops (docs/design.md, "Data safety"): SIGTERM or SIGINT to the trainer, or to its whole
process group (DataLoader workers leave both to the main process), finishes the current
step, saves ``last.pt`` and exits 0; a second SIGINT aborts at once. ``best.pt`` is written
before ``last.pt`` so that ``last.pt`` always carries the best score so far. A run resumes
only onto its own ``last.pt`` (resuming an older checkpoint into the same directory would
rewind it); a new run needs a new or empty directory.
"""
from __future__ import annotations

import math
import os
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from tqdm.auto import tqdm

from spa_common.errors import ParamError, SpaError
from spa_common.io import foreign_entries, is_temporary, refuse_foreign
from spa_data.jitter import check_short_sides
from spa_model.models import ModelContract
from spa_model.weights import load_pretrained
from spa_train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state, unwrap_model
from spa_train.config import TrainConfig, build_config, save_config
from spa_train.distributed import (DistInfo, ResumableSampler, RunBatchSampler, ShareSampler, all_gather_objects,
                                   all_reduce_sum, barrier, init_distributed, shutdown_distributed, wrap_ddp)
from spa_train.logger import MetricsWriter, read_metrics, truncate_metrics
from spa_train.optim import build_optimizer, build_scheduler
from spa_train.plots import plot_curves
from spa_train.runtime import (autocast, peak_memory_mb, reset_peak_memory, resolve_device, seed_everything,
                               synchronize, use_amp)
from spa_train.tasks import TASKS, build_task_model
from spa_model.budget import token_budgets, update_token_budgets


@dataclass
class Position:
    epoch: int = 0
    step: int = 0          # optimizer steps done
    consumed: int = 0      # micro-batches of the current epoch already trained on (per rank)


def open_shards(path: str, config: TrainConfig, *, train: bool):
    """A ``ShardDataset`` for ``config.task``; SpaError when the shards hold another task."""
    from spa_data.loader import ShardDataset

    if not path:
        raise ParamError("no training shards given (set {shards})", "shards")
    dataset = ShardDataset(path, select_threshold=config.select_threshold, train=train,
                           hflip=config.hflip if train else 0.0, masks=config.masks, seed=config.seed)
    if dataset.task != config.task:
        raise SpaError(f"{path}: shards are for task {dataset.task!r}, not {config.task!r} (the configured task)")
    return dataset


def make_batches(dataset, *, config: TrainConfig, device: torch.device, batch_size: int = 1, sampler=None,
                 drop_last: bool = False, batch_sampler=None, generator: Optional[torch.Generator] = None):
    from spa_data.loader import make_loader

    return make_loader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler, batch_sampler=batch_sampler,
                       num_workers=config.num_workers, device=device, drop_last=drop_last, generator=generator)


class Trainer:
    """Owns the run: data, model, optimizer, position; ``fit()`` trains to the end."""

    def __init__(self, config: TrainConfig, *, resume_state: Optional[dict] = None):
        self.config = config
        self.device = resolve_device(config.device)
        self.info = init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = resolve_device(config.device, local_rank=self.info.local_rank)
        # rank-offset seeds: ranks draw different noise (DDP broadcasts rank 0's initial weights)
        seed_everything(config.seed + self.info.rank, deterministic=config.deterministic, device=self.device)
        self.task = TASKS[config.task]
        self.amp = use_amp(config.amp, self.device)
        self.run_dir = Path(config.out)

        per_step = self.info.world_size * config.grad_accum_steps
        if config.batch_size % per_step:
            raise SpaError(f"config: batch_size {config.batch_size} is not divisible by world size x "
                           f"grad_accum_steps = {per_step}")
        self.micro_batch = config.batch_size // per_step

        self.train_set = open_shards(config.shards, config, train=True)
        self.val_set = open_shards(config.val_shards, config, train=False) if config.val_shards else None
        if self.val_set is not None and list(self.val_set.classes) != list(self.train_set.classes):
            raise SpaError(f"{config.val_shards}: classes differ from the training shards' ({config.shards})")
        self.sampler = ResumableSampler(self.train_set, info=self.info, shuffle=True, seed=config.seed, drop_last=True)
        self.micro_per_epoch = (self.sampler.num_samples // self.micro_batch) // config.grad_accum_steps \
            * config.grad_accum_steps
        if self.micro_per_epoch == 0:
            raise SpaError(f"{config.shards}: {len(self.train_set)} images are fewer than one batch of "
                           f"{config.batch_size}; lower batch_size")
        check_short_sides(self.train_set.geometry, config.multiscale, where=f"{config.shards}: multiscale")
        self.batches = RunBatchSampler(self.sampler, batch_size=self.micro_batch, batches_per_epoch=self.micro_per_epoch,
                                       epochs=config.epochs, seed=config.seed, short_sides=config.multiscale)
        # the DataLoader draws its worker seeds from this generator, not from the global RNG
        self.loader_rng = torch.Generator()
        self.loader = make_batches(self.train_set, batch_sampler=self.batches, config=config, device=self.device,
                                   generator=self.loader_rng)
        self.batch_iterator: Optional[Iterator] = None   # one for the whole run (see RunBatchSampler)
        steps_per_epoch = self.micro_per_epoch // config.grad_accum_steps
        self.total_steps = steps_per_epoch * config.epochs          # the lr schedule's length
        self.stop_step = min(self.total_steps, config.max_steps or self.total_steps)

        model = build_task_model(config, self.train_set)
        self.contract = model.backbone.contract()
        for path, dataset in ((config.shards, self.train_set), (config.val_shards, self.val_set)):
            if dataset is not None:
                check_label_strides(self.contract, dataset, path=path, model=config.model)
        if config.pretrained and resume_state is None:
            for line in load_pretrained(model.backbone, config.pretrained).lines():
                self._say(line)
        model.to(self.device)
        self.budgets = token_budgets(model)   # found once, updated after every optimizer step
        self.optimizer = build_optimizer(model, config)
        self.scheduler = build_scheduler(self.optimizer, config, self.total_steps)
        self.position = Position()
        self.best: Optional[float] = None
        self.pending_rng: Optional[dict] = None
        if resume_state is not None:
            self._restore(model, resume_state)
        self.model = self._wrap(model)
        self.writer = MetricsWriter(self.run_dir, enabled=self.info.is_main)
        self.val_loader = None
        self.stop_requested = False   # set by a signal (this rank)
        self.stopping = False         # agreed by every rank at the last read: the loop stops
        self.pending_steps: list[tuple[torch.Tensor, float]] = []   # (step statistics on the device, lr)

    # --- setup ----------------------------------------------------------------------------

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.info.enabled:
            model = wrap_ddp(model, self.device,
                             find_unused_parameters=self.task.unused_parameters or self.contract.unused_parameters)
        if self.config.compile:
            if not self.contract.static_shapes:
                self._say("compile=true with an SPT whose capacity is 'exact': every SPA block syncs with the host "
                          "and recompiles as the selection changes; the default capacity 'auto' is static")
            model = torch.compile(model)
        return model

    def _restore(self, model: torch.nn.Module, state: dict) -> None:
        model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.position = Position(**state["position"])
        self.best = state.get("best")
        ranks = state["rng"]
        self.pending_rng = ranks[self.info.rank] if len(ranks) == self.info.world_size else None

    # --- the loop ---------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train until ``epochs`` or ``max_steps``; returns the last epoch's metrics row."""
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.run_dir / "config.yaml")
            if self.position.step and (self.run_dir / "metrics.jsonl").is_file():
                truncate_metrics(self.run_dir / "metrics.jsonl", after_step=self.position.step)
                self.writer = MetricsWriter(self.run_dir, enabled=True)
        last_row: dict[str, Any] = {}
        try:
            with self._stop_on_signals():
                while self.position.epoch < self.config.epochs and self.position.step < self.stop_step:
                    last_row = self._train_epoch()
                    if self.stopping:
                        self._save("last.pt")
                        self._say(f"interrupted: saved {self.run_dir / 'last.pt'} at step {self.position.step}; "
                                  f"resume from {self.run_dir} to continue")
                        break
        finally:
            for loader in (self.loader, self.val_loader):
                if loader is not None:
                    loader.close()
        if self.info.is_main and self.config.curves and not plot_curves(read_metrics(self.run_dir / "metrics.jsonl"),
                                                 self.run_dir / "curves.png", metric=f"val/{self.task.metric}"):
            self._say("matplotlib is not installed: no curves.png")
        self.writer.close()
        barrier(self.info)
        return last_row

    def _train_epoch(self) -> dict[str, Any]:
        config, pos = self.config, self.position
        self.model.train()
        if self.batch_iterator is None:
            self.batches.start_at(pos.epoch, pos.consumed)
            self.loader_rng.manual_seed(config.seed * 10_007 + pos.epoch * 101 + self.info.rank)
            if self.pending_rng is not None:  # resuming: continue every RNG where the checkpoint left it
                set_rng_state(self.pending_rng)
                self.pending_rng = None
            self.batch_iterator = iter(self.loader)

        totals, steps = EpochTotals(self.device, self.contract), StepLog()
        reset_peak_memory(self.device)
        start, images_seen = time.perf_counter(), 0
        bar = tqdm(total=self.micro_per_epoch // config.grad_accum_steps,
                   initial=pos.consumed // config.grad_accum_steps, desc=f"epoch {pos.epoch + 1}/{config.epochs}",
                   disable=_bar_disabled(config.progress, self.info), dynamic_ncols=True, leave=False)
        accum = StepAccumulator(self.device)
        while pos.consumed < self.micro_per_epoch:
            batch = next(self.batch_iterator)
            is_last_micro = (pos.consumed + 1) % config.grad_accum_steps == 0
            with self._no_sync(not is_last_micro):
                out, loss, task_loss, select_loss = self._forward_loss(batch)
                (loss / config.grad_accum_steps).backward()
            accum.add(loss, task_loss, select_loss)
            totals.add(out, batch)
            pos.consumed += 1
            images_seen += len(batch.image_ids) * self.info.world_size
            steps.images += len(batch.image_ids) * self.info.world_size
            if is_last_micro:
                self._optimizer_step(accum)
                accum = StepAccumulator(self.device)
                bar.update(1)
                due_log = pos.step % config.log_interval == 0 or pos.step == self.stop_step
                due_checkpoint = config.checkpoint_interval and pos.step % config.checkpoint_interval == 0
                signalled = self.stop_requested and not self.info.enabled  # one process: stop at once
                if due_log or due_checkpoint or signalled:
                    stats = self._read_steps(steps)
                    if due_log:
                        self._log_step({**stats, "img_s": steps.images_per_second()}, bar)
                    if due_checkpoint:
                        self._save("last.pt")
                if self.stopping or pos.step >= self.stop_step:
                    break
        if self.pending_steps:
            self._read_steps(steps)
        bar.close()
        synchronize(self.device)
        elapsed = time.perf_counter() - start
        if self.stopping:
            return {}
        complete = pos.consumed >= self.micro_per_epoch   # else stopped early by max_steps
        row = {"kind": "epoch", "epoch": pos.epoch + 1 if complete else self._epochs_done(), "step": pos.step,
               "train/loss": steps.mean_loss, "lr": self.optimizer.param_groups[0]["lr"],
               "img_s": images_seen / max(elapsed, 1e-9),
               "peak_mem_mb": peak_memory_mb(self.device), "epoch_time_s": elapsed,
               **totals.compute(self.info, prefix="train/")}
        if complete:
            pos.epoch, pos.consumed = pos.epoch + 1, 0
        if self.val_set is not None and (not complete or pos.epoch % config.eval_interval == 0
                                         or pos.epoch == config.epochs):
            with _rng_untouched():  # validating or not never changes the training trajectory
                row.update(self.validate())
        self.writer.log(row)
        self._say(_summary_line(row, self.task.metric))
        metric = row.get(f"val/{self.task.metric}")
        if metric is not None and (self.best is None or metric > self.best):
            self.best = metric
            self._save("best.pt")   # first: the last.pt below then records this best, and a kill in between
        self._save("last.pt")       # leaves last.pt behind best.pt, never ahead of it
        return row

    def _epochs_done(self) -> float:
        """Epochs trained so far, a fraction within one (rounded: a log holds 0.3871, not 0.3870967741935484)."""
        return round(self.position.epoch + self.position.consumed / self.micro_per_epoch, 4)

    def _log_step(self, stats: dict[str, float], bar: tqdm) -> None:
        """A "step" row in metrics.jsonl, the bar's postfix, and where no bar shows (no terminal, as in
        a batch job's log, or progress off) a line on stdout, as timm's train.py prints one."""
        pos = self.position
        bar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{stats['lr']:.2e}")
        self.writer.log({"kind": "step", "epoch": self._epochs_done(), "step": pos.step, **stats})
        if bar.disable:
            self._say(f"epoch {pos.epoch + 1}/{self.config.epochs}  step {pos.step}/{self.stop_step}  "
                      f"loss {stats['loss']:.4f}  lr {stats['lr']:.2e}  img/s {stats['img_s']:.1f}")

    def _forward_loss(self, batch):
        with autocast(self.device, self.amp):
            images = batch.images.contiguous(memory_format=torch.channels_last) if self.config.channels_last \
                else batch.images
            return training_loss(self.model, batch, alpha=self.config.alpha, images=images)

    def _optimizer_step(self, accum: "StepAccumulator") -> None:
        """Clip, step and schedule; the step's statistics wait on the device for :meth:`_read_steps`
        (no host sync here: the host queues the next step while the GPU runs this one)."""
        grad_norm = accum.values.new_full((1,), math.nan)
        if self.config.clip_grad_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm).reshape(1)
        self.pending_steps.append((torch.cat([accum.values, grad_norm.float()]), self.optimizer.param_groups[0]["lr"]))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        update_token_budgets(self.budgets)
        self.position.step += 1

    def _read_steps(self, steps: "StepLog") -> dict[str, float]:
        """The statistics of the steps since the last read, in one host sync (and one all-reduce, which
        also makes every rank agree on a stop); adds their losses to ``steps``, fails on the first
        non-finite loss, returns the last step's. Read before logging and before any checkpoint, so a
        checkpoint never holds weights a non-finite step touched."""
        pos, count = self.position, len(self.pending_steps)
        values = torch.stack([v for v, _ in self.pending_steps])           # (steps, 5): 4 sums, grad norm
        flags = values.new_full((1,), float(self.stop_requested))
        reduced = all_reduce_sum(torch.cat([values[:, :4].flatten(), flags]), self.info)
        read = torch.cat([reduced, values[:, 4]]).tolist()                   # the one host sync
        sums, stop, grad_norms = read[:4 * count], read[4 * count], read[4 * count + 1:]
        lrs = [lr for _, lr in self.pending_steps]
        self.pending_steps.clear()
        stats = {}
        for i in range(count):
            loss, task_loss, select_loss, micro = sums[4 * i:4 * i + 4]
            if not math.isfinite(loss):
                step = pos.step - count + i + 1
                raise SpaError(f"non-finite loss ({loss}) at step {step} (epoch {pos.epoch + 1}): "
                               f"training stopped; "
                               f"the last good checkpoint is {self.run_dir / 'last.pt'}"
                               + ("" if (self.run_dir / "last.pt").is_file() else " (none written yet)"))
            stats = {"loss": loss / micro, "task_loss": task_loss / micro, "select_loss": select_loss / micro,
                     "grad_norm": grad_norms[i], "lr": lrs[i]}
            steps.add_loss(stats["loss"])
        self.stop_requested = self.stopping = stop > 0
        return stats

    def validate(self) -> dict[str, Any]:
        if self.val_loader is None:  # built once: its workers persist between validations
            self.val_loader = make_batches(self.val_set, batch_size=self.config.eval_batch_size or self.micro_batch,
                                           sampler=ShareSampler(len(self.val_set), self.info), config=self.config,
                                           device=self.device)
        return evaluate(unwrap_model(self.model), self.val_loader, task=self.config.task, dataset=self.val_set,
                        device=self.device, amp=self.amp, info=self.info, progress=self.config.progress,
                        cuda_graphs=self.config.cuda_graphs)

    # --- checkpoints and signals ----------------------------------------------------------

    def _save(self, name: str) -> None:
        ranks_rng = all_gather_objects(rng_state(), self.info)
        if self.info.is_main:
            state = {"config": self.config.to_dict(), "model": unwrap_model(self.model).state_dict(),
                     "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "position": asdict(self.position), "best": self.best, "rng": ranks_rng,
                     "classes": list(self.train_set.classes)}
            save_checkpoint(state, self.run_dir / name)
        barrier(self.info)

    @contextmanager
    def _stop_on_signals(self):
        def request_stop(signum, frame):
            if signum == signal.SIGINT and self.stop_requested:
                raise KeyboardInterrupt   # a second Ctrl-C: stop now, without saving
            self.stop_requested = True

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _no_sync(self, skip_sync: bool):
        no_sync = getattr(self.model, "no_sync", None)
        return no_sync() if skip_sync and no_sync is not None else nullcontext()

    def say_resumed(self, path: Path) -> None:
        pos = self.position
        if pos.epoch >= self.config.epochs or pos.step >= self.stop_step:
            self._say(f"{path}: this run is finished (step {pos.step}, epoch {pos.epoch} of {self.config.epochs}"
                      f"{f', max_steps {self.config.max_steps}' if self.config.max_steps else ''}); "
                      "raise epochs or max_steps to train on")
        else:
            self._say(f"resuming {path} at step {pos.step} (epoch {pos.epoch + 1}, "
                      f"{pos.consumed} of {self.micro_per_epoch} micro-batches done)")

    def _say(self, text: str) -> None:
        if self.info.is_main:
            tqdm.write(text)


@contextmanager
def _rng_untouched():
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


class StepLog:
    """An epoch's mean training loss (over its optimizer steps), and images per second between two
    step rows (``images`` counts the images trained on since the last row)."""

    def __init__(self):
        self.loss_sum, self.steps, self.images = 0.0, 0, 0
        self.since = time.perf_counter()

    def add_loss(self, loss: float) -> None:
        self.loss_sum += loss
        self.steps += 1

    @property
    def mean_loss(self) -> Optional[float]:
        return self.loss_sum / self.steps if self.steps else None

    def images_per_second(self) -> float:
        """Since the last call (or the start); then counts afresh."""
        now = time.perf_counter()
        rate = self.images / max(now - self.since, 1e-9)
        self.images, self.since = 0, now
        return rate


class StepAccumulator:
    """Loss sums over the micro-batches of one optimizer step, kept on the device (no sync)."""

    def __init__(self, device: torch.device):
        self.values = torch.zeros(4, device=device)

    def add(self, loss, task_loss, select_loss) -> None:
        self.values += torch.stack([loss.detach(), task_loss.detach(), select_loss.detach(),
                                    torch.ones((), device=self.values.device)])


class EpochTotals:
    """Per-block select ratios (model) and positive-cell ratios (labels), averaged over batches, and
    the share of selected tokens a static budget dropped (summed counts)."""

    def __init__(self, device: torch.device, contract: ModelContract):
        self.device = device
        self.ratio_sum: Optional[torch.Tensor] = None
        self.drop_counts: Optional[torch.Tensor] = None   # (blocks, 2): dropped, selected
        self.label_sum: dict[int, torch.Tensor] = {}
        self.batches = 0
        self.stages = [site.stage + 1 for site in contract.spa_blocks]   # 1-based, as the paper names stages

    def add(self, out: dict, batch) -> None:
        blocks = out["backbone_output"].blocks if out.get("backbone_output") is not None else []
        if blocks:
            stacked = torch.stack([b.select_ratio.detach().float() for b in blocks])
            self.ratio_sum = stacked if self.ratio_sum is None else self.ratio_sum + stacked
            counts = torch.stack([torch.stack([b.dropped, b.selected.sum()]) for b in blocks]).double()
            self.drop_counts = counts if self.drop_counts is None else self.drop_counts + counts
        for stride, labels in batch.select.items():
            self.label_sum[stride] = self.label_sum.get(stride, 0) + labels.float().mean()
        self.batches += 1

    def compute(self, info: DistInfo, *, prefix: str) -> dict[str, float]:
        if not self.batches:
            return {}
        strides = sorted(self.label_sum)
        parts = [torch.stack([self.label_sum[s] for s in strides]).to(self.device),
                 torch.tensor([float(self.batches)], device=self.device)]
        blocks = 0 if self.ratio_sum is None else len(self.ratio_sum)
        if blocks:
            parts[:0] = [self.ratio_sum.to(self.device), self.drop_counts.flatten().to(self.device, torch.float32)]
        summed = all_reduce_sum(torch.cat(parts), info).tolist()
        batches = summed[-1]
        row: dict[str, float] = {}
        if blocks:
            ratios = [v / batches for v in summed[:blocks]]
            row.update({f"{prefix}select_ratio/block{i}": r for i, r in enumerate(ratios)})
            for stage in sorted(set(self.stages)):
                row[f"{prefix}select_ratio/stage{stage}"] = _mean([r for r, s in zip(ratios, self.stages) if s == stage])
            row[f"{prefix}select_ratio/mean"] = _mean(ratios)
            dropped, selected = summed[blocks:3 * blocks:2], summed[blocks + 1:3 * blocks:2]
            row.update({f"{prefix}dropped_share/block{i}": d / max(n, 1) for i, (d, n) in enumerate(zip(dropped, selected))})
            row[f"{prefix}dropped_share/mean"] = sum(dropped) / max(sum(selected), 1)
        labels = summed[3 * blocks:-1]
        row.update({f"{prefix}label_ratio/s{s}": v / batches for s, v in zip(strides, labels)})
        return row


def check_label_strides(contract: ModelContract, dataset, *, path: str, model: str) -> None:
    """SpaError unless ``dataset`` holds the selection labels ``contract`` reads, at every stride."""
    missing = sorted(set(contract.label_strides) - set(dataset.strides))
    if missing:
        both = sorted(set(contract.label_strides) | set(dataset.strides))
        raise SpaError(f"{path}: shards labelled at strides {_strides(dataset.strides)}, but model {model!r} reads "
                       f"selection labels at {_strides(contract.label_strides)} (none at {_strides(missing)}); "
                       f"label the subset again at {_strides(both)}")


def _strides(strides) -> str:
    return ",".join(map(str, strides))


def _bar_disabled(progress: bool, info: DistInfo) -> Optional[bool]:
    """tqdm's ``disable``: None shows the bar only on a terminal; other ranks never show one."""
    return None if progress and info.is_main else True


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def training_loss(model: torch.nn.Module, batch, *, alpha: float, images: Optional[torch.Tensor] = None):
    """(model output, task loss + alpha x selection loss, task loss, selection loss) of one batch."""
    import spa_model

    out = model(batch.images if images is None else images, batch.select, batch.targets, batch.image_sizes)
    task_loss = out["task_loss"].float()
    select_loss = spa_model.selection_loss(out["scores"], batch.select).float()  # 0 for Swin (no gates)
    return out, task_loss + alpha * select_loss, task_loss, select_loss


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, *, task: str, dataset, device: torch.device, amp: bool,
             info: DistInfo, progress: bool = True, cuda_graphs: bool = True) -> dict[str, Any]:
    """Validation metrics (prefixed ``val/``), select and label ratios, dropped tokens, FLOPs per image.

    On CUDA with ``cuda_graphs`` the backbone replays one CUDA graph per repeated input shape
    (``spa_model.cuda_graphs``; SPT with a static capacity), the path users deploy at small batches.
    """
    import spa_model

    was_training = model.training
    model.eval()
    meter = TASKS[task].meter(dataset)
    backbone = _backbone_of(model)
    contract = backbone.contract()
    totals = EpochTotals(device, contract)
    flops_sum = 0.0
    graphs = (spa_model.cuda_graphs(backbone, capture_after=2)
              if cuda_graphs and device.type == "cuda" and contract.static_shapes else nullcontext())
    start, images = time.perf_counter(), 0
    with graphs:
        for batch in tqdm(loader, desc="eval", disable=_bar_disabled(progress, info), leave=False,
                          dynamic_ncols=True):
            with autocast(device, amp):
                out = model(batch.images, batch.select, None, batch.image_sizes, batch.original_sizes)
            meter.update(out["predictions"], batch)
            totals.add(out, batch)
            images += len(batch.image_ids)
            # analytic MACs of each image at its own size, from the containers its tokens filled
            flops_sum += spa_model.count_flops(backbone, out["backbone_output"],
                                               image_sizes=out.get("input_sizes")).total * len(batch.image_ids)
    synchronize(device)
    elapsed = time.perf_counter() - start
    model.train(was_training)
    images_all, elapsed_all, flops_all = all_reduce_sum(
        torch.tensor([float(images), elapsed, flops_sum], dtype=torch.float64, device=device), info).tolist()
    metrics = {f"val/{k}": v for k, v in meter.compute(info).items()}
    metrics.update(totals.compute(info, prefix="val/"))
    metrics["val/gmacs_per_image"] = flops_all / max(images_all, 1) / 1e9
    metrics["val/img_s"] = images_all / max(elapsed_all / info.world_size, 1e-9)
    return metrics


def _backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    return unwrap_model(model).backbone


def _summary_line(row: dict, metric: str) -> str:
    parts = [f"epoch {row['epoch']:.4g}", f"step {row['step']}"]
    for key in ("train/loss", f"val/{metric}", "train/select_ratio/mean", "val/gmacs_per_image", "img_s",
                "peak_mem_mb", "lr"):
        if row.get(key) is not None:
            parts.append(f"{key} {row[key]:.4g}")
    return "  ".join(parts)


# --- entry points -------------------------------------------------------------------------

RUN_FILES = ("config.yaml", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt", "curves.png", "tb")


def train(config: TrainConfig, *, resume: Optional[str | Path] = None) -> dict[str, Any]:
    """Train (or continue, from a checkpoint or run directory) and return the last epoch's metrics."""
    path = resolve_resume_path(resume) if resume else None
    state = load_checkpoint(path) if path is not None else None
    run_dir = Path(config.out)
    last = run_dir / "last.pt"
    if last.is_file():
        if state is None:
            raise ParamError(f"{run_dir}: already holds a run (last.pt); continue it with {{resume}} {run_dir}, "
                             "or choose another {out}", "resume", "out")
        if not os.path.samefile(path, last):
            raise SpaError(f"{path}: continuing it in {run_dir} would overwrite that run's last.pt and metrics "
                           f"(a rewind); resume {last}, or set another out directory to branch off {path.name}")
    else:
        _check_new_run_dir(run_dir)
    if state is None and int(os.environ.get("RANK", "0")) == 0:
        for stale in ("metrics.jsonl", "metrics.csv"):  # left by a run that died before its first checkpoint
            (run_dir / stale).unlink(missing_ok=True)
    try:
        trainer = Trainer(config, resume_state=state)
        if state is not None:
            trainer.say_resumed(path)
        return trainer.fit()
    finally:
        shutdown_distributed()


def _check_new_run_dir(run_dir: Path) -> None:
    """A run starts in a new or empty directory, or in one a run left before its first checkpoint."""
    def owned(out: Path) -> Optional[str]:
        foreign = foreign_entries(out, lambda p: p.name in RUN_FILES or is_temporary(p))
        if foreign or not (out / "config.yaml").is_file():
            return f"not a spa-train run directory ({f'holds {foreign[0]}' if foreign else 'has no config.yaml'})"
        return None

    refuse_foreign(run_dir, owned, "start a run there (choose a new or empty out directory)")


def resolve_resume_path(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its ``last.pt``)."""
    path = Path(path)
    return path / "last.pt" if path.is_dir() else path


def config_from_checkpoint(path: str | Path) -> dict:
    """The plain config values a checkpoint was trained with."""
    return dict(load_checkpoint(resolve_resume_path(path))["config"])


def evaluate_checkpoint(checkpoint: str | Path, shards: str, *, device: str = "auto", batch_size: int = 16,
                        num_workers: int = 2, progress: bool = True) -> dict[str, Any]:
    """Evaluation only: the checkpoint's model on ``shards`` (of the same task and classes)."""
    state = load_checkpoint(checkpoint)
    values = dict(state["config"], device=device, num_workers=num_workers, progress=progress, val_shards=shards)
    config = build_config(values)
    torch_device = resolve_device(config.device)
    info = init_distributed(torch_device.type)
    try:
        dataset = open_shards(shards, config, train=False)
        if list(dataset.classes) != list(state.get("classes", dataset.classes)):
            raise SpaError(f"{shards}: classes differ from those {checkpoint} was trained on")
        model = build_task_model(config, dataset)
        check_label_strides(model.backbone.contract(), dataset, path=shards, model=config.model)
        model.load_state_dict(state["model"])
        model.to(torch_device)
        loader = make_batches(dataset, batch_size=batch_size, sampler=ShareSampler(len(dataset), info),
                              config=config, device=torch_device)
        return evaluate(model, loader, task=config.task, dataset=dataset, device=torch_device,
                        amp=use_amp(config.amp, torch_device), info=info, progress=progress,
                        cuda_graphs=config.cuda_graphs)
    finally:
        shutdown_distributed()
