"""Select and Pack Attention against independent float64 references.

References here are written without the package's code: a per-container loop over the kept tokens
(`_reference_packed`), Swin's (shifted) window attention built from reshapes and Swin's own
relative-position index and shift mask (`_reference_swin_window_attention`), and a whole SPA block
(`_reference_spa_block`: the block's own layers around this file's windowing and attention).
"""
from __future__ import annotations

import functools
import math

import pytest
import torch

from spa_model.packed_attention import select_pack_attention
from spa_model.packing import max_containers, plan_packing

F64 = torch.float64


def _params(channels: int, heads: int, window: int, *, generator: torch.Generator, dtype=F64):
    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    return dict(qkv_weight=rand(3 * channels, channels) * channels ** -0.5, qkv_bias=rand(3 * channels),
                proj_weight=rand(channels, channels) * channels ** -0.5, proj_bias=rand(channels),
                num_heads=heads, rel_pos_table=rand((2 * window - 1) ** 2, heads))


def _reference_packed(x, keep, *, params, coords, region, window, container_len, per_image,
                      use_bias=True):
    """Loop over containers: gather kept tokens in order, chunk into L, masked softmax attention."""
    batch, num_tokens, channels = x.shape
    heads = params["num_heads"]
    head_dim = channels // heads
    kept = [(b, n) for b in range(batch) for n in range(num_tokens) if keep[b, n]]
    sequences = ([[t for t in kept if t[0] == b] for b in range(batch)] if per_image else [kept])
    out = torch.zeros(batch, num_tokens, channels, dtype=x.dtype)
    for sequence in sequences:
        for start in range(0, len(sequence), container_len):
            chunk = sequence[start:start + container_len]
            tokens = torch.stack([x[b, n] for b, n in chunk])
            qkv = tokens @ params["qkv_weight"].T + params["qkv_bias"]
            q, k, v = qkv.view(len(chunk), 3, heads, head_dim).unbind(1)
            attended = torch.zeros(len(chunk), heads, head_dim, dtype=x.dtype)
            for h in range(heads):
                scores = torch.full((len(chunk), len(chunk)), float("-inf"), dtype=x.dtype)
                for i, (bi, ni) in enumerate(chunk):
                    for j, (bj, nj) in enumerate(chunk):
                        if bi != bj or region[ni] != region[nj]:
                            continue
                        dy = max(-(window - 1), min(window - 1, int(coords[ni, 0] - coords[nj, 0])))
                        dx = max(-(window - 1), min(window - 1, int(coords[ni, 1] - coords[nj, 1])))
                        bias = params["rel_pos_table"][(dy + window - 1) * (2 * window - 1)
                                                       + dx + window - 1, h] if use_bias else 0.0
                        scores[i, j] = q[i, h] @ k[j, h] * head_dim ** -0.5 + bias
                attended[:, h] = scores.softmax(-1) @ v[:, h]
            projected = attended.reshape(len(chunk), channels) @ params["proj_weight"].T + params["proj_bias"]
            for i, (b, n) in enumerate(chunk):
                out[b, n] = projected[i]
    return out


def _random_case(batch, height, width, channels, heads, window, *, keep_prob, seed, shifted=True):
    generator = torch.Generator().manual_seed(seed)
    num_tokens = height * width
    x = torch.randn(batch, num_tokens, channels, generator=generator, dtype=F64)
    keep = torch.rand(batch, num_tokens, generator=generator) < keep_prob
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()], 1)
    region = (torch.randint(0, 3, (num_tokens,), generator=generator) if shifted
              else torch.zeros(num_tokens, dtype=torch.long))
    params = _params(channels, heads, window, generator=generator)
    return x, keep, coords, region, params


CASES = [  # batch, height, width, channels, heads, window, container_len, keep_prob
    (1, 4, 5, 8, 2, 3, 9, 0.5),
    (3, 6, 6, 12, 3, 3, 9, 0.3),
    (2, 5, 7, 16, 4, 4, 16, 0.7),
    (4, 3, 3, 8, 1, 2, 4, 0.9),
]


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_matches_per_container_reference(case, per_image, backend):
    batch, height, width, channels, heads, window, length, keep_prob = case
    x, keep, coords, region, params = _random_case(batch, height, width, channels, heads, window,
                                                   keep_prob=keep_prob, seed=hash(case) % 1000)
    out, used = select_pack_attention(x, keep, coords=coords, region=region, window=window,
                                      container_len=length, per_image=per_image, backend=backend, **params)
    expected = _reference_packed(x, keep, params=params, coords=coords, region=region, window=window,
                                 container_len=length, per_image=per_image)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert torch.all(out[~keep] == 0)
    counts = keep.sum(1).tolist()
    expected_used = (sum(-(-c // length) for c in counts) if per_image else -(-sum(counts) // length))
    assert int(used) == expected_used


def test_containers_straddle_images_without_mixing():
    # 2 images x 3 kept tokens, L = 4: the second container holds tokens of both images.
    x, _, coords, region, params = _random_case(2, 2, 3, 8, 2, 3, keep_prob=1.0, seed=1)
    keep = torch.zeros(2, 6, dtype=torch.bool)
    keep[0, [0, 2, 5]] = True
    keep[1, [1, 3, 4]] = True
    plan = plan_packing(keep, container_len=4, per_image=False)
    assert plan.slot_image.tolist() == [[0, 0, 0, 1], [1, 1, -1, -1]]
    assert plan.token_index.tolist() == [0, 2, 5, 7, 9, 10, 12, 12]
    out, _ = select_pack_attention(x, keep, coords=coords, region=region, window=3, container_len=4,
                                   per_image=False, backend="sdpa", **params)
    expected = _reference_packed(x, keep, params=params, coords=coords, region=region, window=3,
                                 container_len=4, per_image=False)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_no_bias_option():
    x, keep, coords, region, params = _random_case(2, 4, 4, 8, 2, 3, keep_prob=0.6, seed=3)
    params = dict(params, rel_pos_table=None)
    out, _ = select_pack_attention(x, keep, coords=coords, region=region, window=3, container_len=9,
                                   backend="sdpa", **params)
    expected = _reference_packed(x, keep, params=params, coords=coords, region=region, window=3,
                                 container_len=9, per_image=True, use_bias=False)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("per_image", [True, False])
def test_empty_selections(per_image):
    x, keep, coords, region, params = _random_case(3, 4, 4, 8, 2, 3, keep_prob=0.5, seed=4)
    keep[1] = False
    for selection in (keep, torch.zeros_like(keep)):
        for capacity in (None, max_containers(3, 16, container_len=9, per_image=per_image)):
            out, used = select_pack_attention(x, selection, coords=coords, region=region, window=3,
                                              container_len=9, per_image=per_image, capacity=capacity,
                                              backend="sdpa", **params)
            assert torch.isfinite(out).all()
            assert torch.all(out[~selection] == 0)
            expected = _reference_packed(x, selection, params=params, coords=coords, region=region,
                                         window=3, container_len=9, per_image=per_image)
            torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert int(used) == 0


@pytest.mark.parametrize("per_image", [True, False])
def test_capacity_given_equals_exact(per_image):
    x, keep, coords, region, params = _random_case(3, 5, 5, 8, 2, 3, keep_prob=0.4, seed=5)
    kwargs = dict(coords=coords, region=region, window=3, container_len=9, per_image=per_image,
                  backend="sdpa", **params)
    exact, used = select_pack_attention(x, keep, **kwargs)
    bound = max_containers(3, 25, container_len=9, per_image=per_image)
    padded, used_padded = select_pack_attention(x, keep, capacity=bound, **kwargs)
    torch.testing.assert_close(padded, exact, rtol=1e-12, atol=1e-12)
    assert int(used_padded) == int(used)
    plan = plan_packing(keep, container_len=9, per_image=per_image, capacity=bound)
    assert plan.slot_image.shape == ((3 if per_image else 1) * bound, 9)
    assert torch.equal(plan.placed, keep.sum(1))


@pytest.mark.parametrize("per_image", [True, False])
def test_tokens_beyond_the_capacity_are_dropped(per_image):
    """Per image, the kept tokens past its capacity * L slots (batch-wide: the batch's past the last
    slot), in index order, drop out: the rest compute what they compute on the truncated selection."""
    x, keep, coords, region, params = _random_case(3, 5, 5, 8, 2, 3, keep_prob=0.7, seed=10)
    capacity = 1 if per_image else 3  # 9 slots per image, or 27 in all
    kwargs = dict(coords=coords, region=region, window=3, container_len=9, per_image=per_image, backend="sdpa")
    out, used = select_pack_attention(x, keep, capacity=capacity, **kwargs, **params)
    rank = keep.cumsum(1) if per_image else keep.flatten().cumsum(0).view_as(keep)
    fits = keep & (rank <= 9 if per_image else rank <= 27)
    assert (keep.sum(1) > fits.sum(1)).any()  # something was dropped
    expected = _reference_packed(x, fits, params=params, coords=coords, region=region, window=3,
                                 container_len=9, per_image=per_image)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    plan = plan_packing(keep, container_len=9, per_image=per_image, capacity=capacity)
    assert torch.equal(plan.selected, keep.sum(1)) and torch.equal(plan.placed, fits.sum(1))
    assert int(used) == (3 if per_image else 3)


def test_per_image_output_independent_of_other_images():
    x, keep, coords, region, params = _random_case(3, 5, 6, 8, 2, 3, keep_prob=0.5, seed=6)
    kwargs = dict(coords=coords, region=region, window=3, container_len=9, per_image=True,
                  backend="sdpa", **params)
    out, _ = select_pack_attention(x, keep, **kwargs)
    x2, keep2 = x.clone(), keep.clone()
    x2[[0, 2]] = torch.randn(2, 30, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    keep2[[0, 2]] = ~keep[[0, 2]]
    assert keep[0].sum() % 9 != keep2[0].sum() % 9  # image 1 starts at another slot of a container
    out2, _ = select_pack_attention(x2, keep2, **kwargs)
    torch.testing.assert_close(out2[1], out[1], rtol=1e-12, atol=1e-12)  # BLAS blocking may vary
    # The batch-wide layout shifts image 1's container boundaries, so its output does change.
    kwargs["per_image"] = False
    shared, _ = select_pack_attention(x, keep, **kwargs)
    shared2, _ = select_pack_attention(x2, keep2, **kwargs)
    assert not torch.allclose(shared2[1], shared[1])


def _reference_swin_window_attention(x, *, params, window, shift):
    """Swin's W-MSA / SW-MSA on (B, H, W, C), as in microsoft/Swin-Transformer, in float64."""
    batch, height, width, channels = x.shape
    heads = params["num_heads"]
    head_dim = channels // heads
    m = window
    # Swin's relative_position_index.
    grid = torch.stack(torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")).flatten(1)
    relative = (grid[:, :, None] - grid[:, None, :]).permute(1, 2, 0) + (m - 1)
    index = relative[..., 0] * (2 * m - 1) + relative[..., 1]
    bias = params["rel_pos_table"][index.flatten()].view(m * m, m * m, heads).permute(2, 0, 1)
    # Swin's shift mask (img_mask slices), -100 between regions.
    img_mask = torch.zeros(height, width)
    label = 0
    for hs in (slice(0, -m), slice(-m, -shift), slice(-shift, None)):
        for ws in (slice(0, -m), slice(-m, -shift), slice(-shift, None)):
            img_mask[hs, ws] = label
            label += 1
    mask_windows = img_mask.view(height // m, m, width // m, m).permute(0, 2, 1, 3).reshape(-1, m * m)
    attn_mask = (mask_windows[:, None, :] != mask_windows[:, :, None]).to(x.dtype) * -100.0
    if shift == 0:
        attn_mask.zero_()
    shifted = torch.roll(x, (-shift, -shift), (1, 2)) if shift else x
    windows = shifted.view(batch, height // m, m, width // m, m, channels).permute(0, 1, 3, 2, 4, 5)
    windows = windows.reshape(-1, m * m, channels)
    qkv = windows @ params["qkv_weight"].T + params["qkv_bias"]
    q, k, v = qkv.view(-1, m * m, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    num_windows = attn_mask.shape[0]
    scores = (q * head_dim ** -0.5) @ k.transpose(-2, -1) + bias
    scores = scores.view(batch, num_windows, heads, m * m, m * m) + attn_mask[None, :, None]
    attended = scores.view(-1, heads, m * m, m * m).softmax(-1) @ v
    attended = attended.transpose(1, 2).reshape(-1, m * m, channels)
    projected = attended @ params["proj_weight"].T + params["proj_bias"]
    out = projected.view(batch, height // m, width // m, m, m, channels).permute(0, 1, 3, 2, 4, 5)
    out = out.reshape(batch, height, width, channels)
    return torch.roll(out, (shift, shift), (1, 2)) if shift else out


def _window_major(t: torch.Tensor, m: int) -> torch.Tensor:
    """(B, H, W, ...) -> (B, H*W, ...) with tokens ordered window by window."""
    batch, height, width = t.shape[:3]
    rest = t.shape[3:]
    t = t.view(batch, height // m, m, width // m, m, *rest).transpose(2, 3)
    return t.reshape(batch, height * width, *rest)


def _from_window_major(t: torch.Tensor, m: int, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`_window_major`: (B, H*W, ...) -> (B, H, W, ...)."""
    batch, rest = t.shape[0], t.shape[2:]
    t = t.view(batch, height // m, width // m, m, m, *rest).transpose(2, 3)
    return t.reshape(batch, height, width, *rest)


def _swin_frame(height: int, width: int, m: int, shifts: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(coords (N, 2), region (N,)) of the window-major tokens of a rolled (H, W) frame: the caller's
    frame, rolled by -shift; region = Swin's shift regions (its img_mask slices) per dimension."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    row_region = (rows >= height - m).long() + (rows >= height - shifts[0]).long() if shifts[0] else 0 * rows
    col_region = (cols >= width - m).long() + (cols >= width - shifts[1]).long() if shifts[1] else 0 * cols
    coords = _window_major(torch.stack([rows, cols], -1)[None], m)[0]
    return coords, _window_major((row_region * 3 + col_region)[None, ..., None], m)[0, :, 0]


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
@pytest.mark.parametrize("shift", [0, 1])
def test_select_all_equals_swin_window_attention(shift, backend):
    batch, height, width, channels, heads, m = 2, 6, 9, 12, 3, 3
    generator = torch.Generator().manual_seed(7 + shift)
    x = torch.randn(batch, height, width, channels, generator=generator, dtype=F64)
    params = _params(channels, heads, m, generator=generator)
    expected = _reference_swin_window_attention(x, params=params, window=m, shift=shift)

    coords, region = _swin_frame(height, width, m, (shift, shift))
    tokens = _window_major(torch.roll(x, (-shift, -shift), (1, 2)), m)
    keep = torch.ones(batch, height * width, dtype=torch.bool)
    out, used = select_pack_attention(tokens, keep, coords=coords, region=region, window=m,
                                      container_len=m * m, per_image=True, backend=backend, **params)
    assert int(used) == batch * height * width // (m * m)
    out = torch.roll(_from_window_major(out, m, height, width), (shift, shift), (1, 2))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("per_image", [True, False])
def test_gradcheck_sdpa(per_image):
    x, keep, coords, region, params = _random_case(2, 3, 3, 4, 2, 2, keep_prob=0.6, seed=8)
    keep[0, 0] = keep[1, 1] = True
    names = ["qkv_weight", "qkv_bias", "proj_weight", "proj_bias", "rel_pos_table"]
    inputs = [x.requires_grad_()] + [params[n].requires_grad_() for n in names]

    def fn(x, *weights):
        out, _ = select_pack_attention(x, keep, coords=coords, region=region, window=2, container_len=4,
                                       per_image=per_image, num_heads=2, backend="sdpa",
                                       **dict(zip(names, weights)))
        return out

    # Full Jacobians for the straddling layout; the per-image one only differs in the plan.
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=per_image)


def test_float32_sdpa_close_to_float64():
    x, keep, coords, region, params = _random_case(2, 7, 7, 16, 2, 7, keep_prob=0.3, seed=9)
    kwargs = dict(coords=coords, region=region, window=7, container_len=49, backend="sdpa")
    expected, _ = select_pack_attention(x, keep, **kwargs, **params)
    out, _ = select_pack_attention(x.float(), keep, **kwargs,
                                   **{k: (v.float() if torch.is_tensor(v) else v) for k, v in params.items()})
    assert ((out.double() - expected).norm() / expected.norm()) < 1e-5


BACKEND_CASES = [  # case, per_image, use_bias, empty image, capacity beyond what is needed
    (CASES[1], False, True, False, False), (CASES[2], True, True, True, True),
    ((2, 5, 5, 32, 2, 5, 25, 0.5), False, False, False, False)]


def _check_backend(backend: str, device: str, dtype: torch.dtype, tolerance: float,
                   cases=BACKEND_CASES) -> None:
    """Forward and backward against the float64 sdpa path on the CPU: masks, bias, padding and all."""
    for case, per_image, use_bias, empty_image, extra_capacity in cases:
        batch, height, width, channels, heads, window, length, keep_prob = case
        x, keep, coords, region, params = _random_case(batch, height, width, channels, heads, window,
                                                       keep_prob=keep_prob, seed=11)
        if empty_image:
            keep[0] = False
        capacity = (max_containers(batch, height * width, container_len=length, per_image=per_image)
                    if extra_capacity else None)
        if not use_bias:
            params = dict(params, rel_pos_table=None)
        names = [n for n in ("qkv_weight", "qkv_bias", "proj_weight", "proj_bias", "rel_pos_table")
                 if params[n] is not None]
        grad_out = torch.randn(x.shape, dtype=F64)
        results = []
        for run_backend, run_dtype, run_device in [("sdpa", F64, "cpu"), (backend, dtype, device)]:
            leaves = [t.detach().to(run_device, run_dtype).requires_grad_() for t in
                      [x] + [params[n] for n in names]]
            out, _ = select_pack_attention(
                leaves[0], keep.to(run_device), coords=coords.to(run_device), region=region.to(run_device),
                window=window, container_len=length, per_image=per_image, capacity=capacity,
                backend=run_backend, **{**params, **dict(zip(names, leaves[1:]))})
            out.backward(grad_out.to(run_device, run_dtype))
            results.append([out.detach().cpu().double()] + [t.grad.cpu().double() for t in leaves])
        for name, expected, actual in zip(["out", "x"] + names, *results):
            assert torch.isfinite(actual).all(), name
            error = (actual - expected).norm() / expected.norm()
            assert error < tolerance, f"{backend} {dtype} {name}: relative error {error:.2e}"
        assert torch.all(results[1][0][~keep] == 0)
    # Nothing selected anywhere: zeros out, zero gradients, no kernel launch on an empty grid.
    x = torch.randn(2, 9, 8, dtype=dtype, device=device, requires_grad=True)
    table = torch.randn(9, 2, device=device, requires_grad=True)
    weights = _params(8, 2, 2, generator=torch.Generator().manual_seed(0), dtype=dtype)
    weights = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in weights.items()}
    grid = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij"), -1).view(9, 2)
    nothing = torch.zeros(2, 9, dtype=torch.bool, device=device)
    out, used = select_pack_attention(x, nothing, coords=grid.to(device), region=grid[:, 0].to(device) * 0,
                                      window=2, container_len=4, backend=backend,
                                      **dict(weights, rel_pos_table=table))
    out.sum().backward()
    assert int(used) == 0 and torch.all(out == 0) and torch.all(x.grad == 0) and torch.all(table.grad == 0)


# (height, width, shifted, capacity): a padded map shifted and not, one whose padded height is one
# window (Swin does not shift it), and a fixed budget that drops the last kept tokens of each image.
BLOCK_CASES = [(9, 10, True, "auto"), (9, 10, False, "auto"), (4, 11, True, "auto"), (9, 10, True, 0.3)]


def _reference_spa_block(block, x, keep, *, window):
    """An SPA block (eval, oracle selection ``keep``) in float64: the block's own layers (norms, gate,
    qkv, proj, MLP) composed with this file's windowing and attention, not the package's: norm1,
    tokens scaled by the gate's sigmoid, Swin's padding and roll, each image's kept tokens in
    window-major order cut into containers of M * M (those past the block's budget dropped) for
    ``_reference_packed``, the inverse roll, the residual, then the MLP."""
    batch, height, width, channels = x.shape
    m = window
    tokens = block.norm1(x)
    gated = tokens * torch.sigmoid(block.gate(tokens))
    hp, wp = -(-height // m) * m, -(-width // m) * m
    gated = torch.nn.functional.pad(gated, (0, 0, 0, wp - width, 0, hp - height))
    kept = torch.nn.functional.pad(keep, (0, wp - width, 0, hp - height))
    shifts = tuple(m // 2 if block.shifted and size > m else 0 for size in (hp, wp))
    gated, kept = (_window_major(torch.roll(t, (-shifts[0], -shifts[1]), (1, 2)), m) for t in (gated, kept))
    coords, region = _swin_frame(hp, wp, m, shifts)
    if block.budget is not None:
        budget = -(-math.ceil(block.budget.value * height * width) // (m * m)) * m * m
        kept = kept & (kept.cumsum(1) <= budget)
    params = dict(qkv_weight=block.attn.qkv.weight, qkv_bias=block.attn.qkv.bias, proj_weight=block.attn.proj.weight,
                  proj_bias=block.attn.proj.bias, num_heads=block.attn.num_heads,
                  rel_pos_table=block.attn.relative_position_bias_table)
    out = _reference_packed(gated, kept, params=params, coords=coords, region=region, window=m,
                            container_len=m * m, per_image=True)
    out = torch.roll(_from_window_major(out, m, hp, wp), shifts, (1, 2))[:, :height, :width]
    x = x + out
    return x + block.mlp(block.norm2(x))


def _block_case(case, spa):
    """The block and the inputs of one BLOCK_CASES entry (the same weights whatever ``spa``'s backend)."""
    from spa_model import models

    height, width, shifted, _ = case
    torch.manual_seed(0)
    block = models.SpaBlock(16, 2, window=4, shifted=shifted, spa=spa).eval()
    with torch.no_grad():  # a gate that is not ~0.5 everywhere, a bias table that is not ~0
        block.gate.weight.normal_()
        block.attn.relative_position_bias_table.normal_()
    generator = torch.Generator().manual_seed(height * width)
    x = torch.randn(2, height, width, 16, generator=generator, dtype=F64)
    keep = torch.rand(2, height, width, generator=generator) < 0.6
    return block, x, keep, torch.randn(x.shape, generator=generator, dtype=F64)


def _output_and_grads(module, leaf, out, grad_out) -> list[torch.Tensor]:
    out.backward(grad_out.to(out.device, out.dtype))
    return [out.detach().cpu().double(), leaf.grad.cpu().double()] + [
        (p.grad if p.grad is not None else torch.zeros_like(p)).cpu().double() for p in module.parameters()]


@functools.cache
def _block_reference(case) -> list[torch.Tensor]:
    """Output, input gradient and parameter gradients of :func:`_reference_spa_block` on the CPU."""
    from spa_model.models import SpaConfig

    block, x, keep, grad_out = _block_case(case, SpaConfig(selector="gt", capacity=case[3]))
    block.double()
    leaf = x.clone().requires_grad_()
    return _output_and_grads(block, leaf, _reference_spa_block(block, leaf, keep, window=4), grad_out)


def _check_block(*, fused: bool, backend: str, device: str, dtype: torch.dtype, tolerance: float) -> None:
    """SpaBlock's output and gradients (input, every parameter) against :func:`_reference_spa_block`;
    ``fused``: through the Triton row kernels of spa_model.triton_rows (on the CPU in the interpreter)."""
    from spa_model import models
    from spa_model.layers import WindowGrid
    from spa_model.selection import OracleSelector, SelectionState

    usable = models._fused_rows
    if device == "cpu":  # the interpreter stands in for a GPU
        models._fused_rows = lambda x, spa: spa.fuse_rows
    try:
        for case in BLOCK_CASES:
            height, width, shifted, capacity = case
            spa = models.SpaConfig(selector="gt", capacity=capacity, backend=backend, fuse_rows=fused)
            block, x, keep, grad_out = _block_case(case, spa)
            block.to(device, dtype)
            leaf = x.to(device, dtype).requires_grad_()
            grid = WindowGrid.build(height, width, window=4, shift=2 if shifted else 0, device=leaf.device)
            labels = {16: keep.to(device, torch.float32)}
            out = block(leaf, grid, SelectionState(OracleSelector(), labels, stride=16))
            names = ["out", "x"] + [n for n, _ in block.named_parameters()]
            actual = _output_and_grads(block, leaf, out, grad_out)
            for name, expected, got in zip(names, _block_reference(case), actual):
                error = (got - expected).norm() / expected.norm().clamp(min=1e-30)
                assert error < tolerance, f"{height}x{width} shifted={shifted} {capacity} {name}: {error:.2e}"
    finally:
        models._fused_rows = usable


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_spa_block_equals_its_float64_reference(backend):
    _check_block(fused=False, backend=backend, device="cpu", dtype=F64, tolerance=1e-10)


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [True, False])
def test_spa_block_equals_its_float64_reference_cuda(fused):
    pytest.importorskip("triton")
    torch.backends.cuda.matmul.allow_tf32 = False
    _check_block(fused=fused, backend="triton", device="cuda", dtype=torch.float32, tolerance=1e-5)


@pytest.mark.slow
def test_triton_backend_interpreted(run_interpreted):
    run_interpreted(__file__)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "sdpa", "auto"])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_backends_cuda(backend, dtype, tolerance):
    if backend != "sdpa":
        pytest.importorskip("triton")
    _check_backend(backend, "cuda", dtype, tolerance)
    from spa_model import packed_attention

    assert not packed_attention._TRITON_FAILED, "auto fell back from triton to sdpa"


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "sdpa"])
def test_no_host_sync_when_capacity_is_given(backend):
    x, keep, coords, region, params = _random_case(3, 6, 6, 32, 2, 3, keep_prob=0.4, seed=12)
    cuda = {k: (v.cuda().float() if torch.is_tensor(v) else v) for k, v in params.items()}
    capacity = max_containers(3, 36, container_len=9)  # per image
    args = (x.cuda().float(), keep.cuda())
    kwargs = dict(coords=coords.cuda(), region=region.cuda(), window=3, container_len=9, capacity=capacity,
                  backend=backend, **cuda)
    select_pack_attention(*args, **kwargs)  # compile and warm up first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, used = select_pack_attention(*args, **kwargs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(used) == sum(-(-int(c) // 9) for c in keep.sum(1))
    assert torch.all(out[~keep.cuda()] == 0)


if __name__ == "__main__":  # the interpreted check runs here, in a fresh process with TRITON_INTERPRET=1
    from spa_model import triton_packed_attention as kernels

    _check_backend("triton", "cpu", torch.float32, 1e-5)
    for fused in (True, False):  # the block as it runs on a GPU in eager mode, and without the row kernels
        _check_block(fused=fused, backend="triton", device="cpu", dtype=torch.float32, tolerance=1e-5)
    # Several heads per program: 4 heads, two programs of 2 heads forward, 2 + 2 backward.
    kernels.LAUNCH["forward"]["heads"], kernels.LAUNCH["backward"]["heads"] = 2, 3
    _check_backend("triton", "cpu", torch.float32, 1e-5, cases=BACKEND_CASES[1:2])
    # Under torch.compile the kernels run as custom ops (traced as one graph, gradients included).
    x, keep, coords, region, params = _random_case(2, 6, 6, 16, 2, 3, keep_prob=0.4, seed=13)
    x.requires_grad_()
    kwargs = dict(coords=coords, region=region, window=3, container_len=9, capacity=4, backend="triton",
                  **{k: (v.float() if torch.is_tensor(v) else v) for k, v in params.items()})
    eager, _ = select_pack_attention(x.float(), keep, **kwargs)
    (eager_grad,) = torch.autograd.grad(eager.square().sum(), x)
    compiled = torch.compile(lambda x: select_pack_attention(x.float(), keep, **kwargs)[0],
                             fullgraph=True, backend="aot_eager")(x)
    (compiled_grad,) = torch.autograd.grad(compiled.square().sum(), x)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_grad, eager_grad)
    # The ops' fake kernels and autograd registration agree with the real ones (shapes, strides).
    plan = plan_packing(keep, container_len=9, capacity=4)
    positions = torch.cat([region[:, None], coords], 1).to(torch.int32)
    table = kwargs["rel_pos_table"].detach().t().contiguous().requires_grad_()
    qkv = torch.randn(plan.token_index.shape[0], 48, requires_grad=True)
    static = (9, 2, 36, 72, 3, 8 ** -0.5)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(kernels._forward, (qkv, table, plan.token_index, positions, *static), test_utils=tests)
    out, lse = kernels._forward(qkv, table, plan.token_index, positions, *static)
    for bias in (table.detach(), None):
        torch.library.opcheck(kernels._backward, (torch.randn_like(out), qkv.detach(), bias, plan.token_index,
                                                  positions, out.detach(), lse, *static), test_utils=tests)
