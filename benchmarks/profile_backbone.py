"""Where a Swin-T and an SPT-T step spends its GPU time, op by op, on the inputs of bench_backbone.py.

    PYTHONPATH=. python3 benchmarks/profile_backbone.py --out DIR [--shape 1280x800:8]
        [--phases inference,train] [--labels REGEX] [--compile] [--host] [--trace] [--quick]

Profiles one bf16 inference pass and one training step of each variant of ``bench_backbone.py``
(scattered objects, about 25% of the stride-16 cells, gate evaluated; SPT-T with its default learned
budget settled first) with torch.profiler after warm-up, and writes DIR/profile_<phase>[_compiled].txt:
the ops (under ``--compile``, the generated kernels) by total device time, the models side by side,
so the SPT overhead (gather, plan, scatter, gate) shows against what it saves. ``--host`` tables each
op's host (CPU) self time and calls instead, for steps bound by issuing launches (without a GPU it
runs on the CPU, host times; ``--quick``: tiny models). ``--trace`` also writes a Chrome trace per
variant (DIR/trace_<label>_<phase>.json.gz) for ``trace_gaps.py``.
"""
from __future__ import annotations

import argparse
import os
import re

import torch
from torch.profiler import ProfilerActivity, profile

from bench_backbone import Inputs, build, step_fn, variants


def device_times(fn, steps: int = 3, host: bool = False, trace: str | None = None) -> dict[str, tuple[float, int]]:
    """{op name: (device ms per step, calls per step)} over ``steps`` profiled steps; with ``host``,
    host (CPU) self ms of each op instead: where a launch-bound step spends its issuing time.
    ``trace``: also export the Chrome trace there."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * torch.cuda.is_available()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        sync()
    if trace:
        prof.export_chrome_trace(trace)
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
    parser.add_argument("--shape", default="1280x800:8", help="WxH:batch")
    parser.add_argument("--share", type=float, default=0.25)
    parser.add_argument("--labels", default="^(swin_t|spt_t_gt|spt_t_topk)$", help="regex over bench_backbone's variants")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--phases", default="inference,train")
    parser.add_argument("--compile", action="store_true", help="profile torch.compile'd steps")
    parser.add_argument("--host", action="store_true", help="host (CPU) self time per op, not device time")
    parser.add_argument("--trace", action="store_true", help="also write a Chrome trace per variant and phase")
    parser.add_argument("--quick", action="store_true", help="tiny models")
    args = parser.parse_args()
    size, batch = args.shape.split(":")
    width, height = map(int, size.split("x"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    inputs = Inputs(int(batch), height, width, args.share, device)
    settle_inputs = [Inputs(int(batch), height, width, args.share, device, seed=s) for s in (1, 2, 3)]
    mode = "compiled" if args.compile else "eager"
    kind = "host" if args.host or device.type == "cpu" else "device"
    os.makedirs(args.out, exist_ok=True)
    for phase in args.phases.split(","):
        tables = {}
        for label, spec in variants("tiny", phase, mode, args.share).items():
            if not re.search(args.labels, label):
                continue
            torch.manual_seed(0)
            model = build(spec, inputs, device, args.quick, settle_inputs)
            trace = os.path.join(args.out, f"trace_{label}_{phase}{'_compiled' * args.compile}.json.gz") \
                if args.trace else None
            tables[label] = device_times(step_fn(model, inputs, phase=phase, mode=mode, device=device),
                                         host=kind == "host", trace=trace)
            torch._dynamo.reset()
        names = sorted(set().union(*tables.values()),
                       key=lambda k: -max(t.get(k, (0, 0))[0] for t in tables.values()))
        lines = [f"{args.shape} {phase} {mode}, {kind} ms per step (calls)",
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
        suffix = "_compiled" * args.compile + "_host" * (kind == "host")
        with open(os.path.join(args.out, f"profile_{phase}{suffix}.txt"), "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
