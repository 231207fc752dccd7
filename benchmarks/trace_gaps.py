"""Where a GPU sits idle inside profiled steps, and which host op it was waiting for.

    python3 benchmarks/trace_gaps.py TRACE.json[.gz] [--steps N] [--top 15]

Reads a torch.profiler Chrome trace: the kernels' busy time against the span they cover, and each
idle gap charged to the host op that launched the kernel ending it (the innermost op enclosing the
launch, and the outermost: a compiled graph, the backward pass, the optimizer). A step whose idle
time sits behind launches is bound by the host, not by the GPU.
"""
from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict

DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")


def load(path: str) -> list[dict]:
    with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
        return json.load(f)["traceEvents"]


def idle_report(events: list[dict], steps: int = 1, min_gap_us: float = 5.0, top: int = 15) -> dict:
    """Per step: kernel span, busy and idle ms; the idle ms behind each launching host op."""
    device = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS), key=lambda e: e["ts"])
    if not device:
        return {"span_ms": 0.0, "busy_ms": 0.0, "idle_ms": 0.0, "idle_by_op": []}
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    busy, gaps, end = 0.0, [], device[0]["ts"]
    for kernel in device:
        if kernel["ts"] - end > min_gap_us:
            gaps.append((launches.get(kernel["args"].get("correlation")), kernel["ts"] - end))
        busy += max(0.0, kernel["ts"] + kernel["dur"] - max(end, kernel["ts"]))
        end = max(end, kernel["ts"] + kernel["dur"])
    span = end - device[0]["ts"]
    owners = _enclosing_ops(events, [launch for launch, _ in gaps if launch])
    idle_by_op = defaultdict(lambda: [0.0, 0])
    for launch, gap in gaps:
        owner = idle_by_op[owners[id(launch)] if launch else "(no launch record)"]
        owner[0] += gap
        owner[1] += 1
    ranked = sorted(idle_by_op.items(), key=lambda kv: -kv[1][0])[:top]
    return {"span_ms": span / 1e3 / steps, "busy_ms": busy / 1e3 / steps, "idle_ms": (span - busy) / 1e3 / steps,
            "idle_by_op": [(op, ms / 1e3 / steps, count / steps) for op, (ms, count) in ranked]}


def _enclosing_ops(events: list[dict], launches: list[dict]) -> dict[int, str]:
    """{id(launch): 'outermost > innermost'} host ops enclosing each launch on its thread; one sweep
    in time order (ops of a thread nest, so a stack per thread holds the open ones)."""
    ops = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation")]
    timeline = sorted([(e["ts"], 0, i, e) for i, e in enumerate(ops)] +
                      [(e["ts"], 1, i, e) for i, e in enumerate(launches)], key=lambda t: t[:3])
    stacks: dict = defaultdict(list)
    owners = {}
    for ts, is_launch, _, event in timeline:
        stack = stacks[event["tid"]]
        while stack and stack[-1]["ts"] + stack[-1]["dur"] < ts:
            stack.pop()
        if not is_launch:
            stack.append(event)
        elif not stack:
            owners[id(event)] = "(outside any op)"
        else:
            outer, inner = stack[0]["name"][:60], stack[-1]["name"][:60]
            owners[id(event)] = outer if outer == inner else f"{outer} > {inner}"
    return owners


def format_report(label: str, report: dict) -> str:
    lines = [f"{label}: span {report['span_ms']:.2f} ms, kernels busy {report['busy_ms']:.2f}, "
             f"idle {report['idle_ms']:.2f} ms per step"]
    lines += [f"  {ms:7.3f} ms {count:5.1f} gaps  {op}" for op, ms, count in report["idle_by_op"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(format_report(args.trace, idle_report(load(args.trace), args.steps, top=args.top)))


if __name__ == "__main__":
    main()
