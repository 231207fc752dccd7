"""Learned token budgets: the policy's arithmetic, the drops it allows, checkpoints, batch invariance."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

import spa_model
from spa_model.budget import BudgetPolicy, TokenBudget, update_token_budgets
from test_train import _env

SMALL = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


def _observe(budget: TokenBudget, shares, tokens: int = 1000) -> None:
    budget.observe(torch.tensor([round(s * tokens) for s in shares]), tokens)


def test_level_is_the_next_multiple_of_one_over_levels_above_the_margin():
    policy = BudgetPolicy(levels=32, margin=0.05)
    assert policy.level(0.25) == math.ceil(0.25 * 1.05 * 32) / 32 == 9 / 32
    assert policy.level(0.0) == 1 / 32 and policy.level(0.99) == 1.0 and policy.level(2.0) == 1.0
    assert policy.level(8 / 32 / 1.05) == 8 / 32  # exactly on a level stays on it


def test_grows_at_the_next_look_shrinks_after_patience_looks():
    policy = BudgetPolicy(levels=10, margin=0.0, interval=2, patience=3)
    budget = TokenBudget(1.0, learned=True)
    for look in range(3):          # three looks at a 0.35 peak: the budget may shrink on the third
        for _ in range(policy.interval):
            _observe(budget, [0.2, 0.35])
            changed = update_token_budgets(budget, policy)
        assert changed == (look == 2)
    assert budget.value == pytest.approx(0.4) and float(budget.share) == pytest.approx(0.4)
    _observe(budget, [0.62])        # one larger image: the budget grows at the next look
    assert not update_token_budgets(budget, policy) and update_token_budgets(budget, policy)
    assert budget.value == pytest.approx(0.7)
    # nothing seen: nothing moves
    assert not update_token_budgets(budget, policy) and not update_token_budgets(budget, policy)
    assert budget.value == pytest.approx(0.7)


def test_fixed_budgets_never_move():
    budget = TokenBudget(0.3, learned=False)
    _observe(budget, [0.9])
    assert not any(update_token_budgets(budget, BudgetPolicy(interval=1)) for _ in range(10)) and budget.value == 0.3


def test_default_policy_drops_under_a_thousandth_of_a_shrinking_noisy_selection():
    """A selection that shrinks from everything to a quarter over 3000 steps (batch 8, per-image
    shares spread +-0.04, the gate's noise) loses less than 0.1% of its tokens to the budget."""
    generator = torch.Generator().manual_seed(0)
    policy = BudgetPolicy()
    budget = TokenBudget(1.0, learned=True)
    selected = dropped = 0.0
    for step in range(3000):
        mean = 1.0 - 0.75 * min(step / 2000, 1.0)
        shares = (mean + 0.04 * torch.randn(8, generator=generator)).clamp(0, 1)
        dropped += float((shares - budget.value).clamp(min=0).sum())
        selected += float(shares.sum())
        _observe(budget, shares.tolist())
        update_token_budgets(budget, policy)
    assert dropped / selected < 1e-3
    assert budget.value <= policy.level(0.25 + 4 * 0.04)  # and the budget did come down


_DDP_RANK = """
import json, sys
import torch, torch.distributed as dist
from torch import nn
from spa_model.budget import BudgetPolicy, TokenBudget, update_token_budgets
from spa_train.distributed import wrap_ddp

class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.budget = TokenBudget(1.0, learned=True)

    def forward(self, selected):
        self.budget.observe(selected, 100)
        return self.weight * selected.float().sum()

rank, folder = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
model = Recorder()
ddp = wrap_ddp(model, torch.device("cpu"), find_unused_parameters=False)
policy = BudgetPolicy(levels=100, margin=0.0, interval=2, patience=1)
for counts in ([[30], [10]], [[60], [5]])[rank]:   # rank 1's largest image comes first
    ddp(torch.tensor(counts)).backward()
    update_token_budgets(model, policy)
print(json.dumps([model.budget.value, float(model.budget.share)]))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_ranks_agree_on_the_largest_share_any_rank_selected(tmp_path):
    """Under DistributedDataParallel every rank moves to the budget of the peak over all ranks, and
    rank 0's broadcast of buffers at each forward does not overwrite the other ranks' peaks."""
    script = tmp_path / "rank.py"
    script.write_text(_DDP_RANK)
    ranks = [subprocess.Popen([sys.executable, str(script), str(rank), str(tmp_path)], env=_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for rank in (0, 1)]
    try:
        results = [rank.communicate(timeout=120) for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    assert all(rank.returncode == 0 for rank in ranks), [err for _, err in results]
    assert [json.loads(out) for out, _ in results] == [[0.6, pytest.approx(0.6)]] * 2


def test_the_budget_is_saved_with_the_model_and_restored():
    model = spa_model.create_model("spt_tiny", **SMALL)
    budgets = [m for m in model.modules() if isinstance(m, TokenBudget)]
    assert len(budgets) == 4 and all(b.learned and b.value == 1.0 for b in budgets)
    budgets[0]._set(0.25)
    clone = spa_model.create_model("spt_tiny", **SMALL)
    clone.load_state_dict(model.state_dict())
    assert [m.value for m in clone.modules() if isinstance(m, TokenBudget)] == [0.25, 1.0, 1.0, 1.0]


def test_training_records_the_peak_and_update_moves_the_budget():
    torch.manual_seed(0)
    model = spa_model.create_model("spt_tiny", **SMALL, selector="gt").train()
    labels = {s: torch.zeros(2, -(-96 // s), -(-96 // s)) for s in (8, 16, 32)}
    labels[16][0, :2, :3] = 1   # 6 of 36 stage-3 tokens in image 0, none in image 1
    labels[32][:, :1, :1] = 1   # 1 of 9 stage-4 tokens in each
    model.forward_features(torch.randn(2, 3, 96, 96), labels)
    policy = BudgetPolicy(interval=1, patience=1)
    assert update_token_budgets(model, policy)
    values = [m.value for m in model.modules() if isinstance(m, TokenBudget)]
    assert values == [policy.level(6 / 36)] * 2 + [policy.level(1 / 9)] * 2


def test_eval_stays_batch_invariant_when_the_budget_drops_tokens():
    torch.manual_seed(0)
    model = spa_model.create_model("spt_tiny", **SMALL, selector="topk", keep_ratio=0.6, capacity=0.2,
                                   container_len=9).eval()
    images = torch.randn(3, 3, 100, 132)
    with torch.no_grad():
        batched = model.forward_features(images)
        alone = model.forward_features(images[1:2])
    assert all(int(d) > 0 for d in batched.dropped)  # 60% selected, 20% budgeted (2 and 1 containers of 9)
    for b, a in zip(batched.features, alone.features):
        torch.testing.assert_close(b[1:2], a, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("selector", ["gumbel", "gt", "topk"])
def test_cuda_graphs_replay_what_eager_computes(selector):
    torch.manual_seed(0)
    model = spa_model.create_model("spt_tiny", **SMALL, selector=selector, keep_ratio=0.3).cuda().eval()
    for size, batch in [((96, 128), 2), ((96, 128), 1), ((160, 96), 2)]:
        images = torch.randn(batch, 3, *size, device="cuda")
        labels = {s: (torch.rand(batch, -(-size[0] // s), -(-size[1] // s), device="cuda") > 0.7).float()
                  for s in (8, 16, 32)}
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            want = [f.clone() for f in model.forward_features(images, labels).features]
            with spa_model.cuda_graphs(model) as graphed:
                model.forward_features(images, labels)          # captured
                got = model.forward_features(images, labels)    # replayed
            assert len(graphed.graphs) == 1
        for a, b in zip(got.features, want):
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="static shapes"):
        spa_model.cuda_graphs(spa_model.create_model("spt_tiny", **SMALL, capacity="exact")).__enter__()
