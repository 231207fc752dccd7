"""Inference through CUDA graphs: ``forward_features`` captured once per input shape, then replayed.

At small batches a backbone's kernels are short and the GPU waits on the host launching them;
a replayed graph launches the whole forward at once. SPT needs static shapes for that: a static
token budget (``capacity="auto"``, the default, or a float), never ``"exact"``.

>>> with spa_model.cuda_graphs(model) as graphed:      # model in eval mode, on CUDA
...     out = model.forward_features(images)           # replays the graph of images.shape
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from .layers import TableCache

__all__ = ["GraphedFeatures", "cuda_graphs"]

_Key = tuple


class GraphedFeatures:
    """``model.forward_features`` through one CUDA graph per (shape, dtype, autocast) of the input.

    A shape is captured on its ``capture_after``-th call (earlier calls run eagerly), so inputs
    whose shape rarely repeats (detection batches of many aspect ratios) cost no captures. The
    returned ``FeatureOutput`` of a replay lives in the graph's static memory: the next call of the
    same shape overwrites it (consume it, or clone what you keep). Graphs share one memory pool;
    beyond ``max_graphs`` shapes the least recently used graph is dropped.
    """

    def __init__(self, model: nn.Module, *, max_graphs: int = 8, capture_after: int = 1, warmup: int = 2):
        if not model.contract().static_shapes:
            raise ValueError("CUDA graphs need static shapes: build the SPT with capacity 'auto' or a share, "
                             "not 'exact'")
        self.model = model
        self.forward = model.forward_features  # the bound method, before cuda_graphs() shadows it
        self.max_graphs = max_graphs
        self.capture_after = capture_after
        self.warmup = warmup
        self.calls: dict[_Key, int] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: OrderedDict[_Key, tuple] = OrderedDict()

    def __call__(self, images: Tensor, select_labels: Mapping[int, Tensor] | None = None):
        if self.model.training or torch.is_grad_enabled() and images.requires_grad:
            raise RuntimeError("GraphedFeatures is for inference: put the model in eval mode, no gradients")
        key = self._key(images, select_labels)
        entry = self.graphs.get(key)
        if entry is None:
            self.calls[key] = self.calls.get(key, 0) + 1
            if self.calls[key] < self.capture_after:
                return self.forward(images, select_labels)
            entry = self._capture(images, select_labels)
            self.graphs[key] = entry
            if len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        graph, static_images, static_labels, output, _ = entry
        static_images.copy_(images)
        for stride, labels in (select_labels or {}).items():
            static_labels[stride].copy_(labels)
        graph.replay()
        return output

    @staticmethod
    def _key(images: Tensor, select_labels: Mapping[int, Tensor] | None) -> _Key:
        labels = tuple(sorted((s, tuple(l.shape), l.dtype) for s, l in (select_labels or {}).items()))
        amp = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        return tuple(images.shape), images.dtype, images.device, amp, labels

    def _capture(self, images: Tensor, select_labels: Mapping[int, Tensor] | None) -> tuple:
        static_images = images.clone()
        static_labels = {s: l.clone() for s, l in (select_labels or {}).items()}
        labels = static_labels if select_labels is not None else None
        side = torch.cuda.Stream(images.device)
        side.wait_stream(torch.cuda.current_stream(images.device))
        with torch.no_grad(), torch.cuda.stream(side):  # builds the grids' tables and Triton's kernels
            for _ in range(self.warmup):
                self.forward(static_images, labels)
        torch.cuda.current_stream(images.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA work (the loader's helper decoding the next batches on
        # its own stream, its allocations) may go on during the capture; it is not part of the graph.
        with torch.no_grad(), _uncached_autocast(), torch.cuda.graph(graph, pool=self.pool,
                                                                      capture_error_mode="thread_local"):
            output = self.forward(static_images, labels)
        # The graph reads the shape tables (grids, index tables) at the addresses it captured: hold
        # them for as long as the graph lives, whatever the caches evict later.
        return graph, static_images, static_labels, output, TableCache.snapshot()


def _uncached_autocast() -> contextlib.AbstractContextManager:
    """Autocast's weight cache must not hold tensors across a capture (torch.cuda.graphs' advice)."""
    if not torch.is_autocast_enabled("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)


@contextlib.contextmanager
def cuda_graphs(model: nn.Module, **kwargs) -> Iterator[GraphedFeatures]:
    """Within the block ``model.forward_features`` replays CUDA graphs (see :class:`GraphedFeatures`);
    task models built on ``model`` (classifiers, the detector's backbone) use it unchanged."""
    graphed = GraphedFeatures(model, **kwargs)
    model.forward_features = graphed  # an instance attribute shadows the method
    try:
        yield graphed
    finally:
        del model.forward_features
