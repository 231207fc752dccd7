"""AdamW and the learning-rate schedule: linear warm-up, then cosine decay to ``min_lr``, or
steps (x0.1 after each epoch of ``lr_steps``: mmdetection's MultiStepLR, Swin's detection recipe)."""
from __future__ import annotations

import math

import torch

from spa_train.config import TrainConfig


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; biases, norms (every 1-D tensor) and what the model's modules declare in
    ``no_weight_decay()`` (timm's convention: parameter names relative to the declaring module; a
    task model declares through its backbone) get no weight decay."""
    exempt = {f"{prefix}.{name}" if prefix else name
              for prefix, module in model.named_modules() if hasattr(module, "no_weight_decay")
              for name in module.no_weight_decay()}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name in exempt else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


STEP_FACTOR = 0.1  # mmdetection's MultiStepLR gamma


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float,
              drop_steps: tuple[int, ...] = ()) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based); ``drop_steps``: the step schedule."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if drop_steps:
        return STEP_FACTOR ** sum(step >= d for d in drop_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = round(0.05 * total_steps) if config.warmup_steps is None else config.warmup_steps
    warmup = min(warmup, max(0, total_steps - 1))
    min_ratio = config.min_lr / config.lr if config.lr > 0 else 0.0
    steps_per_epoch = total_steps // config.epochs
    drops = tuple(e * steps_per_epoch for e in config.lr_steps) if config.lr_schedule == "step" else ()
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps=warmup, total_steps=total_steps, min_ratio=min_ratio,
                                          drop_steps=drops))
