"""Subset recipes: what `spa-data build coco-s` means, read from ``manifests/<name>.toml``.

A recipe names the source reader, the task, the splits it is defined on, the ratio
bounds (keep an image iff ``min_ratio <= ratio < max_ratio``), how the ratio is
measured (``ratio_from``, ``crowd``), the canvas padding (IN-S) and the geometry the
shard stage renders at. The files are meant to be read and edited by users; a user's
own file is loaded with ``load_recipe("path/to/mine.toml")``. The shipped files are the package
data ``spa_data.manifests`` (the folder ``manifests/`` of the source tree), read through
``importlib.resources``, so an installed copy needs no source tree.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from spa_common.errors import SpaError
from spa_data.geometry import GeometrySpec
from spa_data.ratio import RATIO_FROM
from spa_data.sources import SOURCES

SHIPPED = "spa_data.manifests"
TASKS = ("det", "multilabel", "cls")   # what a subset is labelled for; spa_train has one task per name
_KEYS = {"name", "source", "task", "splits", "max_ratio", "min_ratio", "ratio_from", "crowd", "pad", "geometry"}


@dataclass(frozen=True)
class Recipe:
    """One subset definition (see ``manifests/coco-s.toml`` for the meaning of each key)."""

    name: str
    source: str
    task: str
    splits: tuple[str, ...]
    max_ratio: Optional[float] = None          # None: no upper bound
    min_ratio: float = 0.0
    ratio_from: str = "auto"
    crowd: bool = True
    pad: tuple[int, int] = (1, 1)              # canvas = (pad[0] * width, pad[1] * height)
    geometry: Optional[GeometrySpec] = None    # what `spa-data labels` renders; None: no [geometry] table

    def __post_init__(self):
        check_ratio_bounds(self.min_ratio, self.max_ratio, where=f"recipe {self.name}")
        _require(self.source in SOURCES,
                 f"recipe {self.name}: source {self.source!r} is not one of {', '.join(sorted(SOURCES))}")
        _require(self.task in TASKS, f"recipe {self.name}: task {self.task!r} is not one of {', '.join(TASKS)}")
        _require(self.ratio_from in RATIO_FROM,
                 f"recipe {self.name}: ratio_from {self.ratio_from!r} is not one of {', '.join(RATIO_FROM)}")
        _require(len(self.pad) == 2 and all(isinstance(p, int) and p >= 1 for p in self.pad),
                 f"recipe {self.name}: pad must be two integers >= 1, got {list(self.pad)}")
        _require(self.geometry is None or isinstance(self.geometry, GeometrySpec),
                 f"recipe {self.name}: geometry must be a GeometrySpec, got {type(self.geometry).__name__}")

    def canvas(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the canvas the ratio is taken on."""
        return self.pad[0] * width, self.pad[1] * height

    def with_overrides(self, **overrides: Any) -> "Recipe":
        """A copy with the given keys replaced; ``None`` values mean 'keep the recipe's'."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["splits"] = list(self.splits)
        d["pad"] = list(self.pad)
        d["geometry"] = self.geometry.to_table() if self.geometry is not None else {}
        return d

    @classmethod
    def from_dict(cls, data: dict, *, where: str) -> "Recipe":
        unknown = sorted(set(data) - _KEYS)
        _require(not unknown, f"{where}: unknown recipe key(s) {', '.join(unknown)}")
        for key in ("name", "source", "task", "splits"):
            _require(key in data, f"{where}: recipe key {key!r} is missing")
        try:
            return cls(
                name=str(data["name"]),
                source=str(data["source"]),
                task=str(data["task"]),
                splits=tuple(str(s) for s in data["splits"]),
                max_ratio=None if data.get("max_ratio") is None else float(data["max_ratio"]),
                min_ratio=float(data.get("min_ratio", 0.0)),
                ratio_from=str(data.get("ratio_from", "auto")),
                crowd=bool(data.get("crowd", True)),
                pad=tuple(data.get("pad", (1, 1))),
                geometry=None if data.get("geometry", {}) == {} else GeometrySpec.from_table(data["geometry"]),
            )
        except SpaError as e:
            raise SpaError(f"{where}: {e}") from None
        except (TypeError, ValueError) as e:
            raise SpaError(f"{where}: bad recipe value: {e}") from None


def recipe_names() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.name[:-len(".toml")] for p in importlib.resources.files(SHIPPED).iterdir()
                  if p.name.endswith(".toml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a shipped recipe by name (``coco-s``) or a user's recipe file by path."""
    if Path(name_or_path).suffix == ".toml":
        path = Path(name_or_path)
    else:
        path = importlib.resources.files(SHIPPED) / f"{name_or_path}.toml"
        _require(path.is_file(), f"unknown subset {name_or_path!r}; known: {', '.join(recipe_names())}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpaError(f"{path}: recipe file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SpaError(f"{path}: malformed TOML: {e}") from None
    return Recipe.from_dict(data, where=str(path))


def check_ratio_bounds(min_ratio: float, max_ratio: Optional[float], *, where: str) -> None:
    """Both bounds must lie in [0, 1] and min < max."""
    for label, value in (("min_ratio", min_ratio), ("max_ratio", max_ratio)):
        if value is not None:
            _require(math.isfinite(value) and 0.0 <= value <= 1.0, f"{where}: {label} {value} is outside [0, 1]")
    if max_ratio is not None:
        _require(min_ratio < max_ratio, f"{where}: min_ratio {min_ratio} is not below max_ratio {max_ratio}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SpaError(message)
