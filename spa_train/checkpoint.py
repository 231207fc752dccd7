"""Checkpoints: atomic writes, full training state, RNG capture for exact resume.

A checkpoint is a dict tagged ``format = "spa-train/1"`` holding the resolved config, the
model (unwrapped from DDP / torch.compile), optimizer and scheduler states, the position
(epoch, optimizer step, micro-batches consumed in the epoch), the best validation metric,
and every rank's RNG states (python, numpy, torch, CUDA). It is loaded with
``weights_only=True``: only tensors and plain containers, never pickled code.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spa_common.errors import SpaError
from spa_common.io import atomic_open

FORMAT = "spa-train/1"


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    A full disk ends in a SpaError that says so; the previous file stays and no temporary is left.
    """
    path = Path(path)
    with atomic_open(path, "wb", kept=f"the previous {path.name}, if any, is kept") as f:
        sink = _Sink(f)
        try:
            torch.save({"format": FORMAT, **state}, sink)
        except RuntimeError:
            if sink.error is not None:   # torch reports a failed write without its cause
                raise sink.error from None
            raise


class _Sink:
    """A file for ``torch.save`` that remembers the OSError (e.g. ENOSPC) of a failed write."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def load_checkpoint(path: str | Path) -> dict:
    """Read a spa-train checkpoint onto the CPU; SpaError when missing or foreign."""
    path = Path(path)
    if not path.is_file():
        raise SpaError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a non-checkpoint file
        raise SpaError(f"{path}: not a spa-train checkpoint (torch.load failed: {type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SpaError(f"{path}: not a spa-train checkpoint (no format tag {FORMAT!r})")
    return state


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP and torch.compile wrappers (whose state_dict keys are clean)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def rng_state() -> dict[str, Any]:
    """This process's RNG states, as tensors and plain values (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    return {
        "python": _to_plain(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(value):
    return [_to_plain(v) for v in value] if isinstance(value, (tuple, list)) else value
