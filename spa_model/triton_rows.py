"""Fused Triton kernels for the rows around packed attention in an SPA block (eager mode).

Besides its three large kernels (qkv, attention, projection) an SPA block runs many small ones: the
plan's cumulative sums and scatters, the gathers of tokens and gate values, the weighted scatter
back into the residual stream. At batch 1, and wherever the host launches kernels more slowly than
the GPU runs them, the small ones set the pace. Three kernels replace them, each computing what the
torch composition it stands for computes (tests compare them): :mod:`spa_model.packing` and
:mod:`spa_model.packed_attention` stay the reference, and the path under torch.compile, where
Inductor fuses those ops itself.

* :func:`plan_rows`: one program per image reads the selection in window-major token order straight
  from the (B, H*W) keep map, ranks its kept tokens (a running cumulative sum) and writes the
  per-image static plan with each slot's source row and token flag: what ``index_select``,
  :func:`~spa_model.packing.plan_packing` and :func:`~spa_model.packed_attention.slot_rows` do in
  about fifteen launches.
* :func:`gather_gated`: ``tokens[rows] * gate[rows]``, written in the dtype the qkv projection reads.
* :func:`scatter_add_weighted`: the residual stream plus each slot's projected row times its weight.

A token holds at most one slot, so the scatters (and the gather's backward) write each row once:
no atomics, deterministic results.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .packing import PackPlan

__all__ = ["plan_rows", "gather_gated", "scatter_add_weighted"]

_PLAN_BLOCK = 1024              # tokens ranked per step of an image's running sum
_ROWS, _CHANNELS = 32, 128      # tile of the row kernels: slots x channels


@triton.jit
def _plan_rows_kernel(keep_ptr, pixel_ptr, padding_ptr, token_index_ptr, token_slot_ptr, selected_ptr,
                      rows_ptr, holds_ptr, num_tokens, pixels, image_slots, total_pixels, BLOCK: tl.constexpr):
    image = tl.program_id(0)
    offsets = tl.arange(0, BLOCK)
    num_slots = tl.num_programs(0) * image_slots
    first_slot = image * image_slots
    kept_before = tl.sum(tl.zeros([BLOCK], dtype=tl.int32), 0)  # a 0-d int32, the type the loop carries
    for start in range(0, num_tokens, BLOCK):
        n = start + offsets
        real = (n < num_tokens) & (tl.load(padding_ptr + n, mask=n < num_tokens, other=1) == 0)
        pixel = tl.load(pixel_ptr + n, mask=real, other=0)
        kept = real & (tl.load(keep_ptr + image * pixels + pixel, mask=real, other=0) != 0)
        rank = tl.cumsum(kept.to(tl.int32), 0) + kept_before    # 1-based within the image
        fits = kept & (rank <= image_slots)
        slot = first_slot + rank - 1
        tl.store(token_slot_ptr + image * num_tokens + n, tl.where(fits, slot, num_slots), mask=n < num_tokens)
        tl.store(token_index_ptr + slot, image * num_tokens + n, mask=fits)
        tl.store(rows_ptr + slot, image * pixels + pixel, mask=fits)
        tl.store(holds_ptr + slot, 1, mask=fits)
        kept_before += tl.sum(kept.to(tl.int32), 0)
    tl.store(selected_ptr + image, kept_before)
    placed = tl.minimum(kept_before, image_slots)
    for start in range(0, image_slots, BLOCK):  # the image's empty slots: padding, reading distinct rows
        j = start + offsets
        empty = (j >= placed) & (j < image_slots)
        slot = first_slot + j
        tl.store(token_index_ptr + slot, tl.num_programs(0) * num_tokens, mask=empty)
        tl.store(rows_ptr + slot, slot % total_pixels, mask=empty)
        tl.store(holds_ptr + slot, 0, mask=empty)


def plan_rows(keep_pixels: Tensor, token_pixel: Tensor, token_is_padding: Tensor, *, container_len: int,
              capacity: int) -> tuple[PackPlan, Tensor, Tensor]:
    """The per-image static plan of a selection, with each slot's source row, in one launch.

    keep_pixels: (B, P) bool, the selection on the unpadded map (P = H * W pixels, row-major).
    token_pixel, token_is_padding: (N,) long and (N,) bool, a window-major token's pixel (in [0, P))
    and whether it is window padding (never kept), as :class:`spa_model.layers.WindowGrid` holds them.
    Returns ``(plan, rows, holds_token)``, equal to ``plan_packing(keep, container_len=container_len,
    capacity=capacity)`` of the window-major selection ``keep`` and to ``slot_rows`` of it with the
    grid's ``token_rows`` (slots without a token read row ``slot % (B * P)``).
    """
    if keep_pixels.dim() != 2 or keep_pixels.dtype != torch.bool:
        raise ValueError(f"keep_pixels must be a (B, P) bool tensor, got "
                         f"{tuple(keep_pixels.shape)} {keep_pixels.dtype}")
    if ((token_pixel.dtype, token_is_padding.dtype) != (torch.long, torch.bool)
            or token_pixel.shape != token_is_padding.shape):
        raise ValueError(f"token_pixel (N,) long and token_is_padding (N,) bool expected, got "
                         f"{tuple(token_pixel.shape)} {token_pixel.dtype} and "
                         f"{tuple(token_is_padding.shape)} {token_is_padding.dtype}")
    batch, pixels = keep_pixels.shape
    num_tokens = token_pixel.shape[0]
    if capacity < 1 or batch * pixels == 0:
        raise ValueError(f"plan_rows needs a capacity >= 1 and a non-empty map, got {capacity}, "
                         f"{tuple(keep_pixels.shape)}")
    image_slots = capacity * container_len
    device = keep_pixels.device
    token_index = torch.empty(batch * image_slots, dtype=torch.long, device=device)
    token_slot = torch.empty(batch * num_tokens, dtype=torch.long, device=device)
    selected = torch.empty(batch, dtype=torch.long, device=device)
    rows = torch.empty_like(token_index)
    holds_token = torch.empty(batch * image_slots, dtype=torch.bool, device=device)
    _plan_rows_kernel[(batch,)](
        keep_pixels.contiguous().view(torch.uint8), token_pixel.contiguous(),
        token_is_padding.contiguous().view(torch.uint8), token_index, token_slot, selected, rows,
        holds_token.view(torch.uint8), num_tokens, pixels, image_slots, batch * pixels, BLOCK=_PLAN_BLOCK)
    plan = PackPlan(token_index=token_index, token_slot=token_slot, selected=selected, container_len=container_len,
                    num_tokens=num_tokens, per_image=True, per_image_capacity=capacity)
    return plan, rows, holds_token


@triton.jit
def _gather_kernel(tokens_ptr, gate_ptr, rows_ptr, out_ptr, num_slots, channels,
                   ROWS: tl.constexpr, CHANNELS: tl.constexpr):
    slots = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)  # slots * channels may pass 2**31
    chans = tl.program_id(1) * CHANNELS + tl.arange(0, CHANNELS)
    inside = slots < num_slots
    row = tl.load(rows_ptr + slots, mask=inside, other=0)
    gate = tl.load(gate_ptr + row, mask=inside, other=0.0).to(tl.float32)
    tile = inside[:, None] & (chans < channels)[None, :]
    values = tl.load(tokens_ptr + row[:, None] * channels + chans[None, :], mask=tile, other=0.0)
    tl.store(out_ptr + slots[:, None] * channels + chans[None, :],
             (values.to(tl.float32) * gate[:, None]).to(out_ptr.dtype.element_ty), mask=tile)


@triton.jit
def _gather_backward_kernel(grad_ptr, tokens_ptr, gate_ptr, rows_ptr, holds_ptr, grad_tokens_ptr, grad_gate_ptr,
                            num_slots, channels, ROWS: tl.constexpr, CHANNELS: tl.constexpr):
    slots = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    held = tl.load(holds_ptr + slots, mask=slots < num_slots, other=0) != 0
    row = tl.load(rows_ptr + slots, mask=held, other=0)
    gate = tl.load(gate_ptr + row, mask=held, other=0.0).to(tl.float32)
    dot = tl.zeros([ROWS], dtype=tl.float32)
    for start in range(0, channels, CHANNELS):
        chans = start + tl.arange(0, CHANNELS)
        tile = held[:, None] & (chans < channels)[None, :]
        source = row[:, None] * channels + chans[None, :]
        grad = tl.load(grad_ptr + slots[:, None] * channels + chans[None, :], mask=tile, other=0.0).to(tl.float32)
        values = tl.load(tokens_ptr + source, mask=tile, other=0.0).to(tl.float32)
        tl.store(grad_tokens_ptr + source, (grad * gate[:, None]).to(grad_tokens_ptr.dtype.element_ty), mask=tile)
        dot += tl.sum(grad * values, axis=1)
    tl.store(grad_gate_ptr + row, dot.to(grad_gate_ptr.dtype.element_ty), mask=held)


def _gather(tokens: Tensor, gate: Tensor, rows: Tensor, dtype: torch.dtype) -> Tensor:
    out = torch.empty(rows.shape[0], tokens.shape[1], dtype=dtype, device=tokens.device)
    if rows.numel():
        grid = (triton.cdiv(rows.shape[0], _ROWS), triton.cdiv(tokens.shape[1], _CHANNELS))
        _gather_kernel[grid](tokens, gate, rows, out, rows.shape[0], tokens.shape[1], ROWS=_ROWS, CHANNELS=_CHANNELS)
    return out


class _GatherGated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tokens: Tensor, gate: Tensor, rows: Tensor, holds_token: Tensor, dtype: torch.dtype) -> Tensor:
        ctx.save_for_backward(tokens, gate, rows, holds_token)
        return _gather(tokens, gate, rows, dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        tokens, gate, rows, holds_token = ctx.saved_tensors
        grad_tokens, grad_gate = torch.zeros_like(tokens), torch.zeros_like(gate)
        if rows.numel():
            _gather_backward_kernel[(triton.cdiv(rows.shape[0], _ROWS),)](
                grad.contiguous(), tokens, gate, rows, holds_token.view(torch.uint8), grad_tokens, grad_gate,
                rows.shape[0], tokens.shape[1], ROWS=_ROWS, CHANNELS=_CHANNELS)
        return grad_tokens, grad_gate, None, None, None


def gather_gated(tokens: Tensor, gate: Tensor, rows: Tensor, holds_token: Tensor, *,
                 dtype: torch.dtype | None = None) -> Tensor:
    """``tokens[rows] * gate[rows, None]``: (R, C) and (R,) gathered into (slots, C), in ``dtype``
    (default: the inputs' promoted dtype; give the autocast dtype to save the qkv projection a cast).

    The backward writes gradients for the slots that ``holds_token`` flags only: the others must get a
    zero gradient (their attention output is discarded), and their rows may repeat.
    """
    tokens, gate = tokens.contiguous(), gate.contiguous()
    dtype = dtype or torch.result_type(tokens, gate)
    if torch.is_grad_enabled() and (tokens.requires_grad or gate.requires_grad):
        return _GatherGated.apply(tokens, gate, rows, holds_token, dtype)
    return _gather(tokens, gate, rows, dtype)


@triton.jit
def _weighted_slots(rows_ptr, holds_ptr, scale_ptr, num_slots, pixels, HAS_SCALE: tl.constexpr,
                    ROWS: tl.constexpr, CHANNELS: tl.constexpr):
    """This program's tile of slots and channels, each slot's row, whether it holds a token, and its
    weight: 0 without a token, else 1 or its image's drop-path scale."""
    slots = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    chans = tl.program_id(1) * CHANNELS + tl.arange(0, CHANNELS)
    inside = slots < num_slots
    row = tl.load(rows_ptr + slots, mask=inside, other=0)
    held = tl.load(holds_ptr + slots, mask=inside, other=0) != 0
    weight = held.to(tl.float32)
    if HAS_SCALE:
        weight *= tl.load(scale_ptr + row // pixels, mask=held, other=0.0)
    return slots, chans, inside, row, held, weight


@triton.jit
def _scatter_kernel(target_ptr, packed_ptr, rows_ptr, holds_ptr, scale_ptr, num_slots, channels, pixels,
                    HAS_SCALE: tl.constexpr, ROWS: tl.constexpr, CHANNELS: tl.constexpr):
    slots, chans, _, row, held, weight = _weighted_slots(rows_ptr, holds_ptr, scale_ptr, num_slots, pixels,
                                                         HAS_SCALE, ROWS, CHANNELS)
    tile = held[:, None] & (chans < channels)[None, :]
    target = target_ptr + row[:, None] * channels + chans[None, :]
    packed = tl.load(packed_ptr + slots[:, None] * channels + chans[None, :], mask=tile, other=0.0)
    total = tl.load(target, mask=tile, other=0.0).to(tl.float32) + packed.to(tl.float32) * weight[:, None]
    tl.store(target, total.to(target_ptr.dtype.element_ty), mask=tile)


@triton.jit
def _scatter_backward_kernel(grad_ptr, grad_packed_ptr, rows_ptr, holds_ptr, scale_ptr, num_slots, channels, pixels,
                             HAS_SCALE: tl.constexpr, ROWS: tl.constexpr, CHANNELS: tl.constexpr):
    slots, chans, inside, row, held, weight = _weighted_slots(rows_ptr, holds_ptr, scale_ptr, num_slots, pixels,
                                                              HAS_SCALE, ROWS, CHANNELS)
    chans_inside = (chans < channels)[None, :]
    grad = tl.load(grad_ptr + row[:, None] * channels + chans[None, :], mask=held[:, None] & chans_inside, other=0.0)
    tl.store(grad_packed_ptr + slots[:, None] * channels + chans[None, :],
             (grad.to(tl.float32) * weight[:, None]).to(grad_packed_ptr.dtype.element_ty),
             mask=inside[:, None] & chans_inside)


def _scatter_launch(kernel: triton.JITFunction, by_row: Tensor, by_slot: Tensor, rows: Tensor, holds_token: Tensor,
                    image_scale: Tensor | None, pixels: int) -> None:
    """Either scatter kernel on (R, C) ``by_row`` (the target, or its gradient) and (slots, C) ``by_slot``."""
    if rows.numel():
        grid = (triton.cdiv(rows.shape[0], _ROWS), triton.cdiv(by_row.shape[1], _CHANNELS))
        kernel[grid](by_row, by_slot, rows, holds_token.view(torch.uint8), rows if image_scale is None else image_scale,
                     rows.shape[0], by_row.shape[1], pixels, HAS_SCALE=image_scale is not None,
                     ROWS=_ROWS, CHANNELS=_CHANNELS)


def _scatter(target: Tensor, packed: Tensor, rows: Tensor, holds_token: Tensor, image_scale: Tensor | None,
             pixels: int) -> Tensor:
    out = target.clone()
    _scatter_launch(_scatter_kernel, out, packed, rows, holds_token, image_scale, pixels)
    return out


class _ScatterAddWeighted(torch.autograd.Function):
    @staticmethod
    def forward(ctx, target: Tensor, packed: Tensor, rows: Tensor, holds_token: Tensor, image_scale: Tensor | None,
                pixels: int) -> Tensor:
        ctx.save_for_backward(rows, holds_token, image_scale)
        ctx.packed_dtype, ctx.pixels = packed.dtype, pixels
        return _scatter(target, packed, rows, holds_token, image_scale, pixels)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        rows, holds_token, image_scale = ctx.saved_tensors
        grad = grad.contiguous()
        grad_packed = torch.empty(rows.shape[0], grad.shape[1], dtype=ctx.packed_dtype, device=grad.device)
        _scatter_launch(_scatter_backward_kernel, grad, grad_packed, rows, holds_token, image_scale, ctx.pixels)
        return grad, grad_packed, None, None, None, None


def scatter_add_weighted(target: Tensor, packed: Tensor, rows: Tensor, holds_token: Tensor, *,
                         image_scale: Tensor | None = None, pixels: int | None = None) -> Tensor:
    """``target`` (R, C) plus each held slot's ``packed`` row (slots, C) at its row, times its image's
    ``image_scale`` (B,) float32 (row // ``pixels`` is the image; None: 1). Out of place; what
    :func:`spa_model.packed_attention.scatter_add_rows` computes with weight ``holds_token * scale``,
    for slots whose held rows are distinct."""
    if image_scale is not None and (pixels is None or pixels * image_scale.shape[0] != target.shape[0]):
        raise ValueError(f"image_scale of {image_scale.shape[0]} images needs the rows per image: {target.shape[0]} "
                         f"rows, pixels={pixels}")
    target, packed = target.contiguous(), packed.contiguous()
    pixels = pixels or 1  # not read without a scale
    if torch.is_grad_enabled() and (target.requires_grad or packed.requires_grad):
        return _ScatterAddWeighted.apply(target, packed, rows, holds_token, image_scale, pixels)
    return _scatter(target, packed, rows, holds_token, image_scale, pixels)
