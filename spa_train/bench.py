"""``spa-train bench``: backbone throughput and MACs of a model config, on selections that look like use.

Inputs are random images with *scattered objects*: per image, rectangles and ellipses of varied size
at unaligned positions, added until about ``share`` of the stride-16 cells hold object pixels
(each image's target jittered by +-20%). Their masks give the selection labels by the loader's rule
(a cell is positive when any object pixel falls in it), boxes and masks give detection targets.
``--selector gt`` selects exactly the labels with the gate evaluated; the learned selector of an
untrained gate keeps nearly every token. A learned budget (``capacity`` "auto", the default) is
first settled on a few batches in training mode, as training would leave it. Inference runs eager
and, on CUDA, through ``spa_model.cuda_graphs`` (what ``spa-train eval`` uses). MACs come from
``spa_model.count_flops`` (Swin's convention: FLOPs = multiply-accumulates).
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F

from spa_common.errors import SpaError
from spa_train.runtime import autocast, peak_memory_mb, reset_peak_memory, resolve_device, synchronize, use_amp
from spa_train.tasks import backbone_options

__all__ = ["scattered_objects", "labels_from_masks", "settle_budgets", "selection_summary", "bench_model"]


def scattered_objects(batch: int, height: int, width: int, *, share: float = 0.25, seed: int = 0,
                      device: torch.device | str = "cpu", max_objects: int = 40) -> list[dict[str, torch.Tensor]]:
    """Per image ``{"masks": (K, H, W) bool, "boxes": (K, 4) xyxy float}``: objects added until about
    ``share`` (+-20% per image) of the stride-16 cells are covered; ``share=0`` gives no objects."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(height, device=device, dtype=torch.float32)[:, None] + 0.5
    cols = torch.arange(width, device=device, dtype=torch.float32)[None, :] + 0.5
    images = []
    for _ in range(batch):
        target = share * (0.8 + 0.4 * float(torch.rand((), generator=generator)))
        masks, boxes = [], []
        union = torch.zeros(height, width, dtype=torch.bool, device=device)
        while share > 0 and len(masks) < max_objects and _cell_share(union, 16) < target:
            u = torch.rand(5, generator=generator).tolist()
            side = min(height, width) * math.exp(math.log(0.03) + u[0] * math.log(0.35 / 0.03))
            half_h, half_w = side * (0.5 + u[1]) / 2, side * (1.5 - u[1]) / 2
            cy, cx = u[2] * height, u[3] * width
            if u[4] < 0.5:
                mask = ((rows - cy).abs() <= half_h) & ((cols - cx).abs() <= half_w)
            else:
                mask = ((rows - cy) / half_h) ** 2 + ((cols - cx) / half_w) ** 2 <= 1
            if not mask.any():
                continue
            ys, xs = mask.any(1).nonzero(), mask.any(0).nonzero()
            boxes.append([float(xs[0]), float(ys[0]), float(xs[-1]) + 1, float(ys[-1]) + 1])
            masks.append(mask)
            union |= mask
        images.append({"masks": torch.stack(masks) if masks else union[None][:0],
                       "boxes": torch.tensor(boxes, device=device).view(-1, 4)})
    return images


def _cell_share(union: torch.Tensor, stride: int) -> float:
    return float(F.max_pool2d(union[None, None].float(), stride, ceil_mode=True).mean())


def labels_from_masks(objects: list[dict[str, torch.Tensor]], height: int, width: int,
                      strides: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """{stride: (B, ceil(H/s), ceil(W/s)) float}, 1 where a cell holds any object pixel."""
    union = torch.stack([o["masks"].any(0) if len(o["masks"]) else o["masks"].new_zeros(height, width)
                         for o in objects])[:, None].float()
    return {s: F.max_pool2d(union, s, ceil_mode=True)[:, 0] for s in strides}


def settle_budgets(model: torch.nn.Module, batches: list[tuple[torch.Tensor, dict]], *, amp: bool) -> None:
    """Let learned token budgets settle on ``batches`` as training would (one look, no patience)."""
    import spa_model

    training = model.training
    model.train()
    with torch.no_grad(), autocast(batches[0][0].device, amp):
        for images, labels in batches:
            model.forward_features(images, labels)
    spa_model.update_token_budgets(model, spa_model.BudgetPolicy(interval=1, patience=1))
    model.train(training)


def bench_model(name: str, *, size: tuple[int, int] = (224, 224), batch: int = 32, device: str = "auto",
                steps: int = 10, warmup: int = 3, amp: str = "auto", selector: str | None = None, share: float = 0.25,
                model_args: dict | None = None) -> dict[str, Any]:
    """Images per second of ``forward_features`` (eager, and CUDA graphs on CUDA) and of an AdamW step."""
    import spa_model

    if name not in spa_model.list_models():
        raise SpaError(f"unknown model {name!r}; known: {', '.join(spa_model.list_models())}")
    torch_device = resolve_device(device)
    amp_on = use_amp(amp, torch_device)
    try:
        model = spa_model.create_model(name, **backbone_options(selector, model_args or {})).to(torch_device)
    except (TypeError, ValueError) as e:
        raise SpaError(f"model {name!r} does not fit: {e}") from None
    height, width = size
    strides = model.contract().label_strides
    batches = []
    for seed in range(4):
        images = torch.randn(batch, 3, height, width, device=torch_device)
        objects = scattered_objects(batch, height, width, share=share, seed=seed, device=torch_device)
        batches.append((images, labels_from_masks(objects, height, width, strides)))
    settle_budgets(model, batches[1:], amp=amp_on)
    images, labels = batches[0]

    model.eval()
    result: dict[str, Any] = {"model": name, "selector": selector, "size": list(size), "batch": batch,
                              "device": str(torch_device), "amp_bf16": amp_on, "share": share}
    with torch.no_grad(), autocast(torch_device, amp_on):
        output = model.forward_features(images, labels)
        result.update(selection_summary(model, output))
        result["infer_img_s"] = batch / _timed(lambda: model.forward_features(images, labels), steps=steps,
                                               warmup=warmup, device=torch_device)
        if torch_device.type == "cuda":
            with spa_model.cuda_graphs(model):
                result["infer_graphs_img_s"] = batch / _timed(lambda: model.forward_features(images, labels),
                                                              steps=steps, warmup=warmup, device=torch_device)

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
    result["train_img_s"] = batch / _timed(train_step, steps=steps, warmup=warmup, device=torch_device)
    result["train_peak_mem_mb"] = peak_memory_mb(torch_device)
    return result


def selection_summary(model: torch.nn.Module, output) -> dict[str, float]:
    """GMACs per image of a forward's ``output`` and, for SPT, its select ratio (mean over SPA blocks)
    and the share of the selected tokens its budgets dropped."""
    import spa_model

    summary = {"gmacs_per_image": spa_model.count_flops(model, output).total / 1e9}
    if output.blocks:
        parts = [torch.stack(output.select_ratios).mean(), torch.stack(output.dropped).sum(),
                 sum(b.selected.sum() for b in output.blocks)]
        ratio, dropped, selected = torch.stack([p.double() for p in parts]).tolist()   # one host read
        summary["select_ratio"] = ratio
        summary["dropped_share"] = dropped / max(selected, 1)
    return summary


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
