"""Where metrics go: ``metrics.jsonl`` (every row), ``metrics.csv`` (epoch rows), TensorBoard if installed.

Rows are flat dicts with a ``kind`` ("step", "epoch" or "eval"). Only rank 0 writes; on other
ranks the writer is inert. ``metrics.jsonl`` is appended to (a resumed run continues it); the
CSV is rewritten whole after each epoch, because later epochs may add columns.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Optional

from spa_common.errors import SpaError
from spa_common.io import atomic_open, atomic_write


class MetricsWriter:
    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.epoch_rows: list[dict] = []
        self.tb = _tensorboard_writer(self.run_dir / "tb") if enabled and tensorboard else None
        if enabled:
            self.epoch_rows = [r for r in read_metrics(self.run_dir / "metrics.jsonl") if r.get("kind") == "epoch"]

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_jsonable(row)) + "\n")
        if self.tb is not None:
            step = row.get("step", 0)
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch") and math.isfinite(value):
                    self.tb.add_scalar(f"{row['kind']}/{key}", value, step)
        if row.get("kind") == "epoch":
            self.epoch_rows.append(row)
            self._write_csv()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    def _write_csv(self) -> None:
        columns: list[str] = []
        for row in self.epoch_rows:
            columns += [k for k in row if k not in columns]
        with atomic_open(self.run_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.epoch_rows)


def read_metrics(path: Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (empty when absent; a last line cut short by a kill is dropped)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n < len(lines):
                raise SpaError(f"{path}: line {n} is not JSON") from None
    return rows


def truncate_metrics(path: Path, *, after_step: int) -> None:
    """Drop rows logged after ``after_step``: a resumed run re-logs them."""
    rows = [r for r in read_metrics(path) if r.get("step", 0) <= after_step]
    atomic_write(Path(path), "".join(json.dumps(r) + "\n" for r in rows).encode())


def _tensorboard_writer(path: Path) -> Optional[Any]:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(path))


def _jsonable(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
