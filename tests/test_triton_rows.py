"""The fused row kernels (spa_model.triton_rows) against the torch composition they replace.

The plan must equal plan_packing + slot_rows exactly (indices), the gather and the scatter must give
the values and gradients of index_select * gate and scatter_add_rows, and an SPT must train the same
through either path. On the CPU the kernels run in Triton's interpreter, in a fresh process (the
interpreter is chosen at import); on a GPU compiled.
"""
from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

# (height, width, window, shift, batch, keep probability, capacity per image): padded and unpadded
# maps, shifted and not, capacities that drop tokens (first) and that hold everything, one empty image.
# The last case spans several steps of the plan's running sum (1,296 tokens) and of its empty-slot loop.
CASES = [(9, 10, 4, 2, 3, 0.4, 2), (9, 10, 4, 0, 3, 0.4, 9), (7, 7, 7, 3, 2, 0.7, 1), (5, 6, 3, 1, 2, 0.5, 4),
         (33, 35, 4, 2, 2, 0.95, 70)]


def _check_kernels(device: str, dtype: torch.dtype, tolerance: float) -> None:
    from spa_model.layers import WindowGrid
    from spa_model.packed_attention import scatter_add_rows, slot_rows
    from spa_model.packing import plan_packing
    from spa_model.triton_rows import gather_gated, plan_rows, scatter_add_weighted

    generator = torch.Generator().manual_seed(0)
    dropped = 0
    for height, width, window, shift, batch, keep_prob, capacity in CASES:
        grid = WindowGrid.build(height, width, window=window, shift=shift, device=torch.device(device))
        pixels = height * width
        keep = (torch.rand(batch, pixels, generator=generator) < keep_prob).to(device)
        keep[-1] = False
        reference = plan_packing(grid.window_major(keep, batch), container_len=window ** 2, capacity=capacity)
        reference_rows, reference_holds = slot_rows(reference, *grid.token_rows(batch, reference.num_slots))
        plan, rows, holds = plan_rows(keep, grid.token_pixel, grid.token_is_padding, container_len=window ** 2,
                                      capacity=capacity)
        for name in ("token_index", "token_slot", "selected", "placed"):
            assert torch.equal(getattr(plan, name), getattr(reference, name)), name
        assert torch.equal(rows, reference_rows) and torch.equal(holds, reference_holds)
        dropped += int((reference.selected - reference.placed).sum())

        def leaf(*shape):
            return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device, dtype).requires_grad_()

        tokens, gate = leaf(batch * pixels, 20), leaf(batch * pixels)
        grad = torch.randn(rows.shape[0], 20, generator=generator).to(device, dtype) * holds[:, None]  # none at empty slots
        target, packed = leaf(batch * pixels, 20), leaf(rows.shape[0], 20)
        image_scale = torch.tensor([2.0, 0.0, 1.25], device=device)[:batch]
        weight = torch.where(holds, image_scale[rows // pixels], 0).to(dtype)
        grad_target = torch.randn(batch * pixels, 20, generator=generator).to(device, dtype)
        pairs = [(lambda t, g: gather_gated(t, g, rows, holds),
                  lambda t, g: t.index_select(0, rows) * g.index_select(0, rows)[:, None], (tokens, gate), grad),
                 (lambda t, p: scatter_add_weighted(t, p, rows, holds, image_scale=image_scale, pixels=pixels),
                  lambda t, p: scatter_add_rows(t, p, rows, weight), (target, packed), grad_target)]
        if dtype == torch.float32:  # under autocast: float32 tokens, a bfloat16 gate, bfloat16 rows out
            half = gate.detach().to(torch.bfloat16).requires_grad_()
            pairs.append((lambda t, g: gather_gated(t, g, rows, holds, dtype=torch.bfloat16),
                          lambda t, g: (t.index_select(0, rows) * g.index_select(0, rows)[:, None]).to(torch.bfloat16),
                          (tokens, half), grad.to(torch.bfloat16)))
        for fused, composed, inputs, grad_out in pairs:
            outputs = []
            for fn in (fused, composed):
                out = fn(*inputs)
                outputs.append([out.double()] + [g.double() for g in torch.autograd.grad(out, inputs, grad_out)])
            for actual, expected in zip(*outputs):
                error = (actual - expected).norm() / expected.norm().clamp_min(1e-12)
                limit = tolerance if inputs[1].dtype == dtype else 1e-2   # bfloat16 outputs, one rounding apart
                assert error < limit, f"relative error {error:.2e}"
    assert dropped > 0  # the cases exercise the budget's drops


def _decide(usable, asked: list, x, spa) -> bool:
    """The fused path in the interpreter (CPU) when the config asks for it; on a GPU the model's own rule."""
    asked.append(spa.fuse_rows if x.device.type == "cpu" else usable(x, spa))
    return asked[-1]


def _check_model(device: str) -> None:
    """An SPT in training (Gumbel noise, drop path, a budget that drops) and in eval (top-k): the same
    features, selections and gradients through the fused kernels as through the torch path."""
    import spa_model
    from spa_model import models

    usable = models._fused_rows
    images = torch.randn(2, 3, 80, 72, generator=torch.Generator().manual_seed(0)).to(device)
    for spa, train in [(dict(capacity=0.6, drop_path_rate=0.5), True), (dict(selector="topk", keep_ratio=0.4), False)]:
        torch.manual_seed(0)
        model = spa_model.create_model("spt_tiny", embed_dim=16, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4),
                                       window_size=4, backend="triton", **spa).to(device).train(train)
        results, asked = [], []
        models._fused_rows = functools.partial(_decide, usable, asked)
        try:
            for fused in (False, True):
                for module in model.modules():
                    if isinstance(module, models.SpaBlock):
                        module.spa = dataclasses.replace(module.spa, fuse_rows=fused)
                torch.manual_seed(1)
                model.zero_grad()
                out = model.forward_features(images)
                loss = sum(f.square().mean() for f in out.features) + sum(
                    s.sigmoid().mean() for scores in out.scores.values() for s in scores)
                loss.backward()
                results.append(([f.detach() for f in out.features], [b.plan.selected for b in out.blocks],
                                {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
        finally:
            models._fused_rows = usable
        assert asked == [False] * len(results[0][1]) + [True] * len(results[0][1])  # each block, each path
        (features, selected, grads), (fused_features, fused_selected, fused_grads) = results
        assert all(torch.equal(a, b) for a, b in zip(selected, fused_selected))
        for a, b in zip(features, fused_features):
            torch.testing.assert_close(b, a)
        assert grads.keys() == fused_grads.keys()
        for name in grads:
            torch.testing.assert_close(fused_grads[name], grads[name], msg=name)


class _Taken(Exception):
    """Raised by the stand-in for plan_rows: the block chose the fused path."""


@pytest.mark.slow
def test_the_fused_path_is_taken_only_where_it_applies(monkeypatch):
    """Per-image static budgets, a gate-evaluating selector, Triton attention, eager mode: yes;
    "exact", the "all" selector, the batch-wide layout, fuse_rows=False, SDPA, torch.compile: no."""
    pytest.importorskip("triton")
    import spa_model
    from spa_model import models, triton_rows

    monkeypatch.setattr(models, "triton_usable", lambda x: True)  # as on a GPU

    def plan_rows(*args, **kwargs):
        raise _Taken

    monkeypatch.setattr(triton_rows, "plan_rows", plan_rows)
    images = torch.randn(1, 3, 64, 64)
    cases = {"default": ({}, True), "top-k": (dict(selector="topk"), True), "exact": (dict(capacity="exact"), False),
             "all": (dict(selector="all"), False), "batch-wide": (dict(per_image_containers=False), False),
             "fuse_rows off": (dict(fuse_rows=False), False), "sdpa": (dict(backend="sdpa"), False)}
    for name, (spa, fused) in cases.items():
        model = spa_model.create_model("spt_tiny", embed_dim=16, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4),
                                       window_size=4, **spa).eval()
        taken = False
        try:
            with torch.no_grad():
                model.forward_features(images)
        except _Taken:
            taken = True
        assert taken == fused, name
        if name == "default":  # compiled, the same model runs the torch ops
            with torch.no_grad():
                torch.compile(model.forward_features, backend="aot_eager", fullgraph=True)(images)


@pytest.mark.slow
def test_row_kernels_interpreted(run_interpreted):
    run_interpreted(__file__)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_row_kernels_cuda(dtype, tolerance):
    pytest.importorskip("triton")
    _check_kernels("cuda", dtype, tolerance)


@pytest.mark.gpu
def test_fused_rows_train_as_the_torch_path_cuda():
    pytest.importorskip("triton")
    torch.backends.cuda.matmul.allow_tf32 = False
    _check_model("cuda")


@pytest.mark.gpu
def test_fused_spt_eval_has_no_host_sync(monkeypatch):
    pytest.importorskip("triton")
    import spa_model
    from spa_model import models

    model = spa_model.create_model("spt_tiny", selector="topk", keep_ratio=0.3).cuda().eval()
    images = torch.randn(2, 3, 224, 320, device="cuda")
    calls = []
    usable = models._fused_rows
    monkeypatch.setattr(models, "_fused_rows", lambda x, spa: calls.append(usable(x, spa)) or calls[-1])
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        model.forward_features(images)  # compile the kernels first
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model.forward_features(images)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert calls and all(calls)  # the fused path ran in every SPA block


if __name__ == "__main__":  # the interpreted checks run here, in a fresh process with TRITON_INTERPRET=1
    _check_kernels("cpu", torch.float32, 1e-6)
    _check_model("cpu")
