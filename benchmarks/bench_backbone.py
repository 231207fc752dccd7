"""Backbone and detector speed on selections that look like use, every model of a group timed in turn.

    PYTHONPATH=. python3 benchmarks/bench_backbone.py --out DIR --shape 1280x800:8 \
        [--phases inference,train] [--modes eager,compiled,cudagraphs,graphs] [--models tiny,small]
        [--sweep] [--maskrcnn] [--rounds 5] [--iters 10] [--budget 540] [--warm 4] [--quick]

Selections come from scattered objects (``spa_train.bench.scattered_objects``: rectangles and
ellipses of varied size at unaligned positions, about 25% of the stride-16 cells per image, +-20%),
their labels by the loader's rule, with the gate evaluated: ``gt`` selects the labels, ``topk``
the gate's top 25%. SPT runs its *default* capacity (a learned static budget, settled first on other
batches as training leaves it) beside a hand-*tuned* fixed budget (the smallest that holds the
selection), in eager modes the same default without the fused row kernels (``fuse_rows=False``)
and, eager, the ``exact`` capacity. Modes: ``eager``; ``compiled`` (torch.compile);
``cudagraphs`` (torch.compile with mode reduce-overhead); ``graphs`` (inference through CUDA graphs
without compiling: ``spa_model.cuda_graphs`` for our models, the same capture by hand for
torchvision's). Inference is the backbone's features (the paper's FPS); a training step is forward,
a classification loss (plus 0.01 x the selection loss), backward and AdamW. ``--maskrcnn`` times the
whole torchvision Mask R-CNN on the backbones (eager; targets from the same objects); ``--sweep``
the selection share 10/25/50%. For each group every model is built (and compiled) first, then timed
in turn for ``--rounds`` rounds (median, min, max), so drifts of the machine hit all alike; compiled
groups are first compiled once per variant in parallel processes (``--warm``), which fills
Inductor's caches for the timed process. Writes
``bench_backbone.json`` after every round (machine, date, versions, numbers); work beyond
``--budget`` seconds is recorded as skipped.
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import torch
import torchvision

import spa_model
from spa_common.io import atomic_write
from spa_train.bench import labels_from_masks, scattered_objects, selection_summary, settle_budgets

SMALL = dict(embed_dim=16, depths=(1, 1, 6, 1), num_heads=(1, 2, 4, 8))  # --quick (STViT-R needs 6 blocks in stage 3)
STRIDES = tuple(2 ** k for k in range(2, 7))  # every label stride a model may read (each reads its contract().label_strides)


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.start = time.perf_counter()
        self.results: list[dict] = []
        self.meta = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name() if self.device.type == "cuda" else platform.processor(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "python": sys.version.split()[0],
            "dtype": "bfloat16 autocast", "quick": args.quick, "argv": sys.argv[1:],
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def record(self, **row) -> dict:
        self.results.append(row)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}),
              file=sys.stderr, flush=True)
        self.save()
        return row

    def save(self) -> None:
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / self.args.name,
                     json.dumps({"meta": self.meta, "results": self.results}, indent=1).encode())

    def timed(self, fn) -> float:
        """Median milliseconds per call after warm-up (CUDA events on the GPU)."""
        for _ in range(self.args.warmup):
            fn()
        times = []
        for _ in range(self.args.iters):
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


# --- inputs ------------------------------------------------------------------------------------

class Inputs:
    """Images, scattered objects, their labels and detection targets for one shape and share."""

    def __init__(self, batch: int, height: int, width: int, share: float, device, seed: int = 0):
        generator = torch.Generator(device="cpu").manual_seed(seed)
        self.images = torch.randn(batch, 3, height, width, generator=generator).to(device)
        self.objects = scattered_objects(batch, height, width, share=share, seed=seed, device=device)
        self.labels = labels_from_masks(self.objects, height, width, STRIDES)
        self.targets = [{"boxes": o["boxes"], "labels": torch.randint(1, 81, (len(o["boxes"]),), device=device),
                         "masks": o["masks"].to(torch.uint8)} for o in self.objects]

    def tuned_capacity(self) -> float:
        """The smallest fixed budget holding every image's selection at strides 16 and 32."""
        return max(float(self.labels[s].flatten(1).mean(1).max()) for s in (16, 32)) + 1e-6


# --- models ------------------------------------------------------------------------------------

def variants(models: str, phase: str, mode: str, share: float) -> dict[str, dict]:
    """label -> spec (name, create_model overrides, "settle": learned budget, "tuned": fixed budget)."""
    topk = dict(selector="topk", keep_ratio=share)
    tiny = {"torchvision": dict(name="torchvision_swin_t"), "swin_t": dict(name="swin_tiny"),
            "spt_t_gt": dict(name="spt_tiny", selector="gt", settle=True),
            "spt_t_gt_tuned": dict(name="spt_tiny", selector="gt", tuned=True),
            "spt_t_topk": dict(name="spt_tiny", settle=True, **topk)}
    if mode in ("eager", "graphs"):  # the row kernels run in eager mode only; under compile Inductor fuses
        tiny["spt_t_gt_unfused"] = dict(name="spt_tiny", selector="gt", settle=True, fuse_rows=False)
    if mode == "eager":
        tiny["spt_t_gt_exact"] = dict(name="spt_tiny", selector="gt", capacity="exact")
    small = {"swin_s": dict(name="swin_small"), "spt_s_gt": dict(name="spt_small", selector="gt", settle=True),
             "spt_s_topk": dict(name="spt_small", settle=True, **topk)}
    for size, table in (("tiny", tiny), ("small", small)):
        stvit = f"stvit_r_{size}"
        if stvit in spa_model.list_models():
            table[f"stvit_r_{size[0]}"] = dict(name=stvit)
    return {**(tiny if "tiny" in models else {}), **(small if "small" in models else {})}


def build(spec: dict, inputs: Inputs, device, quick: bool, settle_inputs: list[Inputs]):
    spec = dict(spec)
    name, settle, tuned = spec.pop("name"), spec.pop("settle", False), spec.pop("tuned", False)
    if tuned:
        spec["capacity"] = inputs.tuned_capacity()
    with torch.device(device):
        if name == "torchvision_swin_t":
            if quick:
                from torchvision.models.swin_transformer import SwinTransformer
                return SwinTransformer([4, 4], 16, [2, 2, 2, 2], [1, 2, 4, 8], [7, 7])
            return torchvision.models.swin_t(weights=None)
        model = spa_model.create_model(name, num_classes=1000, **(SMALL if quick else {}), **spec)
    if settle:
        settle_budgets(model, [(i.images, i.labels) for i in settle_inputs], amp=device.type == "cuda")
    return model


def is_ours(model) -> bool:
    return hasattr(model, "forward_features")


def features_fn(model, inputs: Inputs):
    if is_ours(model):
        return lambda: model.forward_features(inputs.images, inputs.labels).features
    return lambda: model.norm(model.features(inputs.images))


def loss_fn(model, inputs: Inputs):
    def compute():
        if not is_ours(model):
            return model(inputs.images).float().logsumexp(-1).mean()
        out = model.forward_features(inputs.images, inputs.labels)
        loss = model.forward_head(out).float().logsumexp(-1).mean()
        return loss + 0.01 * spa_model.selection_loss(out.scores, inputs.labels) if out.scores else loss
    return compute


def step_fn(model, inputs: Inputs, *, phase: str, mode: str, device):
    """The callable timed: one inference (backbone features) or one training step."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    if phase == "inference":
        model.eval()
        forward = features_fn(model, inputs)
        if mode in ("compiled", "cudagraphs"):
            forward = torch.compile(forward, dynamic=False, mode="reduce-overhead" if mode == "cudagraphs" else None)
        elif mode == "graphs":
            forward = graphed(model, inputs, forward, autocast)

        def run():
            with torch.no_grad(), autocast:
                return forward()
        return run
    model.train()
    compute = loss_fn(model, inputs)
    if mode in ("compiled", "cudagraphs"):
        compute = torch.compile(compute, dynamic=False, mode="reduce-overhead" if mode == "cudagraphs" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step():
        with autocast:
            loss = compute()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def graphed(model, inputs: Inputs, forward, autocast):
    """Our models through spa_model.cuda_graphs' capture; torchvision's captured the same way by hand."""
    if is_ours(model):
        graph = spa_model.GraphedFeatures(model, capture_after=1)
        return lambda: graph(inputs.images, inputs.labels).features
    with torch.no_grad(), autocast:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                forward()
        torch.cuda.current_stream().wait_stream(side)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False), torch.cuda.graph(cuda_graph):
            out = forward()

    def replay():
        cuda_graph.replay()
        return out
    replay.keep_alive = model  # the graph reads the model's weights at the addresses it captured
    return replay


def detector_step(model, inputs: Inputs, *, phase: str, device):
    """torchvision Mask R-CNN (FPN, 80 classes) on the backbone: inference or a training step."""
    from spa_train.detection import build_detector

    detector = build_detector(model, num_classes=80, masks=True).to(device)
    adapter = detector.backbone.body
    adapter.select_labels = inputs.labels
    images = list(inputs.images)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    if phase == "inference":
        detector.eval()

        def run():
            with torch.no_grad(), autocast:
                return detector(images)
        return run, detector
    detector.train()
    optimizer = torch.optim.AdamW(detector.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step():
        with autocast:
            loss = sum(detector(images, inputs.targets).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step, detector


def selection_stats(model, inputs: Inputs) -> dict:
    """GMACs per image, select ratio and the share of selected tokens the budget dropped (eval mode)."""
    if not is_ours(model):
        return {}
    training = model.training
    model.eval()
    with torch.no_grad(), torch.autocast(inputs.images.device.type, dtype=torch.bfloat16,
                                         enabled=inputs.images.is_cuda):
        out = model.forward_features(inputs.images, inputs.labels)
    model.train(training)
    stats = selection_summary(model, out)
    if out.blocks:
        stats["budgets"] = [round(b.value, 4) for b in spa_model.budget.token_budgets(model)]
    return stats


def host_ms(fn, device, iters: int = 5) -> float:
    """Median host milliseconds to issue one call from an idle device."""
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


def one_line(error: Exception) -> str:
    first = (str(error).splitlines() or [""])[0][:300]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


# --- one group, timed in turn ------------------------------------------------------------------

def warm_compiles(bench: Bench, labels: list[str], *, shape, phase: str, mode: str, share: float) -> None:
    """Compile each variant once in its own process, ``--warm`` processes at a time, before a group
    is timed: the timed process then finds Inductor's on-disk caches filled, and its compiles take a
    fraction of a cold one (27 s against about 160 s for two models on an H200, benchmarks/README.md).
    Nothing of these runs is kept."""
    (width, height), batch = shape
    with tempfile.TemporaryDirectory() as scratch:
        commands = [[sys.executable, __file__, "--out", scratch, "--name", f"{label}.json",
                     "--shape", f"{width}x{height}:{batch}", "--modes", mode, "--phases", phase,
                     "--models", bench.args.models, "--labels", f"^{re.escape(label)}$", "--share", str(share),
                     "--rounds", "1", "--warmup", "1", "--iters", "1", "--warm", "0", *["--quick"] * bench.args.quick]
                    for label in labels]
        with ThreadPoolExecutor(bench.args.warm) as pool:
            list(pool.map(functools.partial(subprocess.run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                          commands))


def group(bench: Bench, specs: dict[str, dict], *, shape, phase: str, mode: str, share: float,
          detector: bool = False) -> None:
    (width, height), batch = shape
    device = bench.device
    inputs = Inputs(batch, height, width, share, device)
    settle_inputs = [Inputs(batch, height, width, share, device, seed=s) for s in (1, 2, 3)]
    common = dict(shape=f"{width}x{height}", batch=batch, phase=phase, mode=mode, share=share,
                  detector="maskrcnn" if detector else None)
    if bench.elapsed() > bench.args.budget:
        for label in specs:
            bench.record(label=label, **common, skipped="budget")
        return
    if mode in ("compiled", "cudagraphs") and bench.args.warm and not detector:
        warm_compiles(bench, list(specs), shape=shape, phase=phase, mode=mode, share=share)
    steps, rows = {}, {}
    for label, spec in specs.items():
        row = dict(label=label, model=spec["name"], **common)
        try:
            torch.manual_seed(0)
            model = build(spec, inputs, device, bench.args.quick, settle_inputs)
            if detector:
                fn, _ = detector_step(model, inputs, phase=phase, device=device)
            else:
                fn = step_fn(model, inputs, phase=phase, mode=mode, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            fn()
            first_s = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None
            rows[label] = bench.record(**row, first_call_s=first_s, peak_gib=peak, **selection_stats(model, inputs))
            steps[label] = fn
        except Exception as error:  # one failing configuration must not end the benchmark
            bench.record(**row, error=one_line(error))
    samples: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(bench.args.rounds):
        for label, fn in steps.items():
            try:
                samples[label].append(bench.timed(fn))
            except Exception as error:
                rows[label]["error"] = one_line(error)
        for label, times in samples.items():
            if times:
                rows[label].update(rounds=len(times), ms=statistics.median(times),
                                   img_s=batch * 1e3 / statistics.median(times),
                                   img_s_min=batch * 1e3 / max(times), img_s_max=batch * 1e3 / min(times))
        bench.save()
    for label, fn in steps.items():
        rows[label]["host_ms"] = host_ms(fn, device)
    base = rows.get("swin_t") or rows.get("swin_s")
    for label, row in rows.items():
        reference = rows.get("swin_s") if "_s" in label and "swin_s" in rows else base
        if reference and "img_s" in row and "img_s" in reference:
            row["vs_swin"] = row["img_s"] / reference["img_s"]
    bench.save()
    steps.clear()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", default="bench_backbone.json", help="result file name under --out")
    parser.add_argument("--shape", default="1280x800:8", help="WxH:batch (224x224:256, 1280x800:1, ...)")
    parser.add_argument("--phases", default="inference,train")
    parser.add_argument("--modes", default="eager,compiled")
    parser.add_argument("--models", default="tiny", help="tiny, small or tiny,small")
    parser.add_argument("--labels", default="", help="regex: only the variants whose label matches")
    parser.add_argument("--share", type=float, default=0.25, help="share of stride-16 cells the objects cover")
    parser.add_argument("--sweep", action="store_true", help="also: shares 0.1/0.25/0.5, eager and graphs inference")
    parser.add_argument("--maskrcnn", action="store_true", help="also: the whole Mask R-CNN, eager")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--budget", type=float, default=540.0, help="seconds; later groups are skipped")
    parser.add_argument("--warm", type=int, default=4,
                        help="compiled modes: first compile each variant in its own process, this many at once (0: off)")
    parser.add_argument("--quick", action="store_true", help="tiny models (a CPU smoke test)")
    args = parser.parse_args()
    torch._dynamo.config.cache_size_limit = 64  # the variants of a group share code objects (one guard each)
    bench = Bench(args)
    size, batch = args.shape.split(":")
    shape = (tuple(int(v) for v in size.split("x")), int(batch))

    def chosen(specs):
        return {k: v for k, v in specs.items() if re.search(args.labels, k)}

    for mode in args.modes.split(","):
        for phase in args.phases.split(","):
            if mode == "graphs" and (phase != "inference" or bench.device.type != "cuda"):
                continue
            group(bench, chosen(variants(args.models, phase, mode, args.share)), shape=shape, phase=phase,
                  mode=mode, share=args.share)
    if args.maskrcnn:
        for phase in ("inference", "train"):
            specs = {k: v for k, v in variants("tiny", phase, "eager", args.share).items()
                     if k in ("swin_t", "spt_t_gt", "spt_t_topk", "stvit_r_t")}
            group(bench, chosen(specs), shape=shape, phase=phase, mode="eager", share=args.share, detector=True)
    if args.sweep:
        for share in (0.1, 0.25, 0.5):
            specs = {k: v for k, v in variants("tiny", "inference", "eager", share).items()
                     if k in ("swin_t", "spt_t_gt", "spt_t_gt_tuned")}
            for mode in ("eager", "graphs") if bench.device.type == "cuda" else ("eager",):
                group(bench, specs, shape=shape, phase="inference", mode=mode, share=share)
    summarize(bench)


def summarize(bench: Bench) -> None:
    print(f"\n{bench.meta['device']}  torch {bench.meta['torch']}  {bench.meta['date']}")
    print(f"{'label':16s} {'shape':10s} {'b':>3s} {'phase':9s} {'mode':10s} {'det':4s} {'share':>5s} {'img/s':>9s} "
          f"{'vs swin':>7s} {'spread':>17s} {'GiB':>6s} {'GMACs':>7s} {'sel':>5s} {'drop':>6s} {'host/ms':>13s}")
    for r in bench.results:
        head = (f"{r['label']:16s} {r['shape']:10s} {r['batch']:3d} {r['phase']:9s} {r['mode']:10s} "
                f"{'yes' if r.get('detector') else '':4s} {r['share']:5.2f}")
        if "img_s" not in r:
            print(f"{head} {r.get('skipped') or r.get('error') or 'no timing'}")
            continue
        spread = f"[{r['img_s_min']:.1f}, {r['img_s_max']:.1f}]"
        fmt = lambda key, spec: format(r[key], spec) if r.get(key) is not None else "-"  # noqa: E731
        print(f"{head} {r['img_s']:9.1f} {fmt('vs_swin', '7.3f')} {spread:>17s} {fmt('peak_gib', '6.2f')} "
              f"{fmt('gmacs_per_image', '7.2f')} {fmt('select_ratio', '5.2f')} {fmt('dropped_share', '6.4f')} "
              f"{r.get('host_ms', float('nan')):5.1f}/{r['ms']:6.1f}")
    print(f"total {bench.elapsed():.0f} s")


if __name__ == "__main__":
    main()
