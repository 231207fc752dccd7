"""Select and Pack Attention: multi-head self-attention over the selected tokens only.

The op is a composition of small pure functions, and SPT's :class:`spa_model.models.SpaBlock` runs
the same ones; in eager mode on CUDA it runs their Triton equivalents (:mod:`spa_model.triton_rows`)
around the same attention. The float64 reference tests check these functions and the whole block,
either way:

* :func:`spa_model.packing.plan_packing`: which slot of which container each kept token takes;
* :func:`slot_rows`: the row of the source tensor each slot reads (padding slots read distinct
  stand-in rows), and which slots hold a token;
* ``F.linear`` for qkv on the packed rows, :func:`packed_attention` inside the containers,
  ``F.linear`` for the projection;
* :func:`scatter_add_rows`: the projected rows, weighted, added back to their tokens' rows (padding
  slots weigh 0), into the residual stream (SpaBlock) or into zeros (:func:`select_pack_attention`).

Attention rule inside a container: token i attends token j iff they belong to the same image AND
the same shift region (``positions[:, 0]``: Swin's shifted-window mask generalised; all zeros for
unshifted blocks). Allowed pairs get Swin's relative position bias, looked up with the clamped offset
``(dy, dx) = clip(coords_i - coords_j, -(M-1), M-1)`` in the ``((2M-1)^2, heads)`` table. Tokens
of one container come from anywhere in the image when the selection is sparse, so the offset can
exceed the window; clamping keeps the table (and a Swin checkpoint's weights) usable as is. With
everything kept, ``per_image=True`` and ``container_len = M*M`` the result is exactly Swin's
(shifted) window attention. ``rel_pos_table=None`` drops the bias (region/image mask only).

Padding slots form their own segment (image -1): they attend each other, never a real token, so no
softmax row is fully masked and nothing turns NaN; their output is discarded.

Gradients reach ``x``, the four linear parameters and ``rel_pos_table`` (autograd for naive/sdpa,
a Triton backward for triton). ``keep`` is a hard choice: a straight-through gradient to the gate
is the caller's business (multiply the gated tokens by the 1/0 weight before calling).
Host syncs: none when ``capacity`` is given (see :mod:`spa_model.packing`).

Backends (``backend=``):

* ``"naive"``: explicit matmul-softmax-matmul per container (any dtype, float64 in tests).
* ``"sdpa"``: ``F.scaled_dot_product_attention`` on (containers, heads, L, d) with a float mask
  carrying bias and -inf; on CUDA this is the memory-efficient kernel. Autograd throughout.
* ``"triton"``: :mod:`spa_model.triton_packed_attention`, a fused kernel that reads q/k/v from the
  packed qkv projection in place and computes mask and bias on the fly (no (containers, heads, L, L)
  mask in memory), with a Triton backward.
* ``"auto"``: triton for float16/bfloat16/float32 on CUDA when it imports and compiles, else sdpa
  (a failed Triton launch warns once and leaves "auto" on sdpa for the rest of the process).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .packing import PackPlan, plan_packing

__all__ = ["select_pack_attention", "packed_attention", "slot_rows", "flat_slot_rows", "scatter_add_rows",
           "token_positions", "SlotGeometry", "slot_geometry", "container_attention_mask", "triton_usable"]


@dataclass(frozen=True)
class SlotGeometry:
    """Per-slot keys of the attention rule, (num_containers, L) long each."""

    image: Tensor    # -1 for padding slots
    region: Tensor   # shift-region id (0 for padding)
    row: Tensor      # coords in the frame where windows are taken
    col: Tensor


def token_positions(*, region: Tensor, coords: Tensor) -> Tensor:
    """(N, 3) int32 (region, row, col) of each token position: what :func:`packed_attention` reads."""
    return torch.cat([region[:, None], coords], 1).to(torch.int32)


def slot_geometry(plan: PackPlan, positions: Tensor) -> SlotGeometry:
    """Gather image, region and coordinates of every slot of ``plan``."""
    num_tokens = positions.shape[0]
    position = plan.token_index.view_as(plan.slot_image) % max(num_tokens, 1)
    is_pad = plan.slot_image < 0
    info = torch.where(is_pad[..., None], 0, positions.long()[position])
    return SlotGeometry(image=plan.slot_image, region=info[..., 0], row=info[..., 1], col=info[..., 2])


def _relative_index(geometry: SlotGeometry, window: int) -> Tensor:
    """(containers, L, L) index into the relative-position table of each pair (i, j)."""
    reach = window - 1
    dy = (geometry.row[:, :, None] - geometry.row[:, None, :]).clamp(-reach, reach)
    dx = (geometry.col[:, :, None] - geometry.col[:, None, :]).clamp(-reach, reach)
    return (dy + reach) * (2 * window - 1) + (dx + reach)


def container_attention_mask(geometry: SlotGeometry, *, rel_pos_table: Tensor | None, window: int,
                             dtype: torch.dtype) -> Tensor:
    """Additive float mask (containers, heads or 1, L, L): bias where allowed, -inf elsewhere."""
    allowed = ((geometry.image[:, :, None] == geometry.image[:, None, :])
               & (geometry.region[:, :, None] == geometry.region[:, None, :]))[:, None]
    if rel_pos_table is None:
        bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    else:
        # embedding, not indexing: its backward reduces the many hits per table entry by sorted
        # segments, where an accumulating index_put serialises them (benchmarks/README.md).
        bias = F.embedding(_relative_index(geometry, window), rel_pos_table.to(dtype))
        bias = bias.permute(0, 3, 1, 2).contiguous()  # (containers, heads, L, L), last dim contiguous
    return bias.masked_fill(~allowed, float("-inf"))


def _attend_naive(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    scores = (q * scale) @ k.transpose(-2, -1) + mask
    return scores.softmax(dim=-1) @ v


def _attend_sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    # The mask is broadcast over heads when it carries no bias.
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.expand(-1, q.shape[1], -1, -1),
                                          scale=scale)


def _attend_with_dense_mask(qkv: Tensor, plan: PackPlan, *, attend: Callable[..., Tensor], positions: Tensor,
                            num_heads: int, rel_pos_table: Tensor | None, window: int, scale: float) -> Tensor:
    num_slots, channels = qkv.shape[0], qkv.shape[1] // 3
    geometry = slot_geometry(plan, positions)
    q, k, v = (qkv.view(plan.num_containers, plan.container_len, 3, num_heads, channels // num_heads)
               .permute(2, 0, 3, 1, 4).unbind(0))                      # 3 x (containers, heads, L, d)
    mask = container_attention_mask(geometry, rel_pos_table=rel_pos_table, window=window, dtype=q.dtype)
    return attend(q, k, v, mask, scale).transpose(1, 2).reshape(num_slots, channels)


def _attend_triton(qkv: Tensor, plan: PackPlan, **kwargs) -> Tensor:
    from .triton_packed_attention import triton_packed_attention

    return triton_packed_attention(qkv, plan, **kwargs)


_TRITON_FAILED = False  # set once a Triton launch raised; "auto" then stays on sdpa


def triton_usable(qkv: Tensor) -> bool:
    """Whether the Triton kernels can run on this tensor (CUDA, a float dtype they take, Triton there)."""
    if _TRITON_FAILED or qkv.device.type != "cuda" or qkv.dtype not in (torch.float16, torch.bfloat16,
                                                                        torch.float32):
        return False
    try:
        from . import triton_packed_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _attend_auto(qkv: Tensor, plan: PackPlan, **kwargs) -> Tensor:
    global _TRITON_FAILED
    if triton_usable(qkv):
        try:
            return _attend_triton(qkv, plan, **kwargs)
        except Exception as error:  # a kernel that fails to compile must not stop training
            _TRITON_FAILED = True
            warnings.warn(f"triton packed attention failed ({error!r}); using sdpa from now on")
    return _BACKENDS["sdpa"](qkv, plan, **kwargs)


_BACKENDS: dict[str, Callable[..., Tensor]] = {
    "naive": partial(_attend_with_dense_mask, attend=_attend_naive),
    "sdpa": partial(_attend_with_dense_mask, attend=_attend_sdpa),
    "triton": _attend_triton,
    "auto": _attend_auto,
}


def packed_attention(qkv: Tensor, plan: PackPlan, *, positions: Tensor, num_heads: int,
                     rel_pos_table: Tensor | None, window: int, backend: str = "auto") -> Tensor:
    """Attention inside the containers of ``plan``.

    qkv: (containers * L, 3C) in slot order (the packed tokens' qkv projection) -> (containers * L, C).
    positions: (N, 3) int32 from :func:`token_positions`.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(_BACKENDS)}")
    head_dim = qkv.shape[1] // 3 // num_heads
    return _BACKENDS[backend](qkv, plan, positions=positions, num_heads=num_heads,
                              rel_pos_table=rel_pos_table, window=window, scale=head_dim ** -0.5)


def slot_rows(plan: PackPlan, token_rows: Tensor, spread: Tensor) -> tuple[Tensor, Tensor]:
    """Source row read by each slot, and whether the slot holds a token, both (slots,).

    token_rows: (B * N + 1,) long, the source row of each flat token, -1 where there is none (window
    padding), and -1 last, for the plan's padding slots (``token_index == B * N``). spread:
    (slots,) long distinct rows that slots without a token read instead: their output is discarded,
    and distinct rows keep the backward's ``index_add`` free of hot-spot collisions.
    """
    rows = token_rows[plan.token_index]
    holds_token = rows >= 0
    return torch.where(holds_token, rows, spread), holds_token


def flat_slot_rows(plan: PackPlan, total: int) -> tuple[Tensor, Tensor]:
    """:func:`slot_rows` for a flat source of ``total`` rows that are all tokens (no window padding)."""
    device = plan.token_index.device
    token_rows = torch.cat([torch.arange(total, device=device), torch.full((1,), -1, device=device)])
    return slot_rows(plan, token_rows, torch.arange(plan.num_slots, device=device) % total)


def scatter_add_rows(target: Tensor, packed: Tensor, rows: Tensor, weight: Tensor) -> Tensor:
    """``target`` (R, C) plus each slot's ``packed`` row times its ``weight`` (slots,) at its source
    row: weight 0 for slots without a token (they add nothing), 1 or a drop-path scale otherwise.
    Give ``weight`` the target's dtype: the product is then the row added, one op. Out of place; the
    backward is a gather."""
    return target.index_add(0, rows, (packed * weight[:, None]).to(target.dtype))


def select_pack_attention(x: Tensor, keep: Tensor, *, qkv_weight: Tensor, qkv_bias: Tensor | None,
                          proj_weight: Tensor, proj_bias: Tensor | None, num_heads: int,
                          rel_pos_table: Tensor | None, coords: Tensor, region: Tensor, window: int,
                          container_len: int, per_image: bool = True, capacity: int | None = None,
                          backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Multi-head attention over the kept tokens of ``x``, packed into containers.

    Args:
        x: (B, N, C) tokens (normalised and gated by the caller).
        keep: (B, N) bool, the selected tokens.
        qkv_weight, qkv_bias, proj_weight, proj_bias: the attention's linear layers (3C x C, C x C).
        num_heads: heads; scale is head_dim ** -0.5.
        rel_pos_table: ((2M-1)^2, num_heads) relative position bias table, or None for no bias.
        coords: (N, 2) long (row, col) of each token position in the frame where windows are taken.
        region: (N,) long shift-region id of each token position (zeros for unshifted blocks).
        window: M.
        container_len, per_image, capacity: see :func:`spa_model.packing.plan_packing` (tokens beyond
            a given capacity are dropped: zeros out, like unselected ones).
        backend: "auto", "sdpa", "naive" or "triton" (see the module docstring).

    Returns:
        (out, containers_used): out (B, N, C) with exact zeros at unkept and dropped tokens;
        containers_used a () long tensor (containers holding at least one token).
    """
    batch, num_tokens, channels = x.shape
    if batch * num_tokens == 0:
        return x.new_zeros(batch, num_tokens, proj_weight.shape[0]), keep.new_zeros((), dtype=torch.long)
    plan = plan_packing(keep, container_len=container_len, per_image=per_image, capacity=capacity)
    total = batch * num_tokens
    rows, holds_token = flat_slot_rows(plan, total)
    qkv = F.linear(x.reshape(total, channels).index_select(0, rows), qkv_weight, qkv_bias)
    attended = packed_attention(qkv, plan, positions=token_positions(region=region, coords=coords),
                                num_heads=num_heads, rel_pos_table=rel_pos_table, window=window, backend=backend)
    projected = F.linear(attended, proj_weight, proj_bias)
    target = projected.new_zeros(total, projected.shape[1])
    out = scatter_add_rows(target, projected, rows, holds_token.to(target.dtype))
    return out.view(batch, num_tokens, -1), plan.containers_used
