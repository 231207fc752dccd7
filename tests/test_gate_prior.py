"""The gate prior: gate biases that start training's Gumbel selection near a chosen share of tokens."""
from __future__ import annotations

import pytest
import torch

import spa_model
from spa_model.selection import gumbel_sigmoid, prior_logit

TINY = dict(embed_dim=16, depths=(1, 1, 2, 2), num_heads=(1, 1, 2, 2))


@pytest.mark.parametrize("share", [0.05, 0.25, 0.6])
@pytest.mark.parametrize("threshold, tau", [(0.01, 1.0), (0.5, 0.5)])
def test_prior_logit_keeps_that_share_of_gumbel_samples(share, threshold, tau):
    torch.manual_seed(0)
    scores = torch.full((4, 250, 250), prior_logit(share, threshold=threshold, tau=tau))
    kept = gumbel_sigmoid(scores, tau=tau, threshold=threshold, stochastic=True).keep.float().mean()
    assert kept.item() == pytest.approx(share, abs=0.005)   # 250,000 samples: SD <= 0.001


def test_spt_with_a_prior_starts_near_that_share_and_without_it_keeps_everything():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 224, 224)
    with_prior = spa_model.create_model("spt_tiny", gate_prior=0.2, **TINY).train()
    ratios = torch.stack(with_prior.forward_features(images).select_ratios)
    assert 0.15 < ratios.mean().item() < 0.3            # the max with the pooled finer scores adds a little
    paper = spa_model.create_model("spt_tiny", **TINY).train()
    assert torch.stack(paper.forward_features(images).select_ratios).min().item() > 0.99


def test_prior_must_be_a_share():
    with pytest.raises(ValueError, match="gate_prior 1.5"):
        spa_model.create_model("spt_tiny", gate_prior=1.5, **TINY)
