"""``spa-train bench``: backbone throughput (inference and training step) and MACs of a config.

Inputs are random images with IN-S-like selection labels (the upper-left quarter of the
canvas positive), so ``--selector gt`` measures SPT at a known 25% selection; with the
learned selector an untrained gate keeps nearly every token (the cost of dense attention).
MACs come from ``spa_model.count_flops`` (Swin's convention: FLOPs = multiply-accumulates).
"""
from __future__ import annotations

import time
from typing import Any

import torch

from spa_data.errors import SpaError
from spa_train.runtime import autocast, peak_memory_mb, reset_peak_memory, resolve_device, synchronize, use_amp
from spa_train.tasks import SELECTOR_NAMES

STRIDES = (8, 16, 32)


def quarter_labels(batch: int, height: int, width: int, device: torch.device) -> dict[int, torch.Tensor]:
    """{stride: (B, H/s, W/s)} with the upper-left quarter positive (an IN-S canvas)."""
    labels = {}
    for s in STRIDES:
        grid = torch.zeros(batch, -(-height // s), -(-width // s), device=device)
        grid[:, : grid.shape[1] // 2, : grid.shape[2] // 2] = 1
        labels[s] = grid
    return labels


def bench_model(name: str, *, size: tuple[int, int] = (224, 224), batch: int = 32, device: str = "auto",
                steps: int = 10, warmup: int = 3, amp: str = "auto", selector: str = "spa",
                model_args: dict | None = None) -> dict[str, Any]:
    """Images per second of ``forward_features`` (no grad) and of a full AdamW training step."""
    import spa_model

    if name not in spa_model.list_models():
        raise SpaError(f"unknown model {name!r}; known: {', '.join(spa_model.list_models())}")
    torch_device = resolve_device(device)
    amp_on = use_amp(amp, torch_device)
    kwargs = dict(model_args or {})
    if selector != "spa":
        kwargs["selector"] = SELECTOR_NAMES[selector]
    try:
        model = spa_model.create_model(name, **kwargs).to(torch_device)
    except (TypeError, ValueError) as e:
        raise SpaError(f"model {name!r} does not fit: {e}") from None
    images = torch.randn(batch, 3, *size, device=torch_device)
    labels = quarter_labels(batch, *size, torch_device)

    model.eval()
    with torch.no_grad(), autocast(torch_device, amp_on):
        output = model.forward_features(images, labels)
        gmacs = spa_model.count_flops(model, output).total / 1e9
        infer = _timed(lambda: model.forward_features(images, labels), steps=steps, warmup=warmup, device=torch_device)

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        with autocast(torch_device, amp_on):
            out = model.forward_features(images, labels)
            loss = sum(f.float().mean() for f in out.features) + 0.01 * spa_model.selection_loss(out.scores, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak_memory(torch_device)
    train = _timed(train_step, steps=steps, warmup=warmup, device=torch_device)
    return {"model": name, "selector": selector, "size": list(size), "batch": batch, "device": str(torch_device),
            "amp_bf16": amp_on, "gmacs_per_image": gmacs, "infer_img_s": batch / infer, "train_img_s": batch / train,
            "train_peak_mem_mb": peak_memory_mb(torch_device)}


def _timed(fn, *, steps: int, warmup: int, device: torch.device) -> float:
    """Median seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
