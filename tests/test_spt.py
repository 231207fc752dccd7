"""SPT: selection, packing integration, batch invariance, gradients, selection loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import spa_model
from spa_model.layers import GRIDS, WindowGrid
from spa_model.selection import gumbel_sigmoid

SMALL = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
SIZE = (100, 132)  # grids 25x33, 13x17, 7x9, 4x5 (odd merges pad): no multiple of the window


def _pair(**spa):
    """A small Swin and an SPT with the same Swin weights; the SPT's gates made decisive."""
    torch.manual_seed(0)
    swin = spa_model.create_model("swin_tiny", **SMALL).eval()
    spt = spa_model.create_model("spt_tiny", **SMALL, **spa).eval()
    spt.load_swin_state_dict(swin.state_dict())
    with torch.no_grad():  # logits ~ N(-8, 3): a gate alone keeps ~13% (threshold logit(0.01) = -4.6)
        for gate in [m for name, m in spt.named_modules() if isinstance(m, torch.nn.Linear) and "gate" in name]:
            gate.weight.normal_(0, 3.0 / gate.in_features ** 0.5)
            gate.bias.fill_(-8.0)
    return swin, spt


def _labels(batch, size=SIZE, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {s: (torch.rand(batch, -(-size[0] // s), -(-size[1] // s), generator=generator) > 0.6).float()
            for s in (8, 16, 32)}


@pytest.mark.parametrize("per_image", [True, False])
def test_select_all_equals_swin(per_image):
    swin, spt = _pair(selector="all", per_image_containers=per_image)
    images = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        want, got = swin.forward_features(images), spt.forward_features(images)
    for a, b in zip(got.features, want.features):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert got.scores == {} and all(r == 1 for r in got.select_ratios) and len(got.select_ratios) == 4


def test_select_all_in_training_drops_paths_as_swin():
    """Stochastic depth in SPA blocks: the same per-image draws as torchvision's row mode in Swin's
    blocks (one draw per residual branch, kept with probability 1 - p, scaled by 1 / (1 - p))."""
    torch.manual_seed(0)
    cfg = dict(SMALL, drop_path_rate=0.6)
    swin = spa_model.create_model("swin_tiny", **cfg).train()
    spt = spa_model.create_model("spt_tiny", **cfg, selector="all").train()
    spt.load_swin_state_dict(swin.state_dict())
    images = torch.randn(4, 3, *SIZE)
    for seed in range(3):
        torch.manual_seed(seed)
        want = swin.forward_features(images).features
        torch.manual_seed(seed)
        got = spt.forward_features(images).features
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    assert not torch.allclose(spt.forward_features(images).features[3], got[3])  # the draws do differ


def test_gumbel_eval_selects_partially_and_scores_have_the_contract_shapes():
    _, spt = _pair()
    with torch.no_grad():
        out = spt.forward_features(torch.randn(2, 3, *SIZE))
    assert {k: [tuple(m.shape) for m in v] for k, v in out.scores.items()} == {
        8: [(2, 13, 17)], 16: [(2, 7, 9)] * 2, 32: [(2, 4, 5)] * 2}
    ratios = torch.stack(out.select_ratios)
    # Stage 4 keeps more: its s_up is a 2x2 max over stage 3's map (eq. 4 accumulates scales).
    assert len(ratios) == 4 and (ratios[:2] > 0.05).all() and (ratios[:2] < 0.95).all() and (ratios > 0).all()
    # Eval is deterministic: sigmoid(s) > threshold on the recorded (max-combined) logits.
    for ratio, scores in zip(ratios, out.scores[16] + out.scores[32]):
        assert ratio == (torch.sigmoid(scores) > 0.01).float().mean()
    # s = max(gate, s_up): each block's scores are >= the finer scale max-pooled to its grid.
    pooled = F.max_pool2d(out.scores[8][0][:, None], 2, ceil_mode=True)[:, 0]
    assert (out.scores[16][0] >= pooled).all() and (out.scores[16][1] >= pooled).all()


def test_eval_output_independent_of_batch():
    """An image's output is the same alone and in a batch; changing one image changes no other."""
    _, spt = _pair()
    images = torch.randn(3, 3, *SIZE)
    with torch.no_grad():
        batched = spt.forward_features(images).features
        alone = spt.forward_features(images[1:2]).features
        changed_images = images.clone()
        changed_images[0] = torch.randn(3, *SIZE)
        changed = spt.forward_features(changed_images).features
    for b, a, c in zip(batched, alone, changed):
        torch.testing.assert_close(b[1:2], a, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c[1:], b[1:], rtol=0, atol=0)
        assert not torch.allclose(c[0], b[0])


@pytest.mark.parametrize("selector,capacity", [("gumbel", "auto"), ("gumbel", 1.0), ("topk", 0.3)])
def test_static_capacities_compute_what_the_exact_one_computes(selector, capacity):
    """Static budgets that hold the selection change nothing: "auto" (a fresh model: 1.0), 1.0, and
    0.3 for top-k at keep_ratio 0.3 (fewer containers than a larger selection would need: 1 of 2 per
    image in stage 3, whose 7x9 map pads to 7x14)."""
    _, spt = _pair(selector=selector, keep_ratio=0.3, capacity="exact")
    images = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        want = spt.forward_features(images)
        other = spa_model.create_model("spt_tiny", **SMALL, selector=selector, keep_ratio=0.3,
                                       capacity=capacity).eval()
        other.load_state_dict(spt.state_dict(), strict=False)  # the exact model has no budget buffers
        got = other.forward_features(images)
    for a, b in zip(got.features, want.features):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert all(int(d) == 0 for d in got.dropped)
    if capacity == 0.3:
        assert got.blocks[0].plan.per_image_capacity == 1 and got.blocks[0].plan.num_tokens == 2 * 49


def test_a_budget_too_small_drops_tokens_and_counts_them():
    """Which tokens drop and what the rest compute is checked on the functional core
    (test_packed_attention); here the block's budget, its layout and its counts."""
    _, spt = _pair(selector="gt", capacity=0.1)  # stage 3: 7x9 map -> ceil(6.3) = 7 tokens -> 1 container of 49
    labels = _labels(2, seed=5)
    labels[16][:] = 1  # every stage-3 token selected: 63 per image, 49 placed
    with torch.no_grad():
        out = spt.forward_features(torch.randn(2, 3, *SIZE), labels)
    block = out.blocks[0]
    assert block.plan.per_image_capacity == 1
    assert block.selected.tolist() == [63, 63] and block.plan.placed.tolist() == [49, 49]
    assert int(out.dropped[0]) == 2 * 14 and float(out.select_ratios[0]) == 1.0
    assert all(torch.isfinite(f).all() for f in out.features)


def test_empty_selection_for_one_image_and_for_the_whole_batch():
    _, spt = _pair(selector="gt")
    images = torch.randn(2, 3, *SIZE)
    labels = _labels(2)
    for stride in labels:
        labels[stride][0] = 0
    with torch.no_grad():
        out = spt.forward_features(images, labels)
        alone = spt.forward_features(images[:1], {s: l[:1] for s, l in labels.items()})
        none = spt.forward_features(images, {s: torch.zeros_like(l) for s, l in labels.items()})
    for f, a in zip(out.features, alone.features):
        assert torch.isfinite(f).all()
        torch.testing.assert_close(f[:1], a, rtol=1e-5, atol=1e-5)
    assert all(int(c) == 0 for c in alone.containers) and all(int(c) == 0 for c in none.containers)
    assert all(float(r) == 0 for r in none.select_ratios)
    assert all(torch.isfinite(f).all() for f in none.features)


def test_gt_and_topk_selectors_select_what_they_say():
    _, spt = _pair(selector="gt")
    labels = _labels(2, seed=3)
    with torch.no_grad():
        out = spt.forward_features(torch.randn(2, 3, *SIZE), labels)
    want = [labels[16].mean()] * 2 + [labels[32][:, :4, :5].mean()] * 2
    torch.testing.assert_close(torch.stack(out.select_ratios), torch.stack(want))

    _, spt = _pair(selector="topk", keep_ratio=0.3)
    with torch.no_grad():
        out = spt.forward_features(torch.randn(2, 3, *SIZE))
    expected = [math.ceil(0.3 * 7 * 9) / (7 * 9)] * 2 + [math.ceil(0.3 * 20) / 20] * 2
    torch.testing.assert_close(torch.stack(out.select_ratios), torch.tensor(expected))
    # each of the 2 images: 19 tokens in stage 3, 6 in stage 4: one container of 49 each
    assert [int(c) for c in out.containers] == [2, 2, 2, 2]


def test_straight_through_gradient():
    scores = torch.tensor([-6.0, -4.0, 0.0, 3.0], requires_grad=True)
    chosen = gumbel_sigmoid(scores, tau=1.0, threshold=0.01, stochastic=False)
    assert chosen.keep.tolist() == [False, True, True, True]
    assert chosen.weight.tolist() == [0.0, 1.0, 1.0, 1.0]  # hard in the forward pass
    chosen.weight.sum().backward()
    sig = torch.sigmoid(scores.detach())
    torch.testing.assert_close(scores.grad, sig * (1 - sig))  # the soft gradient


def test_gradients_reach_every_gate_in_training():
    _, spt = _pair()
    spt.train()
    labels = _labels(2)
    out = spt.forward_features(torch.randn(2, 3, *SIZE), labels)
    out.features[-1].square().mean().backward()
    block_gates = [b.gate.weight.grad for s in spt.stages[2:] for b in s.blocks]
    assert all(g is not None and g.abs().sum() > 0 for g in block_gates)
    spt.zero_grad()
    out = spt.forward_features(torch.randn(2, 3, *SIZE), labels)
    spa_model.selection_loss(out.scores, labels).backward()
    assert spt.stages[2].entry_gate[1].weight.grad.abs().sum() > 0
    assert all(b.gate.weight.grad.abs().sum() > 0 for s in spt.stages[2:] for b in s.blocks)


def test_selection_loss_is_the_sum_of_per_map_bce():
    logits = {16: [torch.tensor([[[2.0, -1.0], [0.5, -3.0]]])] * 2, 8: [torch.tensor([[[0.0]]])]}
    labels = {16: torch.tensor([[[1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]]),  # cropped to 2x2
              8: torch.tensor([[[1.0]]])}
    probs = torch.sigmoid(torch.tensor([2.0, -1.0, 0.5, -3.0]))
    y = torch.tensor([1.0, 0.0, 1.0, 1.0])
    bce16 = -(y * probs.log() + (1 - y) * (1 - probs).log()).mean()
    want = 2 * bce16 + math.log(2.0)
    torch.testing.assert_close(spa_model.selection_loss(logits, labels), want)
    assert float(spa_model.selection_loss({}, labels)) == 0.0


@pytest.mark.gpu
def test_spt_bf16_autocast_forward_backward_on_gpu():
    _, spt = _pair()
    spt = spt.cuda().train()
    images = torch.randn(4, 3, 200, 264, device="cuda")
    labels = {s: l.cuda() for s, l in _labels(4, (200, 264)).items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = spt.forward_features(images, labels)
        loss = out.features[-1].float().square().mean() + 0.01 * spa_model.selection_loss(out.scores, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in spt.parameters())
    spt.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        batched = spt.forward_features(images).features
        alone = spt.forward_features(images[2:3]).features
    for b, a in zip(batched, alone):
        assert (b[2:3].float() - a.float()).abs().max() < 5e-2 * a.float().abs().max()


def _compile_case(device: str, backend: str):
    """Eager and compiled (fullgraph: a graph break fails) outputs and gradients of one training step
    of an SPT with its default static budget (gt selector and no drop-path, so both runs take the same
    decisions; the budget records its peak inside the graph)."""
    torch.manual_seed(0)
    spt = spa_model.create_model("spt_tiny", **SMALL, selector="gt", drop_path_rate=0.0,
                                 num_classes=5).to(device).train()
    images = torch.randn(2, 3, *SIZE, device=device)
    labels = {s: l.to(device) for s, l in _labels(2).items()}

    def loss_of(model):
        out = model.forward_features(images, labels)
        return model.forward_head(out).float().square().mean() + spa_model.selection_loss(out.scores, labels)

    def step(compute):
        loss = compute(spt)
        params = [p for p in spt.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss.detach(), [g for g in grads if g is not None]

    eager = step(loss_of)
    compiled = step(torch.compile(loss_of, fullgraph=True, backend=backend))
    torch._dynamo.reset()
    return eager, compiled


def test_static_capacity_spt_compiles_as_one_graph():
    (loss, grads), (compiled_loss, compiled_grads) = _compile_case("cpu", "aot_eager")
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-6)
    assert len(compiled_grads) == len(grads)
    for a, b in zip(compiled_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
def test_static_capacity_spt_compiles_with_inductor_and_the_triton_kernel():
    (loss, grads), (compiled_loss, compiled_grads) = _compile_case("cuda", "inductor")
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-4, atol=1e-5)
    for a, b in zip(compiled_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_spa_blocks_picks_single_blocks():
    """spa_blocks=(4, 7): the first block of stage 3 and the last of stage 4 (0-based over all 8
    blocks) are SPA blocks, the others Swin blocks; select-all then computes what Swin computes."""
    swin, _ = _pair()
    spt = spa_model.create_model("spt_tiny", **SMALL, spa_blocks=(4, 7), selector="all").eval()
    spt.load_swin_state_dict(swin.state_dict())
    kinds = [type(block).__name__ for stage in spt.stages for block in stage.blocks]
    assert [i for i, kind in enumerate(kinds) if kind == "SpaBlock"] == [4, 7]
    images = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        want, got = swin.forward_features(images), spt.forward_features(images)
    for a, b in zip(got.features, want.features):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert len(got.select_ratios) == 2
    # with the gate: s0 from stage 2, one score map per SPA block
    gated = spa_model.create_model("spt_tiny", **SMALL, spa_blocks=(4, 7)).eval()
    with torch.no_grad():
        out = gated.forward_features(images)
    assert {k: len(v) for k, v in out.scores.items()} == {8: 1, 16: 1, 32: 1}
    with pytest.raises(ValueError, match="spa_blocks"):
        spa_model.create_model("spt_tiny", **SMALL, spa_blocks=(8,))
    with pytest.raises(ValueError, match="spa_stages"):
        spa_model.create_model("spt_tiny", **SMALL, spa_stages=(4,))


def test_grids_first_built_under_inference_mode_serve_a_later_training_step():
    """Eager mode keeps a stage's grids and index tables across calls; built inside inference_mode
    they must still be normal tensors, or the next training step could not save them for backward."""
    spt = spa_model.create_model("spt_tiny", **SMALL, num_classes=3)
    images = torch.randn(2, 3, 72, 104)  # a size no other test uses: the grids are built here
    with torch.inference_mode():
        spt.eval()(images)
    spt.train()(images).sum().backward()
    assert spt.stages[2].blocks[0].gate.weight.grad is not None
    grid = WindowGrid.cached(9, 13, window=7, shift=3, device=torch.device("cpu"))
    assert WindowGrid.cached(9, 13, window=7, shift=3, device=torch.device("cpu")) is grid
    assert not grid.token_pixel.is_inference()


def test_a_cached_grid_serves_selections_of_any_size():
    """With the exact capacity the slot count changes from call to call; the grid's cached tables must
    serve a larger selection after a smaller one and the reverse, as a freshly built grid would."""
    spt = spa_model.create_model("spt_tiny", **SMALL, num_classes=3, selector="gt").eval()
    images = torch.randn(2, 3, 216, 280)  # a size no other test uses, several containers per image
    grid_shapes = {s: (math.ceil(216 / s), math.ceil(280 / s)) for s in (8, 16, 32)}
    sparse = {s: (torch.arange(h * w).view(1, h, w) % 5 == 0).float().expand(2, h, w)
              for s, (h, w) in grid_shapes.items()}
    dense = {s: torch.ones(2, h, w) for s, (h, w) in grid_shapes.items()}
    with torch.no_grad():
        first_sparse, grown, second_sparse = spt(images, sparse), spt(images, dense), spt(images, sparse)
        GRIDS.clear()
        fresh = spt(images, dense)
    torch.testing.assert_close(second_sparse, first_sparse, rtol=0, atol=0)
    torch.testing.assert_close(grown, fresh, rtol=0, atol=0)
