"""Backbone speed: our Swin-T against torchvision's swin_t, and SPT-T against our Swin-T.

    PYTHONPATH=. python3 benchmarks/bench_backbone.py --out DIR [--budget 330] [--quick]
        [--parts eager,sweep,compiled-inference,compiled-train,interleaved-{eager,compiled}-{inference,train}]
        [--sizes 224,1280] [--labels REGEX] [--repeat N] [--rounds N] [--trace] [--compile-mode MODE]

Measures bf16-autocast inference and a training step (forward, backward, AdamW step) in img/s,
eager and under ``torch.compile``, at 224x224 batch 256 and 1280x800 batch 8; peak training memory;
SPT-T with ground-truth-like masks (one box per image, aligned to 32 px) that keep a given share of
the stage 3-4 tokens (the "gt" selector), against the FLOPs ratio from ``spa_model.count_flops``
(the ideal speed-up); a sweep of the selection ratio (plot ``spt_speedup.png``). The
``interleaved-*`` parts build all models of one mode first and time them in turn for ``--rounds``
rounds, for ratios that machine drift cannot skew; they add SPT-T with every selection empty, the
speed no selection can beat; ``--trace`` then profiles each model's step into a Chrome trace and
charges the GPU's idle time to the host ops it waited on. Writes
``bench_backbone.json`` after every measurement (machine, date, versions, numbers), so a run cut
short keeps what it measured; work that does not fit ``--budget`` seconds is recorded as skipped.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from datetime import datetime, timezone

import torch
import torch.nn.functional as F
import torchvision

import spa_model

COMPILE_COST_S = 45  # compile time (H200, 16 cores: 23-35 s inference, ~60 s training), to decide what still fits


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.start = time.perf_counter()
        self.results: list[dict] = []
        self.meta = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name() if self.device.type == "cuda" else platform.processor(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": sys.version.split()[0], "dtype": "bfloat16 autocast", "quick": args.quick,
            "compile_mode": args.compile_mode,
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def fits(self, cost_s: float) -> bool:
        return self.elapsed() + cost_s <= self.args.budget

    def record(self, **row) -> dict:
        self.results.append(row)
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}
        print(json.dumps(shown), file=sys.stderr, flush=True)
        self.save()
        return row

    def save(self) -> None:
        os.makedirs(self.args.out, exist_ok=True)
        path = os.path.join(self.args.out, "bench_backbone.json")
        with open(path + ".tmp", "w") as f:
            json.dump({"meta": self.meta, "results": self.results}, f, indent=1)
        os.replace(path + ".tmp", path)

    def timed(self, fn, warmup: int, iters: int) -> float:
        """Median milliseconds per call (CUDA events on the GPU)."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            if self.device.type == "cuda":
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                fn()
                end.record()
                end.synchronize()
                times.append(begin.elapsed_time(end))
            else:
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)


def box_labels(batch: int, height: int, width: int, ratio: float, seed: int, device) -> dict[int, torch.Tensor]:
    """One box per image covering ``ratio`` of the image, at a random 32-px-aligned place;
    labels per stride by max-pooling the pixel mask (as the loader's coverage > 0 rule)."""
    mask = torch.zeros(batch, 1, height, width)
    generator = torch.Generator().manual_seed(seed)
    box_h = min(height, max(32, round(math.sqrt(ratio) * height / 32) * 32))
    box_w = min(width, max(32, round(ratio * height * width / box_h / 32) * 32))
    for i in range(batch if ratio > 0 else 0):  # ratio 0: no box, every selection empty (setup, not timed)
        top = 32 * int(torch.randint(0, (height - box_h) // 32 + 1, (1,), generator=generator))
        left = 32 * int(torch.randint(0, (width - box_w) // 32 + 1, (1,), generator=generator))
        mask[i, 0, top:top + box_h, left:left + box_w] = 1
    return {s: F.max_pool2d(mask, s, ceil_mode=True)[:, 0].to(device) for s in (8, 16, 32)}


SMALL = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))  # --quick


def make_model(name: str, device, quick: bool = False, **overrides):
    with torch.device(device):  # initialise on the device (fast)
        if name == "torchvision_swin_t":
            if quick:
                from torchvision.models.swin_transformer import SwinTransformer
                return SwinTransformer([4, 4], 16, [2, 2, 2, 2], [1, 2, 4, 8], [7, 7])
            return torchvision.models.swin_t(weights=None)
        return spa_model.create_model(name, num_classes=1000, **(SMALL if quick else {}), **overrides)


def make_compute(model):
    """images, labels -> (loss, selection ratios or None); what gets compiled (forward and loss)."""
    if not isinstance(model, spa_model.SwinTransformer):
        return lambda images, labels: (model(images).float().logsumexp(-1).mean(), None)

    def compute(images, labels):
        out = model.forward_features(images, labels)
        loss = model.forward_head(out).float().logsumexp(-1).mean()
        if out.scores:
            loss = loss + 0.01 * spa_model.selection_loss(out.scores, labels)
        return loss, out.select_ratios
    return compute


def inference_fn(model, compute, images, labels):
    model.eval()

    def run():
        with torch.no_grad(), torch.autocast(images.device.type, dtype=torch.bfloat16):
            return compute(images, labels)
    return run


def train_fn(model, compute, images, labels):
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=images.device.type == "cuda")

    def step():
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            loss, _ = compute(images, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def build_step(bench: Bench, *, name: str, size, batch: int, phase: str, compiled: bool,
               labels_ratio: float | None, overrides: dict):
    """(step function, model, images, labels) for one configuration."""
    height, width = size
    device = bench.device
    torch.manual_seed(0)
    images = torch.randn(batch, 3, height, width, device=device)
    labels = box_labels(batch, height, width, labels_ratio, 0, device) if labels_ratio is not None else None
    model = make_model(name, device, bench.args.quick, **overrides)
    compute = make_compute(model)
    if compiled:  # static shapes: several models may share make_compute's code object
        compute = torch.compile(compute, fullgraph=isinstance(model, spa_model.SwinTransformer), dynamic=False,
                                mode=bench.args.compile_mode)
    return (inference_fn if phase == "inference" else train_fn)(model, compute, images, labels), model, images, labels


def measure(bench: Bench, *, label: str, name: str, size, batch: int, phase: str, compiled: bool,
            labels_ratio: float | None = None, **overrides):
    height, width = size
    cost = (COMPILE_COST_S if compiled else 5) * (1.5 if phase == "train" else 1)
    row = dict(label=label, model=name, size=f"{width}x{height}", batch=batch, phase=phase, compiled=compiled,
               overrides={k: v for k, v in overrides.items()}, keep=labels_ratio)
    if not re.search(bench.args.labels, label):
        return None
    if not bench.fits(cost):
        bench.record(**row, skipped="budget")
        return None
    device = bench.device
    try:
        fn, model, images, labels = build_step(bench, name=name, size=size, batch=batch, phase=phase,
                                               compiled=compiled, labels_ratio=labels_ratio, overrides=overrides)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        fn()
        first_s = time.perf_counter() - t0
        ms = bench.timed(fn, bench.args.warmup, bench.args.iters)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None
        bench.record(**row, ms=ms, img_s=batch * 1e3 / ms, peak_gib=peak, first_call_s=first_s,
                     **selection_stats(model, images, labels))
        return bench.results[-1]
    except Exception as error:  # one failing configuration must not end the benchmark
        bench.record(**row, error=one_line(error))
        return None
    finally:
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def one_line(error: Exception) -> str:
    """An error as one short line for a result row."""
    first = (str(error).splitlines() or [""])[0][:300]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def selection_stats(model, images, labels) -> dict:
    """GMACs per image (our models), the mean selection ratio and the containers each SPA block used."""
    if not isinstance(model, spa_model.SwinTransformer):
        return {}
    training = model.training  # restored: a compiled training step would recompile in eval mode
    with torch.no_grad(), torch.autocast(images.device.type, dtype=torch.bfloat16):
        model.eval()
        out = model.forward_features(images, labels)
    model.train(training)
    stats = {"gmacs_per_image": spa_model.count_flops(model, out).total / 1e9}
    if out.select_ratios:
        stats["select_ratio"] = float(torch.stack(out.select_ratios).mean())
        stats["containers"] = [int(c) for c in out.containers]
    return stats


def host_ms(fn, device, iters: int = 5) -> float:
    """Median host milliseconds to issue one call from an idle device: near the device time, the
    step is bound by launches on the host rather than by GPU work."""
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return statistics.median(times)


def interleaved(bench: Bench, variants: dict[str, dict], *, size, batch: int, phase: str, compiled: bool,
                rounds: int) -> None:
    """Img/s of several configurations timed in turn, ``rounds`` times (median, min, max over rounds), so
    drifts of the machine hit all of them alike and the ratios are trustworthy. All models stay built."""
    height, width = size
    steps, rows = {}, {}
    for label, spec in variants.items():
        spec = dict(spec)
        name, labels_ratio = spec.pop("name"), spec.pop("labels_ratio", None)
        row = dict(label=label, model=name, size=f"{width}x{height}", batch=batch, phase=phase, compiled=compiled,
                   interleaved=True, overrides=spec, keep=labels_ratio)
        try:
            fn, model, images, labels = build_step(bench, name=name, size=size, batch=batch, phase=phase,
                                                   compiled=compiled, labels_ratio=labels_ratio, overrides=spec)
            t0 = time.perf_counter()
            fn()
            rows[label] = bench.record(**row, first_call_s=time.perf_counter() - t0,
                                       **selection_stats(model, images, labels))
            steps[label] = fn
        except Exception as error:
            bench.record(**row, error=one_line(error))
    samples: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(rounds):
        for label, fn in steps.items():
            samples[label].append(bench.timed(fn, bench.args.warmup, bench.args.iters))
        for label, times in samples.items():  # saved every round: a run cut short keeps what it timed
            rows[label].update(rounds=len(times), ms=statistics.median(times),
                               img_s=batch * 1e3 / statistics.median(times),
                               img_s_min=batch * 1e3 / max(times), img_s_max=batch * 1e3 / min(times))
        bench.save()
    for label, fn in steps.items():
        rows[label]["host_ms"] = host_ms(fn, bench.device)
        if bench.args.trace:
            path = os.path.join(bench.args.out, f"trace_{label}_{width}x{height}.json.gz")
            rows[label].update(trace_idle(fn, path, label))
    bench.save()


def trace_idle(fn, path: str, label: str, steps: int = 2) -> dict:
    """Profiles ``steps`` steps into a Chrome trace at ``path``; the GPU's busy and idle ms per step and
    the host ops its idle time waited on (benchmarks/trace_gaps.py)."""
    from torch.profiler import ProfilerActivity, profile
    from trace_gaps import format_report, idle_report, load

    with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * torch.cuda.is_available()) as prof:
        for _ in range(steps):
            fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    prof.export_chrome_trace(path)
    report = idle_report(load(path), steps, top=8)
    print(format_report(label, report), file=sys.stderr, flush=True)
    return {f"trace_{k}": v for k, v in report.items()}


def static_capacity(size, batch: int, keep: float, window: int = 7) -> float:
    """The smallest token budget (``capacity``) that holds the gt selection of this batch: the largest
    share of an image's window-major tokens kept at stride 16 or 32."""
    height, width = size
    labels = box_labels(batch, height, width, keep, 0, "cpu")
    shares = []
    for stride in (16, 32):
        grid_h, grid_w = -(-height // stride), -(-width // stride)
        padded = -(-grid_h // window) * window * -(-grid_w // window) * window
        shares.append(float(labels[stride].flatten(1).sum(1).max()) / padded)
    return max(shares) + 1e-6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--budget", type=float, default=330.0, help="seconds; later work is skipped")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes (CPU smoke test)")
    parser.add_argument("--compile-quick", action="store_true", help="with --quick: compiled runs too")
    parser.add_argument("--parts", default="eager,sweep,compiled-inference,compiled-train",
                        help="comma-separated: eager, sweep, compiled-inference, compiled-train, "
                             "interleaved-{eager,compiled}-{inference,train}")
    parser.add_argument("--repeat", type=int, default=1, help="run the eager section this many times")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the interleaved-* parts")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode, e.g. reduce-overhead (CUDA graphs: no host launch cost)")
    parser.add_argument("--trace", action="store_true",
                        help="interleaved-*: after the rounds, trace each model's steps (GPU idle time by host op)")
    parser.add_argument("--labels", default="", help="regex: measure only the rows whose label matches")
    parser.add_argument("--sizes", default="224,1280", help="comma-separated: 224 (batch 256), 1280 (1280x800, batch 8)")
    args = parser.parse_args()
    bench = Bench(args)
    parts = set(args.parts.split(","))
    sizes = [((224, 224), 256), ((800, 1280), 8)] if not args.quick else [((64, 64), 2), ((96, 160), 1)]
    sizes = [s for s, name in zip(sizes, ("224", "1280")) if name in args.sizes.split(",")]
    if args.quick and not args.compile_quick:
        parts = {p for p in parts if "compiled" not in p}
    keep = 0.25
    for size, batch in sizes:
        bench.meta[f"static_capacity_{size[1]}x{size[0]}"] = static_capacity(size, batch, keep)

    # 1. eager: ours vs torchvision; SPT-T (25% of stage 3-4 tokens) vs Swin-T; paper's packing; no RPB.
    #    --repeat N runs the whole section N times, so each figure's spread shows next to it.
    for size, batch in [sb for _ in range(args.repeat) for sb in sizes] if "eager" in parts else []:
        capacity = bench.meta[f"static_capacity_{size[1]}x{size[0]}"]
        for phase in ("inference", "train"):
            common = dict(size=size, batch=batch, phase=phase, compiled=False)
            measure(bench, label="torchvision", name="torchvision_swin_t", **common)
            measure(bench, label="swin_t", name="swin_tiny", **common)
            measure(bench, label="spt_t_gt25", name="spt_tiny", labels_ratio=keep, selector="gt", **common)
            measure(bench, label="spt_t_gt25_static", name="spt_tiny", labels_ratio=keep, selector="gt",
                    capacity=capacity, **common)
            measure(bench, label="spt_t_gt25_static_paper_packing", name="spt_tiny", labels_ratio=keep,
                    selector="gt", capacity=capacity, per_image_containers=False, **common)
        measure(bench, label="spt_t_gt25_static_no_rpb", name="spt_tiny", relative_position=False, size=size,
                batch=batch, phase="inference", compiled=False, labels_ratio=keep, selector="gt", capacity=capacity)

    # 2. speed-up against the selection ratio (eager inference, detection size, static capacity).
    if "sweep" in parts:
        size, batch = sizes[-1]
        common = dict(size=size, batch=batch, phase="inference", compiled=False)
        measure(bench, label="swin_t_sweep_base", name="swin_tiny", **common)
        for ratio in (0.1, 0.25, 0.5, 0.75, 1.0):
            measure(bench, label="sweep", name="spt_tiny", labels_ratio=ratio, selector="gt",
                    capacity=min(1.0, static_capacity(size, batch, ratio)), **common)
        plot(bench)

    # 3. compiled (fullgraph for ours: a graph break fails the row).
    for phase in ("inference", "train"):
        if f"compiled-{phase}" not in parts:
            continue
        for size, batch in sizes:
            common = dict(size=size, batch=batch, phase=phase, compiled=True)
            measure(bench, label="swin_t", name="swin_tiny", **common)
            spt = dict(name="spt_tiny", labels_ratio=keep, selector="gt",
                       capacity=bench.meta[f"static_capacity_{size[1]}x{size[0]}"])
            measure(bench, label="spt_t_gt25_static", **spt, **common)
            measure(bench, label="spt_t_gt25_static_paper_packing", per_image_containers=False, **spt, **common)
            measure(bench, label="torchvision", name="torchvision_swin_t", **common)
    # 4. the headline ratios, timed in turn (--rounds); spt_t_gt0 (every selection empty) is the bound
    #    no selection can beat: SPT with its stage 3-4 attention all but gone.
    for part in sorted(p for p in parts if p.startswith("interleaved-")):
        mode, phase = part.split("-")[1:]
        for size, batch in sizes:
            capacity = bench.meta[f"static_capacity_{size[1]}x{size[0]}"]
            spt = dict(name="spt_tiny", labels_ratio=keep, selector="gt", capacity=capacity)
            variants = {"torchvision": dict(name="torchvision_swin_t"), "swin_t": dict(name="swin_tiny"),
                        "spt_t_gt25_static": spt,
                        "spt_t_gt25_static_paper_packing": dict(spt, per_image_containers=False),
                        "spt_t_gt0_static": dict(spt, labels_ratio=0.0, capacity=0.0)}
            variants = {k: v for k, v in variants.items() if re.search(args.labels, k)}
            interleaved(bench, variants, size=size, batch=batch, phase=phase, compiled=mode == "compiled",
                        rounds=args.rounds)
            torch._dynamo.reset()
    summarize(bench)


def plot(bench: Bench) -> None:
    rows = [r for r in bench.results if r["label"] == "sweep" and "img_s" in r]
    base = [r for r in bench.results if r["label"] == "swin_t_sweep_base" and "img_s" in r]
    if not rows or not base:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [r["select_ratio"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ratios, [r["img_s"] / base[0]["img_s"] for r in rows], "o-", label="measured (eager, bf16)")
    ax.plot(ratios, [base[0]["gmacs_per_image"] / r["gmacs_per_image"] for r in rows], "s--", label="FLOPs ratio (ideal)")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xlabel("tokens selected in stages 3-4")
    ax.set_ylabel("SPT-T speed-up over Swin-T")
    ax.set_title(f"{rows[0]['size']} batch {rows[0]['batch']}, {bench.meta['device']}", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(bench.args.out, "spt_speedup.png"), dpi=120)


def summarize(bench: Bench) -> None:
    print(f"\n{bench.meta['device']}  torch {bench.meta['torch']}  {bench.meta['date']}")
    print(f"{'label':32s} {'size':9s} {'batch':>5s} {'phase':9s} {'mode':8s} {'img/s':>9s} {'peak GiB':>8s} "
          f"{'GMACs':>6s} {'sel':>5s}")
    for r in bench.results:
        mode = "compiled" if r["compiled"] else "eager"
        if "img_s" not in r:
            print(f"{r['label']:32s} {r['size']:9s} {r['batch']:5d} {r['phase']:9s} {mode:8s} "
                  f"{r.get('skipped') or r.get('error')}")
            continue
        peak = f"{r['peak_gib']:.2f}" if r.get("peak_gib") else "-"
        gmacs = f"{r['gmacs_per_image']:.2f}" if "gmacs_per_image" in r else "-"
        sel = f"{r['select_ratio']:.2f}" if "select_ratio" in r else "-"
        spread = (f"  [{r['img_s_min']:.1f}, {r['img_s_max']:.1f}] over {r['rounds']} rounds, host "
                  f"{r.get('host_ms', float('nan')):.1f} of {r['ms']:.1f} ms" if r.get("interleaved") else "")
        print(f"{r['label']:32s} {r['size']:9s} {r['batch']:5d} {r['phase']:9s} {mode:8s} {r['img_s']:9.1f} "
              f"{peak:>8s} {gmacs:>6s} {sel:>5s}{spread}")
    repeated: dict[tuple, list[float]] = {}
    for r in bench.results:
        if "img_s" in r:
            repeated.setdefault((r["label"], r["size"], r["phase"], r["compiled"]), []).append(r["img_s"])
    if any(len(v) > 1 for v in repeated.values()):
        print(f"\n{'label':32s} {'size':9s} {'phase':9s} {'median':>9s} {'min':>9s} {'max':>9s} runs")
        for (label, size, phase, _), values in repeated.items():
            if len(values) > 1:
                print(f"{label:32s} {size:9s} {phase:9s} {statistics.median(values):9.1f} {min(values):9.1f} "
                      f"{max(values):9.1f} {len(values)}")
    print(f"total {bench.elapsed():.0f} s")


if __name__ == "__main__":
    main()
