"""Analytic MAC counter: Swin's published numbers, select-all SPT, a hand-worked SPA case."""
from __future__ import annotations

import pytest
import torch

import spa_model
from spa_model import FeatureOutput
from spa_model.models import BlockSelection
from spa_model.packing import plan_packing


def _output(batch, grids, kept=()):
    """A FeatureOutput with the given stage grids and, per SPA block, (tokens, kept per image):
    the counter reads shapes and the containers the kept tokens fill."""
    channels = (96, 192, 384, 768)
    blocks = [BlockSelection(plan_packing(torch.arange(tokens).expand(batch, -1) < count, container_len=49), tokens)
              for tokens, count in kept]
    return FeatureOutput(features=[torch.empty(batch, c, h, w) for c, (h, w) in zip(channels, grids)], blocks=blocks)


GRIDS_224 = [(56, 56), (28, 28), (14, 14), (7, 7)]


def _meta_model(name, **overrides):
    """The counter reads only the architecture: build it on the meta device (no init cost)."""
    with torch.device("meta"):
        return spa_model.create_model(name, **overrides)


def test_swin_tiny_hand_count_at_224():
    """Swin-T at 224, written out term by term (Swin's flops() convention, norms included)."""
    model = _meta_model("swin_tiny", num_classes=1000)
    report = spa_model.count_flops(model, _output(2, GRIDS_224))

    def block(tokens, dim):  # norms 2NC, qkv 3NC^2, attention 2N*49*C, proj NC^2, MLP 8NC^2
        return 2 * tokens * dim + 4 * tokens * dim * dim + 2 * tokens * 49 * dim + 8 * tokens * dim * dim

    want = 56 * 56 * 96 * (48 + 1)
    want += 2 * block(3136, 96) + 2 * block(784, 192) + 6 * block(196, 384) + 2 * block(49, 768)
    want += 784 * (384 + 384 * 192) + 196 * (768 + 768 * 384) + 49 * (1536 + 1536 * 768)
    want += 49 * 768 + 768 * 1000
    assert report.total == want
    assert abs(want - 4.5e9) / 4.5e9 < 0.03


@pytest.mark.parametrize("name, published", [("swin_small", 8.7e9), ("swin_base", 15.4e9)])
def test_swin_small_base_within_3_percent(name, published):
    model = _meta_model(name, num_classes=1000)
    channels = model.feature_channels
    output = FeatureOutput(features=[torch.empty(1, c, h, w) for c, (h, w) in zip(channels, GRIDS_224)])
    assert abs(spa_model.count_flops(model, output).total - published) / published < 0.03


def test_select_all_spt_counts_what_swin_counts():
    small = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
    images = torch.randn(2, 3, 100, 132)
    swin = spa_model.create_model("swin_tiny", **small).eval()
    spt = spa_model.create_model("spt_tiny", selector="all", **small).eval()
    assert spa_model.count_flops(spt, images).per_module == spa_model.count_flops(swin, images).per_module


def test_spa_block_count_drops_with_the_containers_used():
    """Stage 3 at 224 (14x14 = 4 windows of 49) with one container per image instead of four."""
    model = _meta_model("spt_tiny", num_classes=1000)
    swin = spa_model.count_flops(_meta_model("swin_tiny", num_classes=1000), _output(2, GRIDS_224))
    # batch of 2: stage-3 blocks used 2 containers (1 per image), stage-4 blocks 2 (everything)
    spt = spa_model.count_flops(model, _output(2, GRIDS_224, kept=[(196, 49)] * 6 + [(49, 49)] * 2))
    gate3 = 196 * 384
    saved3 = 3 * 49 * 4 * 384 * 384 + 2 * 3 * 49 * 49 * 384  # 3 fewer windows: qkv+proj, q@k and attn@v
    assert spt.per_module["stages.2.blocks.0"] == swin.per_module["stages.2.blocks.0"] - saved3 + gate3
    assert spt.per_module["stages.3.blocks.1"] == swin.per_module["stages.3.blocks.1"] + 49 * 768
    assert spt.per_module["stages.2.entry_gate"] == 2 * 784 * 192
    assert spt.total == swin.total - 6 * saved3 + 6 * gate3 + 2 * 49 * 768 + 2 * 784 * 192


def test_counter_reads_the_containers_of_a_real_forward():
    small = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
    model = spa_model.create_model("spt_tiny", selector="gt", **small).eval()
    labels = {8: torch.zeros(2, 28, 28), 16: torch.zeros(2, 14, 14), 32: torch.zeros(2, 7, 7)}
    labels[16][0, :3, :3] = 1  # image 0: 9 tokens -> 1 container; image 1: none
    with torch.no_grad():
        out = model.forward_features(torch.randn(2, 3, 224, 224), labels)
    assert [int(c) for c in out.containers] == [1, 1, 0, 0]
    report = spa_model.count_flops(model, out)
    dim, tokens = 64, 196
    stage3 = 2 * tokens * dim + tokens * dim + 0.5 * 49 * 4 * dim * dim + 0.5 * 2 * 49 * 49 * dim + 8 * tokens * dim * dim
    assert report.per_module["stages.2.blocks.1"] == pytest.approx(stage3)


@pytest.mark.parametrize("name, selector", [("swin_tiny", None), ("spt_tiny", "gt"), ("spt_tiny", "all"),
                                            ("spt_tiny", "gumbel")])  # an untrained gate keeps all, padding too
def test_an_images_count_does_not_depend_on_its_batch(name, selector):
    """Two images of other shapes, each alone and together in one padded batch: given each one's own
    size, the batch's figure is the mean of the two alone (the oracle selects the same tokens)."""
    small = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
    model = spa_model.create_model(name, **small, **({"selector": selector} if selector else {})).eval()
    sizes, canvas = [(64, 160), (160, 96)], (160, 160)
    generator = torch.Generator().manual_seed(0)
    images = [torch.randn(3, h, w, generator=generator) for h, w in sizes]
    labels = [{s: (torch.rand(-(-h // s), -(-w // s), generator=generator) > 0.7).float() for s in (8, 16, 32)}
              for h, w in sizes]
    alone = [spa_model.count_flops(model, model.forward_features(image[None], {s: m[None] for s, m in lab.items()}))
             for image, lab in zip(images, labels)]

    def pad(t, h, w):
        return torch.nn.functional.pad(t, (0, w - t.shape[-1], 0, h - t.shape[-2]))

    batch = torch.stack([pad(image, *canvas) for image in images])
    batch_labels = {s: torch.stack([pad(lab[s], -(-canvas[0] // s), -(-canvas[1] // s)) for lab in labels])
                    for s in (8, 16, 32)}
    with torch.no_grad():
        out = model.forward_features(batch, batch_labels)
    together = spa_model.count_flops(model, out, image_sizes=sizes)
    assert together.total == pytest.approx((alone[0].total + alone[1].total) / 2, rel=1e-12)
    assert spa_model.count_flops(model, out).total > together.total * 1.2   # the padded canvas costs more
