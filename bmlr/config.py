"""One configuration schema for training, tuning and export.

A flat dataclass so that a search space, an MLflow parameter and a YAML key
are the same name. Defaults follow the paper where it gives them (Section
IV-A2: Adam with betas (0.9, 0.999), learning rate 5e-5, batch 64, 70 epochs,
three seeds, ResNet-18 from scratch); alpha and beta have no published default,
so they default to values inside the ranges the paper explores.

Load with `load_config(path)`; every problem raises `ConfigError` naming the
file, the key, the bad value and what was expected.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from bmlr.fileio import atomic_write_text

__all__ = ["Config", "ConfigError", "FIELD_NAMES", "closest_key", "beside_study",
           "METHOD_ARGS_PREFIX", "OPTIMIZERS", "SCHEDULES", "DEVICES",
           "SOURCE_KEYS", "field_kind", "fold_method_args", "from_dict", "load_config", "validate"]

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("none", "step", "cosine")
DEVICES = ("auto", "cpu", "cuda")
# what a `source` mapping may name: the MLflow store, experiment and run of the trial an exported
# configuration reproduces, the run's name, its study and trial id, and the study's parent run
SOURCE_KEYS = ("tracking_uri", "experiment_id", "run_id", "run_name", "study", "trial_id", "parent_run_id")


class ConfigError(ValueError):
    """A configuration file or value is invalid."""


@dataclass
class Config:
    # --- data ---
    dataset: str = "synthetic"
    data_root: str | None = None  # None: the synthetic default is generated into the cache
    cache_dir: str | None = None  # None: $BMLR_CACHE or ~/.cache/bmlr
    data_version: str = "v3"  # which version of the generated synthetic data (v1, v2, v3); others ignore it
    frames: int = 3  # frames per clip (T)
    image_size: int = 224
    val_fraction: float = 0.1  # carved out of train where a data set ships no validation split
    split_seed: int = 0
    skip_bad: bool = False
    num_workers: int = 0  # data-loader worker processes; -1 = from the CPUs (bmlr.engine.loader_workers)
    # --- model ---
    fusion: str = "concat"
    model_width: int = 64  # ResNet base width (64 = ResNet-18) or Transformer d_model
    model_depth: int = 2  # blocks per ResNet stage (2 = ResNet-18) or Transformer layers
    # --- method ---
    method: str = "bmlr"
    alpha: float = 1.0  # confidence -> temperature mapping (equation 5)
    beta: float = 0.5  # reshaping threshold: reshape while 1 < lambda < 1/beta (equation 7)
    method_args: dict[str, Any] = field(default_factory=dict)  # extra knobs of other methods
    # --- optimisation ---
    optimizer: str = "adam"
    lr: float = 5e-5
    adam_betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    schedule: str = "none"
    step_size: int = 30  # "step" schedule: epochs between decays
    gamma: float = 0.1  # "step" schedule: decay factor
    epochs: int = 70
    batch_size: int = 64
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # --- runtime ---
    device: str = "auto"  # auto = cuda when available
    threads: int = 0  # CPU threads for torch; 0 = torch's default (all cores)
    amp: bool = True  # mixed precision on GPU (bf16 where supported); ignored on CPU
    channels_last: bool = False  # NHWC memory format for the CNN encoders (faster convolutions on GPU with amp)
    compile: bool = False  # torch.compile the encoders in place (the first steps compile; CPU needs a C++ compiler)
    output_dir: str = "runs"
    name: str | None = None
    # where an exported configuration came from (keys: SOURCE_KEYS): written by bmlr-tune (best.yaml,
    # export --run-id) and `bmlr.train --from-run`; bmlr.train logs to that MLflow store and links its
    # run to the trial. Ignored by training; None = not from a study
    source: dict[str, str] | None = None

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    def replace(self, **changes: Any) -> "Config":
        return from_dict({**self.to_dict(), **changes})

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            atomic_write_text(path, text)  # a reader (another trial, a report) never sees half a file
        return text


FIELD_NAMES = tuple(f.name for f in fields(Config))
_DEFAULTS = {
    f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory() for f in fields(Config)
}


def field_kind(name: str) -> str:
    """The scalar type of Config field ``name``: "bool", "int", "float" or "str" (everything
    else: strings, None-able strings, lists and mappings). ``KeyError`` for an unknown name."""
    default = _DEFAULTS[name]
    for kind in (bool, int, float):  # bool first: True is an int too
        if isinstance(default, kind):
            return kind.__name__
    return "str"


def _fail(source: str, key: str, value: Any, expected: str) -> ConfigError:
    where = f"{source}: " if source else ""
    return ConfigError(f"{where}key {key!r} has value {value!r}; expected {expected}")


def _coerce(source: str, key: str, value: Any, default: Any) -> Any:
    """Convert YAML scalars to the field's type (YAML reads 5e-5 as a string)."""
    if key in ("data_root", "cache_dir", "name"):
        if value is None:
            return None
        if not isinstance(value, str):
            raise _fail(source, key, value, "a string or null")
        if key == "name" and ("/" in value or "\\" in value or value in ("", ".", "..")):
            raise _fail(source, key, value, "a plain folder name (no '/', '\\', '.' or '..'): the run "
                        "folder inside output_dir")
        return value
    if key == "adam_betas":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise _fail(source, key, value, "a list of two numbers, e.g. [0.9, 0.999]")
        return tuple(_coerce_scalar(source, key, v, 0.0) for v in value)
    if key == "seeds":
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            raise _fail(source, key, value, "a non-empty list of integers")
        seeds = [_coerce_scalar(source, key, v, 0) for v in value]
        if any(not 0 <= seed < 2**32 for seed in seeds):  # NumPy's and Optuna's seeds: 0 .. 2**32 - 1
            raise _fail(source, key, value, "integers from 0 to 2**32 - 1")
        return seeds
    if key == "source":
        return _coerce_source(source, value)
    if key == "method_args":
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise _fail(source, key, value, "a mapping")
        return dict(value)
    return _coerce_scalar(source, key, value, default)


def _coerce_source(where: str, value: Any) -> dict[str, str] | None:
    """A `source` mapping: None, or some of SOURCE_KEYS to strings (numbers as text, nulls dropped)."""
    if value is None:
        return None
    expected = f"null or a mapping of some of {', '.join(SOURCE_KEYS)} to strings"
    if not isinstance(value, dict) or any(k not in SOURCE_KEYS for k in value):
        raise _fail(where, "source", value, expected)
    for item in value.values():
        if isinstance(item, bool) or not (item is None or isinstance(item, (str, int))):
            raise _fail(where, "source", value, expected)
    return {k: str(v) for k, v in value.items() if v is not None}


def _coerce_scalar(source: str, key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise _fail(source, key, value, "true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise _fail(source, key, value, "an integer")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool):
            raise _fail(source, key, value, "a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise _fail(source, key, value, "a number") from None
        if not math.isfinite(number):
            raise _fail(source, key, value, "a finite number")
        return number
    if isinstance(default, str):
        if not isinstance(value, str):
            raise _fail(source, key, value, "a string")
        return value
    return value


METHOD_ARGS_PREFIX = "method_args."


def fold_method_args(data: dict[str, Any], source: str = "") -> dict[str, Any]:
    """`method_args.<name>: value` keys (a search space's method-specific knobs, `--set
    method_args.alpha_ogm=0.3`) merged into the `method_args` mapping; a dotted key wins over
    the same name inside `method_args`."""
    dotted = [k for k in data if isinstance(k, str) and k.startswith(METHOD_ARGS_PREFIX)]
    if not dotted:
        return data
    out = {k: v for k, v in data.items() if k not in dotted}
    args = out.get("method_args") or {}
    if not isinstance(args, dict):
        raise _fail(source, "method_args", args, "a mapping")
    args = dict(args)
    for key in dotted:
        name = key[len(METHOD_ARGS_PREFIX):]
        if not name or "." in name:
            raise ConfigError(f"{source + ': ' if source else ''}key {key!r}: expected method_args.<name>")
        args[name] = data[key]
    out["method_args"] = args
    return out


def beside_study(output_dir: str, study_dir: str | Path | None) -> str:
    """Where a study's exported configuration trains: ``<study_dir>/production``, unless the
    configuration names an ``output_dir`` of its own (anything but the default)."""
    if study_dir and output_dir == Config.output_dir:
        return str(Path(study_dir) / "production")
    return output_dir


def closest_key(key: str) -> str:
    """``; did you mean 'epochs'?`` where a configuration key is close to ``key``, else ''."""
    close = difflib.get_close_matches(key, FIELD_NAMES, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def from_dict(data: dict[str, Any], source: str = "") -> Config:
    """Build a validated Config from a mapping; unknown keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source or 'config'}: expected a mapping of keys to values, got {type(data).__name__}")
    data = fold_method_args(data, source)
    unknown = sorted(set(data) - set(FIELD_NAMES))
    if unknown:
        hints = "".join(closest_key(k).replace("?", f" for {k!r}?") for k in unknown)
        raise ConfigError(
            f"{source + ': ' if source else ''}unknown key(s) {', '.join(map(repr, unknown))}{hints}; "
            f"valid keys are: {', '.join(FIELD_NAMES)}"
        )
    kwargs = {k: _coerce(source, k, v, _DEFAULTS[k]) for k, v in data.items()}
    try:
        return Config(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}" if source else str(err)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); a configuration is a YAML text file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if data is None:  # an empty file (or comments only) would silently mean "all defaults"
        raise ConfigError(f"{path}: the configuration file is empty; give at least the keys that differ from "
                          f"the defaults (e.g. dataset, data_root, epochs)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return from_dict({**data, **(overrides or {})}, source=str(path))


def validate(cfg: Config) -> None:
    """Check values and names. The registries are imported here, not at the top, so that
    reading the schema (``FIELD_NAMES``, ``field_kind``) does not load torch and every data set."""
    from bmlr.data import DATASETS
    from bmlr.methods import METHODS
    from bmlr.models import FUSIONS

    def check(ok: bool, key: str, expected: str) -> None:
        if not ok:
            raise _fail("", key, getattr(cfg, key), expected)

    check(cfg.dataset in DATASETS, "dataset", f"one of {DATASETS.names()}")
    check(cfg.method in METHODS, "method", f"one of {METHODS.names()}")
    check(cfg.fusion in FUSIONS, "fusion", f"one of {FUSIONS.names()}")
    check(cfg.optimizer in OPTIMIZERS, "optimizer", f"one of {list(OPTIMIZERS)}")
    check(cfg.schedule in SCHEDULES, "schedule", f"one of {list(SCHEDULES)}")
    check(cfg.device in DEVICES or cfg.device.startswith("cuda:"), "device", f"one of {list(DEVICES)} or cuda:N")
    check(cfg.alpha > 0, "alpha", "a number > 0")
    check(0.0 <= cfg.beta <= 1.0, "beta", "a number in [0, 1]")
    check(cfg.lr > 0, "lr", "a number > 0")
    check(all(0.0 <= b < 1.0 for b in cfg.adam_betas), "adam_betas", "two numbers in [0, 1)")
    check(cfg.weight_decay >= 0, "weight_decay", "a number >= 0")
    check(cfg.momentum >= 0, "momentum", "a number >= 0")
    check(cfg.gamma > 0, "gamma", "a number > 0")
    check(cfg.step_size >= 1, "step_size", "an integer >= 1")
    check(cfg.epochs >= 1, "epochs", "an integer >= 1")
    check(cfg.batch_size >= 1, "batch_size", "an integer >= 1")
    check(cfg.frames >= 1, "frames", "an integer >= 1")
    check(cfg.image_size >= 8, "image_size", "an integer >= 8")
    check(0.0 < cfg.val_fraction < 1.0, "val_fraction", "a number in (0, 1)")
    check(cfg.num_workers >= -1, "num_workers", "an integer >= 0, or -1 (from the CPUs)")
    check(cfg.threads >= 0, "threads", "an integer >= 0 (0 = torch's default)")
    check(cfg.model_width >= 1, "model_width", "an integer >= 1")
    check(cfg.model_depth >= 1, "model_depth", "an integer >= 1")
    check(len(set(cfg.seeds)) == len(cfg.seeds), "seeds", "distinct integers")
