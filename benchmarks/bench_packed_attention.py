"""Speed of Select and Pack Attention against dense window attention and the unmasked ceiling.

Setting (the issue's): stage 3 of Swin-T at 1280x800, batch 8: C=384, 12 heads, head_dim 32,
50x80 tokens padded to 56x84, window 7, L=49, bfloat16; 25% and 50% of the tokens selected
(``--selection objects``, the default: scattered objects of varied size; ``random``: uniform).
Containers per image: the fewest that hold the selection (``--capacity tight``), or those SPT's
default learned budget settles on for it (``--capacity budget``); ``--batch 1`` for deployment.

Two levels, forward and forward+backward (median of triton.testing.do_bench, random data):

* ``op``: the whole attention op, qkv and output projections included: dense window attention
  over all tokens (Swin's way: windows, SDPA with a float mask of bias + shift mask); packed
  without any mask (the ceiling: same packing, unmasked SDPA); packed SDPA with mask + bias (ours);
  packed SDPA, mask only; Triton fused (bias / mask only); and select + pack + scatter alone.
* ``core``: attention only, given the packed qkv (what the kernels differ in).

Eager calls by default; ``--graphs`` times CUDA-graph replays instead (launch gaps removed: the
GPU time alone). Also reports, at this size, the largest relative error of the Triton variants
against the SDPA ones (output and every gradient). Prints a table per selection ratio and writes
``bench_packed_attention[_graphs].json`` (machine, date, versions, numbers) to ``--out``.

    PYTHONPATH=. python3 benchmarks/bench_packed_attention.py --out results/
    PYTHONPATH=. python3 benchmarks/bench_packed_attention.py --out results/ --graphs
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from spa_common.io import atomic_write
from spa_model.packed_attention import (flat_slot_rows, packed_attention, scatter_add_rows, select_pack_attention,
                                        token_positions)
from spa_model.budget import BudgetPolicy, TokenBudget
from spa_model.layers import WindowGrid
from spa_model.packing import plan_packing
from spa_train.bench import labels_from_masks, scattered_objects


def _selection(kind: str, batch: int, grid: WindowGrid, ratio: float, generator, device) -> torch.Tensor:
    """(B, N) bool keep, window-major over ``grid``'s padded map: ``random`` tokens, or the cells of
    scattered objects (rectangles and ellipses, as ``bench_backbone.py`` uses) at stride 16 on the
    unpadded map, in the order SPT's blocks take them (window padding is never kept)."""
    if kind == "random":
        return torch.rand(batch, grid.token_pixel.shape[0], generator=generator, device=device) < ratio
    objects = scattered_objects(batch, grid.height * 16, grid.width * 16, share=ratio, seed=0, device=device)
    cells = labels_from_masks(objects, grid.height * 16, grid.width * 16, (16,))[16] > 0
    return grid.window_major(cells.flatten(1), batch)


def _swin_relative_index(window: int, device) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (grid[:, :, None] - grid[:, None, :]).permute(1, 2, 0) + (window - 1)
    return (relative[..., 0] * (2 * window - 1) + relative[..., 1]).flatten().to(device)


def build_cases(args, ratio: float, device):
    generator = torch.Generator(device=device).manual_seed(0)
    dtype = getattr(torch, args.dtype)
    batch, channels, heads, window = args.batch, args.channels, args.heads, args.window
    height, width = -(-args.height // window) * window, -(-args.width // window) * window
    num_tokens, length = height * width, window * window

    def rand(*shape, scale=1.0, dtype=dtype):
        return (torch.randn(*shape, generator=generator, device=device) * scale).to(dtype)

    weights = dict(qkv_weight=rand(3 * channels, channels, scale=channels ** -0.5),
                   qkv_bias=rand(3 * channels),
                   proj_weight=rand(channels, channels, scale=channels ** -0.5),
                   proj_bias=rand(channels),
                   rel_pos_table=rand((2 * window - 1) ** 2, heads, scale=0.02, dtype=torch.float32))
    weights = {k: v.requires_grad_() for k, v in weights.items()}
    x = rand(batch, num_tokens, channels).requires_grad_()
    grid = WindowGrid.build(args.height, args.width, window=window, shift=window // 2, device=torch.device(device))
    keep = _selection(args.selection, batch, grid, ratio, generator, device)
    coords, region = grid.coords, grid.region
    # containers per image, static (no sync per call): the fewest that hold the selection, or what the
    # default learned budget settles on for it (SPT's default settings)
    capacity = int(((keep.sum(1) + length - 1) // length).max())
    if args.capacity == "budget":
        pixels = args.height * args.width
        share = BudgetPolicy().level(float(keep.sum(1).max()) / pixels)
        capacity = TokenBudget(share, learned=False).containers(pixels, container_len=length)
    head_dim = channels // heads
    scale = head_dim ** -0.5

    # Swin's dense path: the shift mask and relative index are buffers; the bias is gathered per call.
    num_windows = num_tokens // length
    window_region = region.view(num_windows, length)
    shift_mask = torch.zeros(num_windows, 1, length, length, device=device, dtype=dtype).masked_fill(
        window_region[:, None, :, None] != window_region[:, None, None, :], -100.0)
    relative_index = _swin_relative_index(window, device)

    def split_heads(qkv):  # (rows, 3C) -> 3 x (rows / L, heads, L, d)
        return qkv.view(-1, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def merge_heads(out):  # (rows / L, heads, L, d) -> (rows, C)
        return out.transpose(1, 2).reshape(-1, channels)

    def dense_attention(qkv):  # Swin: bias (gathered per call) + shift mask, one mask per window
        bias = weights["rel_pos_table"][relative_index].view(length, length, heads).permute(2, 0, 1)
        mask = (shift_mask + bias.to(dtype)).expand(batch, -1, -1, -1, -1).reshape(-1, heads, length, length)
        return F.scaled_dot_product_attention(*split_heads(qkv), attn_mask=mask, scale=scale)

    def dense_window():
        qkv = F.linear(x.view(-1, channels), weights["qkv_weight"], weights["qkv_bias"])
        out = merge_heads(dense_attention(qkv))
        return F.linear(out, weights["proj_weight"], weights["proj_bias"]).view(batch, num_tokens, channels)

    linears = {k: weights[k] for k in ("qkv_weight", "qkv_bias", "proj_weight", "proj_bias")}
    common = dict(keep=keep, coords=coords, region=region, window=window, container_len=length,
                  capacity=capacity, num_heads=heads, **linears)

    def packed(backend: str, bias: bool) -> Callable[[], torch.Tensor]:
        return lambda: select_pack_attention(x, rel_pos_table=weights["rel_pos_table"] if bias else None,
                                             backend=backend, **common)[0]

    total = batch * num_tokens
    def planned():  # the plan, each slot's source row and its weight in the sum, once per call
        plan = plan_packing(keep, container_len=length, capacity=capacity)
        rows, holds_token = flat_slot_rows(plan, total)
        return rows, holds_token.to(x.dtype)

    def pack(rows):
        return x.reshape(-1, channels).index_select(0, rows)

    def scatter(packed, rows, weight):
        return scatter_add_rows(packed.new_zeros(total, channels), packed, rows, weight).view(batch, num_tokens, -1)

    def packed_unmasked():  # the same op with the attention rule dropped: the ceiling
        rows, weight = planned()
        qkv = F.linear(pack(rows), weights["qkv_weight"], weights["qkv_bias"])
        out = merge_heads(F.scaled_dot_product_attention(*split_heads(qkv), scale=scale))
        return scatter(F.linear(out, weights["proj_weight"], weights["proj_bias"]), rows, weight)

    def select_pack_scatter():
        rows, weight = planned()
        return scatter(pack(rows), rows, weight)

    # Core level: attention only on a fixed packed qkv.
    positions = token_positions(region=region, coords=coords)
    plan = plan_packing(keep, container_len=length, capacity=capacity)
    qkv_packed = rand(plan.num_slots, 3 * channels).requires_grad_()
    qkv_dense = rand(batch * num_tokens, 3 * channels).requires_grad_()

    def core(backend: str, bias: bool):
        return lambda: packed_attention(qkv_packed, plan, positions=positions, num_heads=heads,
                                        window=window, backend=backend,
                                        rel_pos_table=weights["rel_pos_table"] if bias else None)

    def core_unmasked():
        return merge_heads(F.scaled_dot_product_attention(*split_heads(qkv_packed), scale=scale))

    def core_dense():
        return merge_heads(dense_attention(qkv_dense))

    leaves = [x, qkv_packed, qkv_dense, *weights.values()]
    cases = {
        "op/dense_window": dense_window,
        "op/packed_unmasked_ceiling": packed_unmasked,
        "op/packed_sdpa_bias": packed("sdpa", True),
        "op/packed_sdpa_nobias": packed("sdpa", False),
        "op/packed_triton_bias": packed("triton", True),
        "op/packed_triton_nobias": packed("triton", False),
        "op/select_pack_scatter": select_pack_scatter,
        "core/dense_window": core_dense,
        "core/packed_unmasked_ceiling": core_unmasked,
        "core/packed_sdpa_bias": core("sdpa", True),
        "core/packed_sdpa_nobias": core("sdpa", False),
        "core/packed_triton_bias": core("triton", True),
        "core/packed_triton_nobias": core("triton", False),
    }
    info = dict(batch=batch, tokens=num_tokens, grid=[height, width], channels=channels, heads=heads,
                window=window, container_len=length, ratio=ratio, selection=args.selection, capacity=args.capacity,
                kept=int(keep.sum()),
                containers=plan.num_containers, dense_windows=batch * num_windows, dtype=str(dtype))
    return cases, leaves, info


def time_case(fn, leaves, *, graphs: bool) -> dict:
    """Median ms of forward (no grad) and forward+backward; CUDA-graph replays when ``graphs``."""
    import triton.testing as tt

    grad_out = torch.randn_like(fn())

    def forward():
        with torch.no_grad():
            fn()

    def forward_backward():
        fn().backward(grad_out)

    if graphs:  # launch gaps removed; grads accumulate inside the graph, which costs the same
        bench = lambda f: tt.do_bench_cudagraph(f, rep=20, return_mode="median")
    else:
        bench = lambda f: tt.do_bench(f, warmup=25, rep=100, grad_to_none=leaves, return_mode="median")
    return {"fwd_ms": bench(forward), "fwd_bwd_ms": bench(forward_backward) if fn().requires_grad else None}


SWEEP = [  # (forward warps, heads per program), (backward warps, heads per program)
    ((2, 1), (8, 6)), ((4, 1), (8, 1)), ((2, 1), (4, 1)), ((1, 1), (4, 6)), ((2, 2), (8, 4)),
    ((4, 3), (8, 3)), ((4, 6), (8, 6)), ((2, 1), (8, 12)), ((2, 1), (16, 6)),
]


def sweep_launch(fn, leaves, *, graphs: bool) -> dict:
    """core/packed_triton_bias under other launch shapes (warps, heads per program)."""
    from spa_model import triton_packed_attention as kernels

    default = {k: dict(v) for k, v in kernels.LAUNCH.items()}
    results = {}
    for (fw, fh), (bw, bh) in SWEEP:
        kernels.LAUNCH.update(forward=dict(num_warps=fw, heads=fh), backward=dict(num_warps=bw, heads=bh))
        name = f"core/triton_bias_w{fw}h{fh}_w{bw}h{bh}"
        try:
            results[name] = time_case(fn, leaves, graphs=graphs)
        except Exception as error:
            results[name] = {"error": repr(error)[:300]}
    kernels.LAUNCH.update(default)
    return results


def check_at_scale(cases: dict, leaves: list) -> dict:
    """Relative error of each packed variant against the sdpa one at the benchmark's size (bf16)."""
    def run(fn):
        for leaf in leaves:
            leaf.grad = None
        out = fn()
        out.backward(grad)
        return [out.float()] + [leaf.grad.float() if leaf.grad is not None else None for leaf in leaves]

    report = {}
    for level in ("op", "core"):
        torch.manual_seed(1)
        grad = torch.randn_like(cases[f"{level}/packed_sdpa_bias"]())
        for bias in ("bias", "nobias"):
            expected = run(cases[f"{level}/packed_sdpa_{bias}"])
            actual = run(cases[f"{level}/packed_triton_{bias}"])
            errors = [((a - e).norm() / e.norm()).item() for a, e in zip(actual, expected)
                      if a is not None and e is not None and e.norm() > 0]
            report[f"{level}/triton_vs_sdpa_{bias}"] = max(errors)
    return report


def smoke(args) -> int:
    """Run each case once on the CPU (Triton cases need CUDA or TRITON_INTERPRET=1)."""
    cases, leaves, info = build_cases(args, args.ratios[0], torch.device("cpu"))
    for name, fn in cases.items():
        out = fn()
        if out.requires_grad:
            out.backward(torch.randn_like(out))
        print(f"{name:34s} ok {tuple(out.shape)}")
    print("triton vs sdpa, max relative error:", json.dumps(check_at_scale(cases, leaves)))
    fake = {name: {"fwd_ms": 1.0, "fwd_bwd_ms": 2.0} for name in cases}
    print(format_table(fake, info, graphs=False))
    return 0


def format_table(results: dict, info: dict, graphs: bool) -> str:
    ceiling = results.get("op/packed_unmasked_ceiling", {})
    core_ceiling = results.get("core/packed_unmasked_ceiling", {})
    kind = "CUDA-graph replays" if graphs else "eager"
    lines = [f"ratio {info['ratio']}, batch {info['batch']}: {info['kept']} tokens kept, {info['containers']} "
             f"containers ({info['capacity']} capacity; dense: {info['dense_windows']} windows); {kind}, median ms",
             f"{'case':30s} {'fwd':>8s} {'fwd+bwd':>8s} {'/ceiling fwd':>12s} {'/ceiling f+b':>12s}"]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else "-"
    for name, r in results.items():
        if "error" in r:
            lines.append(f"{name:30s} ERROR {r['error'][:120]}")
            continue
        ref = core_ceiling if name.startswith("core/") else ceiling
        ratio = lambda key: f"{r[key] / ref[key]:.2f}" if r.get(key) and ref.get(key) else "-"
        lines.append(f"{name:30s} {fmt(r['fwd_ms']):>8s} {fmt(r['fwd_bwd_ms']):>8s} "
                     f"{ratio('fwd_ms'):>12s} {ratio('fwd_bwd_ms'):>12s}")
    return "\n".join(lines)


def write_report(args, runs: list) -> None:
    import triton

    report = dict(benchmark="bench_packed_attention", mode="cuda_graphs" if args.graphs else "eager",
                  date=datetime.now(timezone.utc).isoformat(),
                  machine=dict(gpu=torch.cuda.get_device_name(), host=platform.node(),
                               python=platform.python_version(), torch=torch.__version__,
                               triton=triton.__version__, cuda=torch.version.cuda),
                  runs=runs)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "bench_packed_attention" + ("_graphs" if args.graphs else "") + ".json"
    atomic_write(args.out / name, json.dumps(report, indent=2).encode())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=50)
    parser.add_argument("--width", type=int, default=80)
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--window", type=int, default=7)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--selection", choices=["objects", "random"], default="objects",
                        help="kept tokens: cells of scattered objects (as in use) or tokens drawn at random")
    parser.add_argument("--capacity", choices=["tight", "budget"], default="tight",
                        help="containers per image: the fewest that hold the selection, or those of the "
                             "default learned budget for it (BudgetPolicy's level of the largest image's share)")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                        help="activations and weights (the bias table stays float32, as under autocast)")
    parser.add_argument("--graphs", action="store_true",
                        help="time CUDA-graph replays instead of eager calls (run it as its own process: "
                             "a failed capture can spoil the CUDA context)")
    parser.add_argument("--sweep", action="store_true",
                        help="also time core/packed_triton_bias under other launch shapes")
    parser.add_argument("--smoke", action="store_true",
                        help="run every case once (forward + backward) on the CPU, no timing; with "
                             "TRITON_INTERPRET=1 for the Triton cases (use --dtype float32 there: the "
                             "interpreter's bfloat16 dot is wrong)")
    args = parser.parse_args(argv)
    if args.smoke:
        return smoke(args)
    if not torch.cuda.is_available():
        print("bench_packed_attention: needs a CUDA device (or --smoke)", file=sys.stderr)
        return 1
    runs = []
    for ratio in args.ratios:
        cases, leaves, info = build_cases(args, ratio, torch.device("cuda"))
        try:  # first: a variant that is wrong at this size makes its timing moot
            checks = {} if args.graphs else check_at_scale(cases, leaves)
        except Exception as error:
            checks = {"error": repr(error)[:300]}
        results = {}
        for name, fn in tqdm(cases.items(), desc=f"ratio {ratio}", file=sys.stderr):
            try:
                results[name] = time_case(fn, leaves, graphs=args.graphs)
            except Exception as error:  # report and go on: one broken variant must not lose the others
                results[name] = {"error": repr(error)[:300]}
                traceback.print_exc()
        if args.sweep:
            results.update(sweep_launch(cases["core/packed_triton_bias"], leaves, graphs=args.graphs))
        runs.append(dict(setting=info, results=results, max_relative_error=checks))
        print(format_table(results, info, args.graphs))
        if checks:
            print("triton vs sdpa, max relative error over output and grads:", json.dumps(checks))
        write_report(args, runs)  # after every ratio: a run cut short keeps what it measured
    return 0


if __name__ == "__main__":
    sys.exit(main())
