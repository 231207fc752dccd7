"""Worker process pools that leave signals to their parent and never outlive it.

Ctrl-C in a terminal and a scheduler's SIGTERM reach every process of the group; pool
workers ignore SIGINT (the parent stops the pool: ``Pool.__exit__`` terminates it), end
quietly on SIGTERM, and die with their parent even when it is killed with SIGKILL (Linux
``PR_SET_PDEATHSIG``), so no orphan keeps computing after ``spa-data`` is gone.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
from typing import Any, Callable, Optional

_PR_SET_PDEATHSIG = 1


def pool_start_method() -> str:
    """``fork`` on Linux (items shared copy-on-write), ``spawn`` elsewhere."""
    return "fork" if sys.platform == "linux" else "spawn"


def process_pool(workers: int, initializer: Optional[Callable] = None, initargs: tuple = (),
                 method: Optional[str] = None) -> multiprocessing.pool.Pool:
    """A ``multiprocessing`` pool whose workers ignore SIGINT and die with the parent."""
    context = multiprocessing.get_context(method or pool_start_method())
    return context.Pool(workers, initializer=_init_worker, initargs=(os.getpid(), initializer, initargs))


def _init_worker(parent: int, initializer: Optional[Callable], initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)   # the parent's handler (spa_cli.common) is not for workers
    die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent ``parent`` exits (no-op elsewhere)."""
    if sys.platform != "linux":
        return
    libc: Any = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:   # the parent died before prctl took effect
        os._exit(1)
