"""Where a Swin-T and an SPT-T (25% kept, static capacity) step spends its GPU time, op by op.

    PYTHONPATH=. python3 benchmarks/profile_backbone.py --out DIR [--size 1280x800] [--batch 8]

Profiles one bf16 inference pass and one training step of each model (after warm-up) with
torch.profiler and writes DIR/profile_<phase>.txt: the ops by total device time, both models side
by side, so the SPT overhead (gather, plan, scatter, gate) shows against what it saves.
"""
from __future__ import annotations

import argparse
import os

import torch
from torch.profiler import ProfilerActivity, profile

from bench_backbone import box_labels, inference_fn, make_compute, make_model, static_capacity, train_fn


def device_times(fn, steps: int = 3) -> dict[str, tuple[float, int]]:
    """{op name: (device ms per step, calls per step)} over ``steps`` profiled steps."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    table = {}
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA or event.self_device_time_total > 0:
            table[event.key] = (event.self_device_time_total / 1e3 / steps, event.count // steps)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", default="1280x800")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    device = torch.device("cuda")
    images = torch.randn(args.batch, 3, height, width, device=device)
    labels = box_labels(args.batch, height, width, 0.25, 0, device)
    capacity = static_capacity((height, width), args.batch, 0.25)
    os.makedirs(args.out, exist_ok=True)
    for phase, builder in (("inference", inference_fn), ("train", train_fn)):
        tables = {}
        for name, overrides in (("swin_tiny", {}), ("spt_tiny", dict(selector="gt", capacity=capacity))):
            model = make_model(name, device, **overrides)
            tables[name] = device_times(builder(model, make_compute(model), images, labels))
        names = sorted(set().union(*tables.values()),
                       key=lambda k: -max(t.get(k, (0, 0))[0] for t in tables.values()))
        lines = [f"{args.size} batch {args.batch} {phase}, device ms per step (calls)",
                 f"{'total':70s} " + "  ".join(f"{n}: {sum(v[0] for v in t.values()):8.3f}" for n, t in tables.items())]
        for key in names[:args.top]:
            cells = "  ".join(f"{n}: {tables[n].get(key, (0, 0))[0]:8.3f} ({tables[n].get(key, (0, 0))[1]:4d})"
                              for n in tables)
            lines.append(f"{key[:70]:70s} {cells}")
        text = "\n".join(lines)
        print(text)
        with open(os.path.join(args.out, f"profile_{phase}.txt"), "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
