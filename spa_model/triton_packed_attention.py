"""Fused Triton kernels for attention inside containers (forward and backward).

One program per (container, group of heads). It reads its q, k and v rows straight out of the packed qkv
projection ((containers * L, 3C), no permuted copies), builds the attention rule on the fly from
the plan's token_index (image = token // N), an (N, 3) int32 table of (region, row, col) per
token position and the bias table as the model holds it, ((2M-1)^2, heads), and writes its head's slice of the
(containers * L, C) output plus the row log-sum-exp for backward.
Nothing of size (containers, heads, L, L) ever reaches memory, which is what the SDPA path pays for.

Backward recomputes the scores from the saved log-sum-exp (FlashAttention style), writes dq, dk, dv
into a (containers * L, 3C) gradient in the same layout, and adds the bias gradient with atomics
into ``_DTABLE_GROUPS`` partial copies of the table, each (heads, (2M-1)^2) so that one head's
entries lie together (fewer collisions on the 169 entries), which the caller sums.

A container fits one block (L <= BLOCK_L = next power of two >= 16), so there is no online softmax.
float32 inputs use IEEE float32 dots (no tf32), matching the SDPA path's precision.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from .packing import PackPlan

__all__ = ["triton_packed_attention"]

_DTABLE_GROUPS = 16


@triton.jit
def _pair_rule(index_ptr, info_ptr, slot, valid, offs_l, num_tokens, total_tokens,
               WINDOW: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Allowed pairs (BLOCK_L, BLOCK_L) and their bias-table index, shared by all heads."""
    # Slot keys straight from the plan: token = image * N + position; padding slots hold B * N.
    token = tl.load(index_ptr + slot, mask=valid, other=total_tokens)
    is_token = token < total_tokens
    position = tl.where(is_token, token % num_tokens, 0)
    image = tl.where(is_token, token // num_tokens, -1)       # padding: its own segment
    image = tl.where(valid, image, -2)                          # beyond L: never a partner
    region = tl.load(info_ptr + position * 3, mask=is_token, other=0)
    # Rows beyond L attend only themselves so that no row is empty (they are never stored).
    allowed = ((image[:, None] == image[None, :]) & (region[:, None] == region[None, :])
               & valid[None, :]) | (offs_l[:, None] == offs_l[None, :])
    index = tl.zeros_like(region)[:, None] + tl.zeros_like(region)[None, :]
    if HAS_BIAS:
        row = tl.load(info_ptr + position * 3 + 1, mask=is_token, other=0)
        col = tl.load(info_ptr + position * 3 + 2, mask=is_token, other=0)
        dy = tl.minimum(tl.maximum(row[:, None] - row[None, :], 1 - WINDOW), WINDOW - 1)
        dx = tl.minimum(tl.maximum(col[:, None] - col[None, :], 1 - WINDOW), WINDOW - 1)
        index = (dy + WINDOW - 1) * (2 * WINDOW - 1) + (dx + WINDOW - 1)
    return allowed, index


@triton.jit
def _head_scores(q, k, table_ptr, head, num_heads, allowed, index, scale,
                 HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr):
    """One head's masked scores (BLOCK_L, BLOCK_L) in float32 (bias table: (entries, heads))."""
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    if HAS_BIAS:
        bias = tl.load(table_ptr + index * num_heads + head, mask=allowed, other=0.0)
        scores += bias.to(tl.float32)
    return tl.where(allowed, scores, float("-inf"))


@triton.jit
def _forward_kernel(qkv_ptr, index_ptr, info_ptr, table_ptr, out_ptr, lse_ptr,
                    length, channels, num_heads, head_dim, num_tokens, total_tokens, scale,
                    WINDOW: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                    HEADS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    container = tl.program_id(0)
    offs_l = tl.arange(0, BLOCK_L)
    offs_d = tl.arange(0, BLOCK_D)
    valid = offs_l < length
    slot = container * length + offs_l
    tile = valid[:, None] & (offs_d < head_dim)[None, :]
    allowed, index = _pair_rule(index_ptr, info_ptr, slot, valid, offs_l, num_tokens, total_tokens,
                                WINDOW, HAS_BIAS)
    for step in range(HEADS):
        head = tl.program_id(1) * HEADS + step
        rows = qkv_ptr + slot[:, None] * (3 * channels) + head * head_dim + offs_d[None, :]
        q = tl.load(rows, mask=tile, other=0.0)
        k = tl.load(rows + channels, mask=tile, other=0.0)
        v = tl.load(rows + 2 * channels, mask=tile, other=0.0)
        scores = _head_scores(q, k, table_ptr, head, num_heads, allowed, index, scale, HAS_BIAS, PRECISION)
        row_max = tl.max(scores, axis=1)
        probs = tl.exp(scores - row_max[:, None])
        row_sum = tl.sum(probs, axis=1)
        out = tl.dot(probs.to(v.dtype), v, input_precision=PRECISION) / row_sum[:, None]
        tl.store(out_ptr + slot[:, None] * channels + head * head_dim + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=tile)
        tl.store(lse_ptr + slot * num_heads + head, row_max + tl.log(row_sum), mask=valid)


@triton.jit
def _backward_kernel(qkv_ptr, index_ptr, info_ptr, table_ptr, out_ptr, lse_ptr,
                     grad_out_ptr, grad_qkv_ptr, grad_table_ptr, table_size,
                     length, channels, num_heads, head_dim, num_tokens, total_tokens, scale,
                     WINDOW: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                     GROUPS: tl.constexpr, HEADS: tl.constexpr, BLOCK_L: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    container = tl.program_id(0)
    offs_l = tl.arange(0, BLOCK_L)
    offs_d = tl.arange(0, BLOCK_D)
    valid = offs_l < length
    slot = container * length + offs_l
    tile = valid[:, None] & (offs_d < head_dim)[None, :]
    allowed, index = _pair_rule(index_ptr, info_ptr, slot, valid, offs_l, num_tokens, total_tokens,
                                WINDOW, HAS_BIAS)
    pair = allowed & valid[:, None] & valid[None, :]
    dtype = grad_qkv_ptr.dtype.element_ty
    for step in range(HEADS):
        head = tl.program_id(1) * HEADS + step
        qkv_offsets = slot[:, None] * (3 * channels) + head * head_dim + offs_d[None, :]
        out_offsets = slot[:, None] * channels + head * head_dim + offs_d[None, :]
        q = tl.load(qkv_ptr + qkv_offsets, mask=tile, other=0.0)
        k = tl.load(qkv_ptr + qkv_offsets + channels, mask=tile, other=0.0)
        v = tl.load(qkv_ptr + qkv_offsets + 2 * channels, mask=tile, other=0.0)
        out = tl.load(out_ptr + out_offsets, mask=tile, other=0.0).to(tl.float32)
        grad_out = tl.load(grad_out_ptr + out_offsets, mask=tile, other=0.0)
        scores = _head_scores(q, k, table_ptr, head, num_heads, allowed, index, scale, HAS_BIAS, PRECISION)
        lse = tl.load(lse_ptr + slot * num_heads + head, mask=valid, other=0.0)
        probs = tl.exp(scores - lse[:, None])
        probs = tl.where(valid[:, None], probs, 0.0)  # rows beyond L contribute nothing
        grad_v = tl.dot(tl.trans(probs.to(v.dtype)), grad_out, input_precision=PRECISION)
        grad_probs = tl.dot(grad_out, tl.trans(v), input_precision=PRECISION)
        delta = tl.sum(grad_out.to(tl.float32) * out, axis=1)
        grad_scores = probs * (grad_probs - delta[:, None])
        grad_q = tl.dot(grad_scores.to(k.dtype), k, input_precision=PRECISION) * scale
        grad_k = tl.dot(tl.trans(grad_scores.to(q.dtype)), q, input_precision=PRECISION) * scale
        tl.store(grad_qkv_ptr + qkv_offsets, grad_q.to(dtype), mask=tile)
        tl.store(grad_qkv_ptr + qkv_offsets + channels, grad_k.to(dtype), mask=tile)
        tl.store(grad_qkv_ptr + qkv_offsets + 2 * channels, grad_v.to(dtype), mask=tile)
        if HAS_BIAS:
            partial = grad_table_ptr + ((container % GROUPS) * num_heads + head) * table_size
            tl.atomic_add(partial + index, grad_scores, mask=pair, sem="relaxed")


# Launch shape per pass: warps per program and heads per program (the largest divisor of the head
# count up to it), chosen by benchmarks/bench_packed_attention.py --sweep (figures in
# benchmarks/README.md, "Kernel launch shapes").
LAUNCH = {"forward": dict(num_warps=2, heads=1), "backward": dict(num_warps=8, heads=6)}


def _launch(pass_: str, length: int, num_heads: int, head_dim: int, dtype: torch.dtype) -> dict:
    return _launch_config(length, num_heads, head_dim, dtype, **LAUNCH[pass_])


@functools.lru_cache(maxsize=None)  # a few shapes per model; computed once, not per call
def _launch_config(length: int, num_heads: int, head_dim: int, dtype: torch.dtype, *, num_warps: int,
                   heads: int) -> dict:
    """The kernel's constants; keyed on ``LAUNCH``'s values too, so a changed ``LAUNCH`` takes effect."""
    heads = max(h for h in range(1, heads + 1) if num_heads % h == 0)
    return dict(HEADS=heads, BLOCK_L=max(16, triton.next_power_of_2(length)),
                BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
                PRECISION="ieee" if dtype == torch.float32 else "tf32", num_warps=num_warps)


def _forward_impl(qkv: Tensor, table: Tensor | None, token_index: Tensor, positions: Tensor, length: int,
                  num_heads: int, num_tokens: int, total_tokens: int, window: int, scale: float
                  ) -> tuple[Tensor, Tensor]:
    """(out, lse): attention output (slots, C) and the row log-sum-exp (slots, heads) for backward.
    table: the bias table as ((2M-1)^2, heads), contiguous, or None."""
    qkv = qkv.contiguous()
    num_slots, channels = qkv.shape[0], qkv.shape[1] // 3
    out = torch.empty(num_slots, channels, dtype=qkv.dtype, device=qkv.device)
    lse = torch.empty(num_slots, num_heads, dtype=torch.float32, device=qkv.device)
    if num_slots:
        config = _launch("forward", length, num_heads, channels // num_heads, qkv.dtype)
        _forward_kernel[(num_slots // length, num_heads // config["HEADS"])](
            qkv, token_index, positions, positions if table is None else table, out, lse,
            length, channels, num_heads, channels // num_heads, num_tokens, total_tokens, scale,
            WINDOW=window, HAS_BIAS=table is not None, **config)
    return out, lse


def _backward_impl(grad_out: Tensor, qkv: Tensor, table: Tensor | None, token_index: Tensor,
                   positions: Tensor, out: Tensor, lse: Tensor, length: int, num_heads: int, num_tokens: int,
                   total_tokens: int, window: int, scale: float) -> tuple[Tensor, Tensor]:
    """(grad_qkv, grad_table_groups): the bias gradient in float32 as ``_DTABLE_GROUPS`` partial
    (heads, table) sums, left for the caller to add up; empty (0, heads, 1) without a table."""
    qkv = qkv.contiguous()
    num_slots, channels = qkv.shape[0], qkv.shape[1] // 3
    grad_qkv = torch.empty_like(qkv)
    table_size = table.shape[0] if table is not None else 1
    grad_table = torch.zeros(_DTABLE_GROUPS if table is not None else 0, num_heads, table_size,
                             dtype=torch.float32, device=qkv.device)
    if num_slots:
        config = _launch("backward", length, num_heads, channels // num_heads, qkv.dtype)
        _backward_kernel[(num_slots // length, num_heads // config["HEADS"])](
            qkv, token_index, positions, positions if table is None else table, out, lse,
            grad_out.contiguous(), grad_qkv, positions if table is None else grad_table, table_size,
            length, channels, num_heads, channels // num_heads, num_tokens, total_tokens, scale,
            WINDOW=window, HAS_BIAS=table is not None, GROUPS=_DTABLE_GROUPS, **config)
    return grad_qkv, grad_table


# Under torch.compile the kernels run as custom ops: opaque calls with a known output shape (no
# tracing into the Triton launch, no graph break), paired for autograd. Eager mode calls them through
# an autograd.Function instead, whose dispatch costs a fraction of a custom op's, and calls the
# forward directly when no gradient is wanted. The ops hold the kernels and their outputs only: the
# sum of the bias gradient's partial copies runs outside, where Inductor fuses it. The kernels read
# the bias table in the model's layout (no copy per call; the table is a few KiB, cache-resident);
# the gradient's partial copies are head-major, so that one head's atomics touch few lines. Letting
# Inductor launch the kernels (torch.library.triton_op) was measured and rejected: benchmarks/README.md.
_forward = torch.library.custom_op("spa::packed_attention_forward", mutates_args=())(_forward_impl)
_backward = torch.library.custom_op("spa::packed_attention_backward", mutates_args=())(_backward_impl)


@_forward.register_fake
def _(qkv, table, token_index, positions, length, num_heads, num_tokens, total_tokens, window, scale):
    return (qkv.new_empty(qkv.shape[0], qkv.shape[1] // 3),
            qkv.new_empty(qkv.shape[0], num_heads, dtype=torch.float32))


@_backward.register_fake
def _(grad_out, qkv, table, token_index, positions, out, lse, length, num_heads, num_tokens,
      total_tokens, window, scale):
    groups, table_size = (_DTABLE_GROUPS, table.shape[0]) if table is not None else (0, 1)
    return torch.empty_like(qkv), qkv.new_empty(groups, num_heads, table_size, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    qkv, table, token_index, positions, *static = inputs
    ctx.save_for_backward(qkv, table, token_index, positions, *output)
    ctx.static = static


def _gradients(ctx, grad_out: Tensor, backward) -> tuple:
    qkv, table, token_index, positions, out, lse = ctx.saved_tensors
    grad_qkv, grad_groups = backward(grad_out, qkv, table, token_index, positions, out, lse, *ctx.static)
    grad_table = grad_groups.sum(0).t().to(table.dtype) if table is not None else None  # (heads, T) -> (T, heads)
    return grad_qkv, grad_table, None, None, *([None] * len(ctx.static))


_forward.register_autograd(lambda ctx, grad_out, grad_lse: _gradients(ctx, grad_out, _backward),
                           setup_context=_setup_context)


class _PackedAttention(torch.autograd.Function):
    """The same pair as the custom ops, for eager mode."""

    @staticmethod
    def forward(qkv, table, token_index, positions, *static):
        return _forward_impl(qkv, table, token_index, positions, *static)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        _setup_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        return _gradients(ctx, grad_out, _backward_impl)


def triton_packed_attention(qkv: Tensor, plan: PackPlan, *, positions: Tensor, num_heads: int,
                            rel_pos_table: Tensor | None, window: int, scale: float) -> Tensor:
    """Attention inside the containers of ``plan``.

    qkv: (containers * L, 3C) in slot order -> (containers * L, C). positions: (N, 3) int32 (region,
    row, col), see :func:`spa_model.packed_attention.token_positions`.
    """
    table = rel_pos_table.contiguous() if rel_pos_table is not None else None  # (entries, heads): read in place
    args = (qkv, table, plan.token_index, positions, plan.container_len, num_heads,
            max(positions.shape[0], 1), int(plan.token_slot.shape[0]), window, scale)  # B * N: a shape, no sync
    if torch.compiler.is_compiling():
        return _forward(*args)[0]
    needs_grad = torch.is_grad_enabled() and (qkv.requires_grad or (table is not None and table.requires_grad))
    return (_PackedAttention.apply if needs_grad else _forward_impl)(*args)[0]
