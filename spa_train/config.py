"""Training configuration: one dataclass, a YAML/TOML file, then ``key=value`` overrides.

Precedence (lowest first): the defaults below, the config file, the command-line options
(``--shards``, ``--model``, ...), then ``key=value`` pairs. Values are parsed with YAML
syntax and checked against the field's type, so ``lr=3e-4``, ``amp=false`` and
``model_args={embed_dim: 24, depths: [1, 1, 2, 1]}`` all work; ``model_args.embed_dim=24``
sets one entry of a dict field. The resolved config is saved as ``config.yaml`` in the run
directory, and ``spa-train --config RUN/config.yaml`` reproduces the run. The paper's recipes
ship as package data (``configs/`` in the source tree): ``--config coco-s/spt_tiny`` reads one.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import inspect
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

try:
    import yaml
except ModuleNotFoundError:  # minimal installs: config files in JSON syntax (a subset of YAML) still work
    yaml = None

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from spa_common.errors import SpaError
from spa_common.io import atomic_write
from spa_data.recipes import TASKS
from spa_model.selection import SELECTORS

DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "bf16", "off")
LR_SCHEDULES = ("cosine", "step")
SHIPPED_CONFIGS = "spa_train.configs"


@dataclass
class TrainConfig:
    """Everything one training run depends on (saved as ``config.yaml`` in the run)."""

    # what
    task: str = "cls"                       # cls | multilabel | det; must match the shards
    model: str = "spt_tiny"                 # a spa_model.create_model name
    selector: Optional[str] = None          # SPT's token selector: gumbel (the paper's) | topk | gt (oracle labels)
                                            # | all; None: the model's own
    model_args: dict = field(default_factory=dict)   # extra create_model keyword overrides (not the selector)
    pretrained: Optional[str] = None        # backbone start: a torchvision weights name (Swin_T_Weights.IMAGENET1K_V1)
                                            # or a file (torchvision or official Swin state dict); None: random
    shards: str = ""                        # training shards (DIR or DIR/shards)
    val_shards: Optional[str] = None        # validation shards; None: no validation
    out: str = "runs/spa"                   # run directory

    # optimisation (AdamW, linear warm-up then cosine decay to min_lr)
    epochs: int = 10
    max_steps: Optional[int] = None         # stop after this many optimizer steps (the lr schedule still spans epochs)
    batch_size: int = 32                    # GLOBAL images per optimizer step (all ranks, all micro-steps)
    grad_accum_steps: int = 1               # micro-batches per optimizer step
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: Optional[int] = None      # linear warm-up; None: 5% of the schedule
    lr_schedule: str = "cosine"             # cosine (to min_lr) | step (x0.1 after each epoch in lr_steps)
    lr_steps: tuple[int, ...] = ()          # step schedule: epochs after which the lr drops (Swin's 3x: 27, 33)
    clip_grad_norm: Optional[float] = 5.0   # None: no clipping
    label_smoothing: float = 0.0            # cls only
    alpha: float = 0.01                     # weight of the selection loss (paper: 0.01)

    # detection (torchvision Mask R-CNN / Faster R-CNN on the backbone + FPN)
    masks: bool = True                      # Mask R-CNN where the shards have masks; false: Faster R-CNN
    fpn_channels: int = 256
    mask_head_channels: int = 256
    detector_args: dict = field(default_factory=dict)   # torchvision constructor kwargs, e.g. box_detections_per_img

    # data
    select_threshold: float = 0.0           # cell positive iff object coverage > this
    hflip: float = 0.5                      # training flip probability
    multiscale: tuple[int, ...] = ()        # resize jitter: training short sides drawn per image (fit geometry,
                                            # long side capped as the shards'); (): the shards' size only
    num_workers: int = 2
    eval_batch_size: Optional[int] = None   # per-rank; None: the per-rank training micro-batch

    # runtime
    device: str = "auto"                    # auto | cpu | cuda
    amp: str = "auto"                       # auto (bf16 on CUDA) | bf16 | off
    compile: bool = False                   # torch.compile the model
    channels_last: bool = False             # channels_last memory format for the input
    cuda_graphs: bool = True                # evaluation on CUDA replays CUDA graphs of the backbone
    seed: int = 0
    deterministic: bool = True              # deterministic kernels where torch has them (CPU runs are exact)

    # bookkeeping
    log_interval: int = 10                  # steps between "step" rows in metrics.jsonl (and lines on stdout
                                            # where no progress bar shows)
    eval_interval: int = 1                  # epochs between validations
    checkpoint_interval: int = 0            # steps between last.pt writes (0: each epoch end only)
    progress: bool = True                   # tqdm bars on stderr, on a terminal
    curves: bool = True                     # curves.png at the end of the run

    def __post_init__(self):
        _check_choice("task", self.task, TASKS)
        if self.selector == "spa":  # its name in configs saved before the trainer took spa_model's names
            self.selector = None
        if self.selector is not None:
            _check_choice("selector", self.selector, tuple(SELECTORS))
        _check_choice("device", self.device, DEVICES)
        _check_choice("amp", self.amp, AMP_MODES)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.lr_schedule == "step" and not self.lr_steps:
            raise SpaError("config: lr_schedule step needs lr_steps (epochs after which the lr drops)")
        for name in ("lr_steps", "multiscale"):
            if any(v < 1 for v in getattr(self, name)):
                raise SpaError(f"config: {name} must hold positive integers, got {list(getattr(self, name))}")
        for name in ("epochs", "batch_size", "grad_accum_steps", "log_interval", "eval_interval"):
            if getattr(self, name) < 1:
                raise SpaError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise SpaError(f"config: max_steps must be >= 1, got {self.max_steps}")
        if self.checkpoint_interval < 0 or (self.warmup_steps or 0) < 0 or self.num_workers < 0:
            raise SpaError("config: checkpoint_interval, warmup_steps and num_workers must be >= 0")
        if not 0.0 <= self.hflip <= 1.0:
            raise SpaError(f"config: hflip must be in [0, 1], got {self.hflip}")
        _check_range("lr", self.lr, 0.0, math.inf, low_open=True)
        for name in ("min_lr", "weight_decay", "alpha"):
            _check_range(name, getattr(self, name), 0.0, math.inf)
        for name, value in (("label_smoothing", self.label_smoothing), ("select_threshold", self.select_threshold),
                            ("betas[0]", self.betas[0]), ("betas[1]", self.betas[1])):
            _check_range(name, value, 0.0, 1.0, high_open=True)
        if self.clip_grad_norm is not None:
            _check_range("clip_grad_norm", self.clip_grad_norm, 0.0, math.inf, low_open=True)
        for name in ("fpn_channels", "mask_head_channels", "eval_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SpaError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise SpaError(f"config: seed must be >= 0, got {self.seed}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for name in ("betas", "lr_steps", "multiscale"):
            d[name] = list(d[name])
        return d


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


@dataclass(frozen=True)
class KeyDoc:
    """One config key as ``--help`` lists it: its section and comment come from TrainConfig's source."""

    section: str
    name: str
    default: str     # in the syntax key=value takes
    comment: str


def describe_keys() -> list[KeyDoc]:
    """Every TrainConfig field with its default and the comments written beside it in the class."""
    try:
        source = inspect.getsource(TrainConfig)
    except OSError:  # no source shipped (a zipped or bytecode-only install): names and defaults only
        source = ""
    comments: dict[str, list[str]] = {}
    sections: dict[str, str] = {}
    section, last, names = "", None, set(field_names())
    for line in source.splitlines():
        field_match = re.match(r" {4}(\w+): [^#]*?(?:#\s*(.*))?$", line)
        comment_match = re.match(r"( +)#\s*(.*)$", line)
        if field_match and field_match.group(1) in names:
            last = field_match.group(1)
            sections[last] = section
            comments[last] = [field_match.group(2)] if field_match.group(2) else []
        elif comment_match and len(comment_match.group(1)) == 4:   # a section title, e.g. "# runtime"
            section, last = comment_match.group(2), None
        elif comment_match and last is not None:                    # a comment continued on the next line
            comments[last].append(comment_match.group(2))
        elif not line.strip():
            last = None
    defaults = TrainConfig().to_dict()
    return [KeyDoc(sections.get(name, ""), name, _value_text(defaults[name]), " ".join(comments.get(name, [])))
            for name in field_names()]


def _value_text(value: Any) -> str:
    """A value as ``key=value`` on the command line gives it (YAML syntax, one shell word; text as is)."""
    if value is None or isinstance(value, bool):
        return {None: "none", True: "true", False: "false"}[value]
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)


def resolve_config(file: Optional[str | Path] = None, overrides: typing.Iterable[str] = (), *,
                   base: Optional[dict] = None, **options: Any) -> TrainConfig:
    """Defaults < ``base`` (a resumed run's config) < ``file`` (YAML or TOML) < ``options``
    (None values ignored) < ``key=value`` overrides."""
    values: dict[str, Any] = dict(base or {})
    if file is not None:
        values.update(read_config_file(file))
    values.update({k: v for k, v in options.items() if v is not None})
    hints = typing.get_type_hints(TrainConfig)
    for item in overrides:
        key, value = parse_override(item)
        if _is_text(hints.get(key)):  # YAML would read amp=off as False, model=1e3 as a number
            value = None if value is None and _is_optional(hints[key]) else item.partition("=")[2].strip()
        _set_dotted(values, key, value)
    return build_config(values)


def _is_text(annotation: Any) -> bool:
    return annotation is str or str in typing.get_args(annotation)


def _is_optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def build_config(values: dict[str, Any]) -> TrainConfig:
    """A ``TrainConfig`` from plain values, each checked against its field's type."""
    hints = typing.get_type_hints(TrainConfig)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise SpaError(unknown_key_message(key))
        kwargs[key] = coerce(value, hints[key], key=key)
    return TrainConfig(**kwargs)


def shipped_configs() -> list[str]:
    """Names of the shipped configs, ``<subset>/<model>``."""
    root = importlib.resources.files(SHIPPED_CONFIGS)
    return sorted(f"{d.name}/{f.name.removesuffix('.yaml')}" for d in root.iterdir() if d.is_dir()
                  for f in d.iterdir() if f.name.endswith(".yaml"))


def read_config_file(path: str | Path) -> dict:
    """The mapping in a YAML or TOML file, or in the shipped config named ``path`` (``coco-s/spt_tiny``)."""
    path = Path(path)
    if not path.is_file():
        name = path.as_posix().removesuffix(".yaml")
        if name not in shipped_configs():
            raise SpaError(f"{path}: config file not found (nor a shipped config <subset>/<model>, "
                           "e.g. coco-s/spt_tiny)")
        path = importlib.resources.files(SHIPPED_CONFIGS).joinpath(*f"{name}.yaml".split("/"))
    suffix = Path(path.name).suffix
    try:
        if suffix == ".toml":
            data = tomllib.loads(path.read_text())
        elif suffix in (".yaml", ".yml"):
            data = _load_yaml(path.read_text()) or {}
        else:
            raise SpaError(f"{path}: config must be .yaml, .yml or .toml")
    except (ValueError, tomllib.TOMLDecodeError) as e:  # yaml.YAMLError and json errors are ValueErrors
        raise SpaError(f"{path}: not valid {suffix[1:].upper()}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SpaError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write ``config.yaml`` atomically."""
    data = config.to_dict()
    text = yaml.safe_dump(data, sort_keys=False) if yaml else json.dumps(data, indent=2) + "\n"
    atomic_write(Path(path), text.encode())


def parse_override(item: str) -> tuple[str, Any]:
    """``'lr=3e-4'`` -> ``('lr', 0.0003)``; values use YAML syntax (``none``/``null`` -> None)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpaError(f"override {item!r}: expected key=value")
    try:
        value = _load_yaml(text) if text.strip() else ""
    except ValueError:
        value = text
    if isinstance(value, str) and value.lower() == "none":
        value = None
    return key, value


def _load_yaml(text: str) -> Any:
    """YAML when pyyaml is installed; else JSON, bare words as strings."""
    if yaml is not None:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(str(e).splitlines()[0]) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if text.strip().startswith(("{", "[")):
            raise ValueError("pyyaml is not installed: write mappings and lists in JSON syntax") from None
        return text.strip()


def unknown_key_message(key: str) -> str:
    names = field_names()
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    if not close:  # 'lr_warmup' vs 'warmup_steps': compare the words, order-free
        words = set(key.split("_"))
        scored = [(len(words & set(n.split("_"))), n) for n in names]
        best = max(scored)
        close = [best[1]] if best[0] else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown config key {key!r}{hint}"


def coerce(value: Any, annotation: Any, *, key: str) -> Any:
    """Check/convert ``value`` to the field type (int, float, bool, str, Optional, tuple, dict)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner, key=key)
    if origin is tuple and args[-1:] == (Ellipsis,):
        if not isinstance(value, (list, tuple)):
            raise SpaError(f"config key {key!r}: expected a list, got {value!r}")
        return tuple(coerce(v, args[0], key=key) for v in value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise SpaError(f"config key {key!r}: expected {len(args)} values, got {value!r}")
        return tuple(coerce(v, a, key=key) for v, a in zip(value, args))
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise SpaError(f"config key {key!r}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise SpaError(f"config key {key!r}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise SpaError(f"config key {key!r}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise SpaError(f"config key {key!r}: expected a number, got {value!r}")
    if annotation is str:
        if value is None or isinstance(value, (dict, list)):
            raise SpaError(f"config key {key!r}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config field type {annotation!r} for {key!r}")


def _set_dotted(values: dict, key: str, value: Any) -> None:
    head, _, rest = key.partition(".")
    if not rest:
        values[head] = value
        return
    if head not in field_names():
        raise SpaError(unknown_key_message(head))
    target = values.get(head)
    if not isinstance(target, dict):
        target = dict(getattr(TrainConfig(), head)) if isinstance(getattr(TrainConfig(), head), dict) else None
    if target is None:
        raise SpaError(f"config key {head!r} is not a mapping: {key!r} cannot set a sub-key")
    target = dict(target)
    target[rest] = value
    values[head] = target


def _check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False,
                 high_open: bool = False) -> None:
    """A finite ``value`` within the bounds (open where said), else a SpaError naming ``name``."""
    inside = math.isfinite(value) and (value > low if low_open else value >= low) and \
        (value < high if high_open else value <= high)
    if not inside:
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open or math.isinf(high) else ']'}"
        raise SpaError(f"config: {name} must be a finite number in {bounds}, got {value}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpaError(f"config: {name} {value!r} is not one of {', '.join(choices)}")
