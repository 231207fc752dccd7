"""Where a Swin-T and an SPT-T (25% kept, static capacity) step spends its GPU time, op by op.

    PYTHONPATH=. python3 benchmarks/profile_backbone.py --out DIR [--size 1280x800] [--batch 8]
        [--phases inference,train] [--compile] [--host [--device cpu]]

Profiles one bf16 inference pass and one training step of each model (after warm-up) with
torch.profiler and writes DIR/profile_<phase>[_compiled].txt: the ops (under ``--compile``, the
generated kernels) by total device time, the models side by side, so the SPT overhead (gather, plan,
scatter, gate) shows against what it saves. SPT-T runs with per-image containers and with the
paper's packing. ``--host`` tables each op's host (CPU) self time and calls instead, for steps bound
by issuing launches; ``--host --device cpu`` counts the ops a step issues with no GPU (there, the
packed attention runs its SDPA path, not the Triton kernels).
"""
from __future__ import annotations

import argparse
import os

import torch
from torch.profiler import ProfilerActivity, profile

from bench_backbone import box_labels, inference_fn, make_compute, make_model, static_capacity, train_fn


def device_times(fn, steps: int = 3, host: bool = False) -> dict[str, tuple[float, int]]:
    """{op name: (device ms per step, calls per step)} over ``steps`` profiled steps; with ``host``,
    host (CPU) self ms of each op instead: where a launch-bound step spends its issuing time."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * torch.cuda.is_available()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        sync()
    table = {}
    for event in prof.key_averages():
        if host and event.device_type == torch.autograd.DeviceType.CPU and event.self_cpu_time_total > 0:
            table[event.key] = (event.self_cpu_time_total / 1e3 / steps, event.count // steps)
        elif not host and event.device_type == torch.autograd.DeviceType.CUDA:  # kernels: no double counting
            table[event.key] = (event.self_device_time_total / 1e3 / steps, event.count // steps)
    return table


CATEGORIES = (  # first match wins; a fused kernel is named after the ops Inductor fused into it
    ("attention", ("fmha", "flash", "attention", "_forward_kernel", "_backward_kernel")),
    ("matmul", ("gemm", "nvjet", "cutlass", "sm90_", "addmm", "aten::mm", "bmm")),
    ("index/scatter", ("index", "scatter", "gather", "cumsum", "sort")),
    ("norm", ("layer_norm", "native_layer_norm")),
    ("optimizer", ("adam", "foreach", "multi_tensor")),
)


def category(kernel: str) -> str:
    name = kernel.lower()
    return next((c for c, keys in CATEGORIES if any(k in name for k in keys)), "other")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", default="1280x800")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--phases", default="inference,train")
    parser.add_argument("--compile", action="store_true", help="profile torch.compile'd models")
    parser.add_argument("--host", action="store_true", help="host (CPU) self time per op, not device time")
    parser.add_argument("--device", default="cuda", help="cpu: with --host, the ops a step issues, no GPU needed")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    device = torch.device(args.device)
    images = torch.randn(args.batch, 3, height, width, device=device)
    labels = box_labels(args.batch, height, width, 0.25, 0, device)
    capacity = static_capacity((height, width), args.batch, 0.25)
    os.makedirs(args.out, exist_ok=True)
    variants = {"swin_tiny": ("swin_tiny", {}),
                "spt_tiny": ("spt_tiny", dict(selector="gt", capacity=capacity)),
                "spt_paper": ("spt_tiny", dict(selector="gt", capacity=capacity, per_image_containers=False))}
    builders = {"inference": inference_fn, "train": train_fn}
    for phase in args.phases.split(","):
        tables = {}
        for label, (name, overrides) in variants.items():
            model = make_model(name, device, **overrides)
            compute = make_compute(model)
            if args.compile:
                compute = torch.compile(compute, fullgraph=True)
            tables[label] = device_times(builders[phase](model, compute, images, labels), host=args.host)
            torch._dynamo.reset()
        names = sorted(set().union(*tables.values()),
                       key=lambda k: -max(t.get(k, (0, 0))[0] for t in tables.values()))
        lines = [f"{args.size} batch {args.batch} {phase}, {'host' if args.host else 'device'} ms per step (calls)",
                 f"{'total':70s} " + "  ".join(f"{n}: {sum(v[0] for v in t.values()):8.3f} ({sum(v[1] for v in t.values()):4d})"
                                               for n, t in tables.items())]
        for cat in [c for c, _ in CATEGORIES] + ["other"]:
            cells = "  ".join(f"{n}: {sum(v[0] for k, v in t.items() if category(k) == cat):8.3f}"
                              for n, t in tables.items())
            lines.append(f"{'[' + cat + ']':70s} {cells}")
        for key in names[:args.top]:
            cells = "  ".join(f"{n}: {tables[n].get(key, (0, 0))[0]:8.3f} ({tables[n].get(key, (0, 0))[1]:4d})"
                              for n in tables)
            lines.append(f"{key[:70]:70s} {cells}")
        if args.compile:  # full kernel names: what Inductor fused into each
            lines += ["", *names[:args.top]]
        text = "\n".join(lines)
        print(text)
        suffix = "_compiled" * args.compile + "_host" * args.host
        with open(os.path.join(args.out, f"profile_{phase}{suffix}.txt"), "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
