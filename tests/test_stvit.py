"""STViT-R on Swin against independent references: a naive per-window stage 3 written from the
digest's description of the authors' two forms, the authors' logged parameter counts and fvcore
FLOPs, the published detection FLOPs, torch's FlopCounterMode, torchvision's Swin weights, the
authors' checkpoint layout, and the trainer on demo and real IN-S shards."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import spa_model
from spa_common.errors import SpaError
from spa_model import FeatureOutput
from spa_model.layers import WindowGrid
from spa_model.stvit import SemanticGrid

SMALL = dict(embed_dim=16, depths=(1, 1, 6, 1), num_heads=(1, 2, 2, 4))


def _small(form="det", **overrides):
    torch.manual_seed(0)
    return spa_model.create_model("stvit_r_tiny", num_classes=5, form=form, **{**SMALL, **overrides})


def _stage_grids(height: int, width: int, stem: str) -> list[tuple[int, int]]:
    """Stage grids by hand: conv stem ceil(ceil(x/2)/2), Swin's 4x4 patches floor(x/4); mergings ceil(x/2)."""
    grid = [(-(-(-(-height // 2)) // 2), -(-(-(-width // 2)) // 2)) if stem == "conv" else (height // 4, width // 4)]
    for _ in range(3):
        grid.append((-(-grid[-1][0] // 2), -(-grid[-1][1] // 2)))
    return grid


def _shapes_only(model, height: int, width: int, stem: str = "conv") -> FeatureOutput:
    grids = _stage_grids(height, width, stem)
    return FeatureOutput(features=[torch.empty(1, c, h, w) for c, (h, w) in zip(model.feature_channels, grids)])


# --- structure and counts against the authors' figures ----------------------------------------

@pytest.mark.parametrize("name, params", [("stvit_r_small", 49_625_518), ("stvit_r_base", 87_812_336)])
@pytest.mark.parametrize("form", ["cls", "det"])
def test_parameters_equal_the_authors_logged_counts(name, params, form):
    """log/small.txt:671 and log/base.txt:671 (conv stem, 1000 classes); both forms share the weights."""
    with torch.device("meta"):
        model = spa_model.create_model(name, num_classes=1000, form=form)
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("name, total, stem, stage3_blocks", [("stvit_r_small", 5.826, 0.151, 3.312),
                                                              ("stvit_r_base", 10.264, 0.259, 5.852)])
def test_flops_at_224_equal_the_authors_fvcore_log(name, total, stem, stage3_blocks):
    """log/{small,base}.txt:120-144: fvcore on their ImageNet code (norms 5 MACs per element, K/V
    normed and projected per neighbourhood copy), to the logged precision: the model, the rows
    patch_embed.proj and layers.2.blocks."""
    with torch.device("meta"):
        model = spa_model.create_model(name, num_classes=1000, form="cls")
    report = spa_model.count_flops(model, _shapes_only(model, 224, 224), norm_macs=5, duplicated_kv=True)
    stage3 = sum(macs for key, macs in report.per_module.items() if key.startswith("stages.2.blocks."))
    assert [round(macs / 1e9, 3) for macs in (report.total, report.per_module["patch_embed"], stage3)] == [
        total, stem, stage3_blocks]


@pytest.mark.parametrize("stvit, swin, stvit_published, swin_published",
                         [("stvit_r_small", "swin_small", 134e9, 194e9), ("stvit_r_base", "swin_base", 233e9, 343e9)])
def test_detection_backbone_flops_near_the_published_figures(stvit, swin, stvit_published, swin_published):
    """Poster Table 5 at 800x1333 (integer G, counting protocol not stated). K/V of the pad-to-7
    padding are never projected here, which the published count includes (0.7% of S, 1.1% of B)."""
    with torch.device("meta"):
        ours, base = spa_model.create_model(stvit), spa_model.create_model(swin)
    ours_macs = spa_model.count_flops(ours, _shapes_only(ours, 800, 1333)).total
    swin_macs = spa_model.count_flops(base, _shapes_only(base, 800, 1333, "patch")).total
    assert abs(swin_macs - swin_published) / swin_published < 0.01
    assert abs(ours_macs - stvit_published) / stvit_published < 0.015
    assert ours_macs / swin_macs < 0.69  # published: -31% (S), -32% (B)


@pytest.mark.parametrize("form, stem, size", [("det", "conv", (100, 132)), ("det", "conv", (36, 60)),
                                              ("cls", "patch", (100, 132)), ("cls", "patch", (224, 224))])
def test_flops_counter_counts_what_runs(form, stem, size):
    """Every matmul and convolution torch records (math attention, so that its matmuls are seen)
    equals the analytic count without norms: masked keys and padded queries included, K/V once."""
    model = _small(form, stem=stem).eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        output = model.forward_features(torch.randn(2, 3, *size))
        model.forward_head(output)
    assert spa_model.count_flops(model, output, norm_macs=0).total == counter.get_total_flops() / 2 / 2


# --- shapes, padding, batches, gradients, compile ---------------------------------------------

@pytest.mark.parametrize("size, stem", [((224, 224), "conv"), ((800, 1280), "conv"), ((37, 53), "conv"),
                                        ((37, 53), "patch"), ((100, 132), "patch")])
def test_four_maps_at_strides_4_to_32(size, stem):
    model = _small(stem=stem).eval()
    with torch.no_grad():
        output = model.forward_features(torch.randn(1, 3, *size))
    assert [tuple(f.shape[1:]) for f in output.features] == [
        (c, h, w) for c, (h, w) in zip((16, 32, 64, 128), _stage_grids(*size, stem))]
    assert output.scores == {} and list(output.select_ratios) == []
    assert all(torch.isfinite(f).all() for f in output.features)


def _attend(block, queries, keys):
    """Naive multi-head attention of normed queries (n, C) over normed keys (m, C)."""
    heads = block.attn.num_heads
    q, (k, v) = block.attn.q(queries), block.attn.kv(keys).chunk(2, dim=-1)
    d = q.shape[-1] // heads
    out = [torch.softmax(q[:, h * d:(h + 1) * d] @ k[:, h * d:(h + 1) * d].T / math.sqrt(d), dim=-1)
           @ v[:, h * d:(h + 1) * d] for h in range(heads)]
    return block.attn.proj(torch.cat(out, dim=-1))


def _with_mlp(block, token):
    return token + block.layer_scale_2 * block.mlp(block.norm2(token))


def _reference_stage3(stage, x, form):
    """One image's stage 3 (after the merge) as the digest describes the authors' forms, token by
    token, reading real pixels only: x (H, W, C) -> (H, W, C). Semantic token (i*3 + a, j*3 + b) is
    the max over bin (a, b) of window (i, j) (bins [0,3), [2,5), [4,7) of its 7x7 cells)."""
    height, width, _ = x.shape
    rows_w, cols_w = -(-height // 7), -(-width // 7)

    def bin_cells(index, part, length):
        return [p for p in range(index * 7 + 2 * part, index * 7 + 2 * part + 3) if p < length]

    def around(index, before, size, length):  # det: the authors' padding before the window
        return [p for p in range(index * 7 - before, index * 7 - before + size) if 0 <= p < length]

    def inside(index, size, length):  # cls: their 10x10 unfold (stride 4 at 14x14), moved inside the map
        start = min(max(index * 7 - 1, 0), max(length - size, 0))
        return [p for p in range(start, start + size) if p < length]

    bins = {(i * 3 + a, j * 3 + b): (bin_cells(i, a, height), bin_cells(j, b, width))
            for i in range(rows_w) for j in range(cols_w) for a in range(3) for b in range(3)}
    bins = {t: cells for t, cells in bins.items() if cells[0] and cells[1]}
    windows = [(i, j) for i in range(rows_w) for j in range(cols_w)]
    mine = {w: [t for t in bins if (t[0] // 3, t[1] // 3) == w] for w in windows}
    grid = WindowGrid.build(height, width, window=7, shift=0, device=x.device)
    swin, generate, refine, local, global_, recover = stage.blocks
    x = swin(x[None], grid)[0]

    pooled = {t: x[rows][:, cols].amax(dim=(0, 1)) for t, (rows, cols) in bins.items()}
    tokens, image = {}, generate.norm1(x)
    for (i, j), own in mine.items():
        queries = generate.norm1(torch.stack([pooled[t] for t in own]))
        if form == "det":
            keys = [image[r, c] for r in around(i, 3, 14, height) for c in around(j, 3, 14, width)]
        else:
            keys = list(queries) + [image[r, c] for r in inside(i, 10, height) for c in inside(j, 10, width)]
        for t, out in zip(own, generate.layer_scale_1 * _attend(generate, queries, torch.stack(keys))):
            tokens[t] = _with_mlp(generate, pooled[t] + out if form == "det" else out)

    order = list(tokens)
    normed, image = {t: refine.norm1(v) for t, v in tokens.items()}, refine.norm1(x)
    if form == "det":
        attended = {}
        for (i, j), own in mine.items():
            keys = torch.stack([image[r, c] for r in around(i, 7, 21, height) for c in around(j, 7, 21, width)])
            attended.update(zip(own, _attend(refine, torch.stack([normed[t] for t in own]), keys)))
    else:
        queries = torch.stack([normed[t] for t in order])
        attended = dict(zip(order, _attend(refine, queries, torch.cat([queries, image.flatten(0, 1)]))))
    tokens = {t: _with_mlp(refine, v + refine.layer_scale_1 * attended[t]) for t, v in tokens.items()}

    for block, groups in ((local, mine.values()), (global_, [order])):
        normed = {t: block.norm1(v) for t, v in tokens.items()}
        for group in groups:
            keys = torch.stack([normed[t] for t in group])
            for t, out in zip(group, _attend(block, keys, keys)):
                tokens[t] = _with_mlp(block, tokens[t] + block.layer_scale_1 * out)

    semantic = {t: recover.norm1(v) for t, v in tokens.items()}
    image, out = recover.norm1(x), x.clone()
    for i, j in windows:
        keys = [v for (r, c), v in semantic.items()
                if form == "cls" or (i * 3 - 12 <= r < i * 3 + 15 and j * 3 - 12 <= c < j * 3 + 15)]
        rows, cols = range(i * 7, min(i * 7 + 7, height)), range(j * 7, min(j * 7 + 7, width))
        queries = torch.stack([image[r, c] for r in rows for c in cols])
        attended = recover.layer_scale_1 * _attend(recover, queries, torch.stack(keys))
        for (r, c), value in zip([(r, c) for r in rows for c in cols], attended):
            out[r, c] = _with_mlp(recover, x[r, c] + value)
    return out


@pytest.mark.parametrize("form", ["det", "cls"])
@pytest.mark.parametrize("case", ["negative", "random"])
def test_stage3_matches_a_naive_reference_and_padding_never_enters(form, case):
    """A 9x16 stage-3 map (padded to 14x21: 2x3 windows, 4x7 of the 6x9 semantic tokens hold pixels).
    "negative": every real token is negative and the unit's Swin block passes it through, so a zero
    window padding would win the max-pool of the bins it shares; the norms' biases are not zero, so
    a padded key (LN(0) = bias) would shift every attention that read one. Layer scales are 1 so
    that the semantic blocks weigh in."""
    torch.manual_seed(0)
    stage = spa_model.create_model("stvit_r_tiny", form=form, layer_scale=1.0, **SMALL).stages[2].double()
    stage.downsample = nn.Identity()
    for module in stage.modules():
        if isinstance(module, nn.LayerNorm):
            nn.init.normal_(module.weight, 1.0, 0.2)
            nn.init.normal_(module.bias, 0.0, 0.5)
    x = torch.randn(1, 9, 16, 64, dtype=torch.float64)
    if case == "negative":
        x = -1 - x.abs()
        for weight in (stage.blocks[0].attn.proj, stage.blocks[0].mlp.fc2):
            nn.init.zeros_(weight.weight)
            nn.init.zeros_(weight.bias)
    stage.eval()
    with torch.no_grad():
        ours = stage(x)[0]
        torch.testing.assert_close(ours, _reference_stage3(stage, x[0], form), rtol=1e-9, atol=1e-10)
        if case == "negative":  # and the pooled tokens themselves: negative where a bin holds pixels
            grid = SemanticGrid.build(9, 16, window=7, cfg=stage.cfg, device=torch.device("cpu"))
            pooled = grid.pool(x)[0]
            assert (pooled[:4, :7] < 0).all() and (pooled[4:] == 0).all() and (pooled[:, 7:] == 0).all()


@pytest.mark.parametrize("form", ["det", "cls"])
def test_an_images_output_does_not_depend_on_its_batch(form):
    model = _small(form).eval()
    images = torch.randn(3, 3, 100, 132)
    with torch.no_grad():
        batched = model.forward_features(images).features
        alone = model.forward_features(images[1:2]).features
    for b, a in zip(batched, alone):
        torch.testing.assert_close(b[1:2], a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form, stem", [("det", "conv"), ("cls", "patch")])
def test_gradients_reach_every_parameter(form, stem):
    model = _small(form, stem=stem, drop_path_rate=0.0).train()
    model.forward(torch.randn(2, 3, 100, 132)).square().mean().backward()
    unreached = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert unreached == []


def test_compiles_as_one_graph():
    """fullgraph (a graph break fails), at a size whose maps need window padding; loss and gradients
    equal eager's."""
    model = _small(drop_path_rate=0.0).train()
    images = torch.randn(2, 3, 100, 132)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(compute):
        loss = compute(images)
        return loss.detach(), torch.autograd.grad(loss, params)

    def loss_of(batch):
        return model(batch).float().square().mean()

    loss, grads = step(loss_of)
    compiled_loss, compiled_grads = step(torch.compile(loss_of, fullgraph=True, backend="aot_eager"))
    torch._dynamo.reset()
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(compiled_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
def test_bf16_and_inductor_on_cuda_at_1280x800():
    """The detection size in bf16: a compiled (Inductor) training step matches eager, and an image's
    eval features do not depend on its batch."""
    torch.manual_seed(0)
    model = spa_model.create_model("stvit_r_tiny", drop_path_rate=0.0).cuda().train()
    images = torch.randn(2, 3, 800, 1280, device="cuda")
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_of(batch):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return sum(f.float().square().mean() for f in model.forward_features(batch).features)

    def step(compute):
        loss = compute(images)
        return loss.detach(), torch.autograd.grad(loss, params)

    (loss, grads), (compiled_loss, compiled_grads) = step(loss_of), step(torch.compile(loss_of, fullgraph=True))
    torch._dynamo.reset()
    torch.testing.assert_close(compiled_loss, loss, rtol=2e-2, atol=1e-3)
    for a, b in zip(compiled_grads, grads):
        assert (a.float() - b.float()).norm() <= 5e-2 * b.float().norm() + 1e-6
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        batched = model.forward_features(images).features
        alone = model.forward_features(images[1:]).features
    for b, a in zip(batched, alone):
        assert (b[1:].float() - a.float()).abs().max() < 5e-2 * a.float().abs().max()


# --- weights ----------------------------------------------------------------------------------

def _authors_layout(ours: dict, depths=SMALL["depths"], detection: bool = False) -> dict:
    """changsn/STViT-R's key names, written out by hand from the digest and their model files
    (Swin's official layout, STViT blocks with attn.q / attn.kv / layer_scale_1/2, Conv2d_BN stem)."""
    theirs = {}
    stem = {"conv1": "proj.0.c", "bn1": "proj.0.bn", "conv2": "proj.2.c", "bn2": "proj.2.bn"}
    for key, value in ours.items():
        parts = key.split(".")
        if parts[0] == "patch_embed":
            theirs[f"patch_embed.{stem[parts[1]]}.{parts[2]}"] = value
        elif parts[0] == "stages" and parts[2] == "downsample":  # merging closes the previous stage there
            theirs[f"layers.{int(parts[1]) - 1}.downsample.{'.'.join(parts[3:])}"] = value
        elif parts[0] == "stages":
            theirs[f"layers.{parts[1]}.{'.'.join(parts[2:])}"] = value
        elif not (detection and parts[0] == "head"):
            theirs[key] = value
    for stage, depth in enumerate(depths):  # buffers their checkpoints carry (rebuilt here)
        for block in range(depth):
            if stage != 2 or block % 6 == 0:
                theirs[f"layers.{stage}.blocks.{block}.attn.relative_position_index"] = torch.zeros(49, 49).long()
    if detection:
        norm = {k: theirs.pop(k) for k in ("norm.weight", "norm.bias")}
        theirs.update({f"norm3.{k[5:]}": v for k, v in norm.items()})
        for i, channels in enumerate((16, 32, 64)):
            theirs.update({f"norm{i}.weight": torch.ones(channels), f"norm{i}.bias": torch.zeros(channels)})
        theirs = {"state_dict": {**{f"backbone.{k}": v for k, v in theirs.items()},
                                 "neck.lateral_convs.0.conv.weight": torch.zeros(256, 16, 1, 1)}}
        return theirs
    return {"model": theirs, "epoch": 299}


def _randomised(model) -> dict:
    torch.manual_seed(1)
    return {k: torch.randn_like(v) if v.is_floating_point() else v + 1 for k, v in model.state_dict().items()}


def test_the_authors_imagenet_and_detection_checkpoints_load():
    source = _randomised(_small())
    theirs = _authors_layout(source)
    assert "layers.2.blocks.1.attn.kv.weight" in theirs["model"] and "patch_embed.proj.0.bn.running_var" in theirs["model"]
    model = _small()
    model.load_stvit_state_dict(theirs)
    loaded = model.state_dict()
    assert loaded.keys() == source.keys()
    assert all(torch.equal(loaded[k], v) for k, v in source.items())

    detector = _small()
    head = detector.head.weight.clone()
    detector.load_stvit_state_dict(_authors_layout(source, detection=True))
    assert torch.equal(detector.norm.weight, source["norm.weight"]) and torch.equal(detector.head.weight, head)
    assert torch.equal(detector.stages[2].blocks[5].layer_scale_2, source["stages.2.blocks.5.layer_scale_2"])


def test_a_checkpoint_that_does_not_fit_is_one_clear_error():
    theirs = _authors_layout(_small().state_dict())
    theirs["model"]["layers.2.blocks.3.attn.q.weight"] = torch.zeros(8, 8)
    with pytest.raises(SpaError, match=r"stages\.2\.blocks\.3\.attn\.q\.weight has shape \(8, 8\)"):
        _small().load_stvit_state_dict(theirs)
    deeper = spa_model.create_model("stvit_r_tiny", **{**SMALL, "depths": (1, 1, 12, 1)})
    with pytest.raises(SpaError, match="no place"):
        _small().load_stvit_state_dict(_authors_layout(deeper.state_dict(), depths=(1, 1, 12, 1)))


@pytest.mark.parametrize("stem", ["conv", "patch"])
def test_swin_weights_load_into_the_shared_parts(stem):
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    swin = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1, 6, 1], num_heads=[1, 2, 2, 4],
                           window_size=[7, 7], num_classes=5)
    model = _small(stem=stem)
    semantic_before = model.stages[2].blocks[3].attn.q.weight.clone()
    model.load_swin_state_dict(swin.state_dict())
    pairs = [(model.stages[0].blocks[0].attn.qkv.weight, swin.features[1][0].attn.qkv.weight),
             (model.stages[2].downsample.reduction.weight, swin.features[4].reduction.weight),
             (model.stages[2].blocks[0].mlp.fc2.weight, swin.features[5][0].mlp[3].weight),
             (model.stages[3].blocks[0].attn.relative_position_bias_table,
              swin.features[7][0].attn.relative_position_bias_table),
             (model.head.weight, swin.head.weight)]
    if stem == "patch":
        pairs.append((model.patch_embed.proj.weight, swin.features[0][0].weight))
    assert all(torch.equal(a, b) for a, b in pairs)
    assert torch.equal(model.stages[2].blocks[3].attn.q.weight, semantic_before)
    with pytest.raises(SpaError, match="missing"):
        spa_model.create_model("stvit_r_tiny", **{**SMALL, "depths": (1, 1, 12, 1)}).load_swin_state_dict(
            swin.state_dict())


def test_bad_options_are_one_clear_error():
    with pytest.raises(TypeError, match="unknown model options: selector"):
        spa_model.create_model("stvit_r_tiny", selector="gt")
    with pytest.raises(ValueError, match="multiple of 6"):
        spa_model.create_model("stvit_r_tiny", depths=(2, 2, 4, 2))
    with pytest.raises(ValueError, match="unknown STViT-R form 'seg'"):
        spa_model.create_model("stvit_r_tiny", form="seg")
    with pytest.raises(ValueError, match="stgm2_keys 5"):
        spa_model.create_model("stvit_r_tiny", stgm2_keys=5)


# --- the trainer ------------------------------------------------------------------------------

TRAIN_TINY = "model_args={embed_dim: 8, depths: [1, 1, 6, 1], num_heads: [1, 1, 2, 2], drop_path_rate: 0.0}"


@pytest.mark.parametrize("data, task, metric, extra", [
    (("in-s", "train"), "cls", "top1", []),
    (("voc-s", "train", "--size", "96,96"), "multilabel", "mAP", []),
    (("coco-s", "val", "--size", "96,64"), "det", "bbox_AP", []),
], ids=["in-s", "voc-s", "coco-s"])
def test_spa_train_trains_and_evaluates_every_task(demo_shards, tmp_path, data, task, metric, extra):
    from test_train import SMALL_DETECTOR

    from spa_train.config import resolve_config
    from spa_train.engine import train

    shards = str(demo_shards(*data))
    detector = SMALL_DETECTOR if task == "det" else []
    config = resolve_config(None, [TRAIN_TINY, "batch_size=4", "epochs=1", "max_steps=2", "num_workers=0",
                                   "eval_batch_size=32", "log_interval=1", "warmup_steps=1", "progress=false", "curves=false",
                                   *detector, *extra],
                            task=task, model="stvit_r_tiny", shards=shards, val_shards=shards, out=str(tmp_path / "run"))
    row = train(config)
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [step for step in steps if step["kind"] == "step"]
    assert len(steps) == 2 and all(math.isfinite(s["loss"]) and s["select_loss"] == 0 for s in steps)  # no gate
    assert math.isfinite(row[f"val/{metric}"]) and row["val/gmacs_per_image"] > 0


def test_a_short_training_on_the_in_s_fixture_learns(fixtures_dir, tmp_path):
    """The real Tiny ImageNet sample (two classes) through spa-data build / labels, then a fixed batch."""
    from spa_cli.data import main as spa_data
    from spa_data.loader import make_loader
    from spa_train.config import resolve_config
    from spa_train.engine import open_shards, training_loss
    from spa_train.tasks import build_task_model

    subset = tmp_path / "in-s-val"
    spa_data(["build", "in-s", "--root", str(fixtures_dir / "tiny-imagenet-200"), "--split", "val", "--missing-images", "skip",
              "--out", str(subset)])
    spa_data(["labels", str(subset)])
    config = resolve_config(None, [TRAIN_TINY], task="cls", model="stvit_r_tiny", shards=str(subset / "shards"))
    dataset = open_shards(config.shards, config, train=False)
    torch.manual_seed(0)
    model = build_task_model(config, dataset)
    batch = next(iter(make_loader(dataset, batch_size=8, shuffle=True)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        _, loss, _, select_loss = training_loss(model, batch, alpha=0.01)
        assert select_loss == 0
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0  # nats: the two classes present gain mass over the other 198
