"""Search spaces: `search_spaces/<dataset>.yaml` -> validated Optuna distributions.

Grammar (YAML, two top-level mappings, nothing else)::

    search:                      # what the study samples, one entry per Config key
      beta:   {uniform: [0.05, 0.95]}          # float, uniform on [low, high]
      alpha:  {loguniform: [0.25, 4.0]}        # float, uniform in log space (low > 0)
      lr:     {loguniform: [1.0e-5, 1.0e-3]}
      frames: {int: [1, 4]}                    # integer in [low, high], both inclusive
      fusion: {choice: [concat, sum, film, gated]}   # one of a list of values
      optimizer: adam                          # a plain value: a constant
    fixed:                       # Config keys every trial and the exported YAML share
      epochs: 70
      batch_size: 64

`uniform` and `int` also take an optional `step` (`{uniform: [0.1, 0.9], step: 0.1}`);
numbers may be written as strings (`"1e-5"`, which YAML does not read as a float).
Every key must be a field of `bmlr.config.Config`; `fixed` is validated by building a
Config from it, and each search entry by building Configs at its bounds (or with each
choice), so `beta: {uniform: [0, 2]}` or `fusion: {choice: [attention]}` is rejected
before anything starts. Every error is a `SearchSpaceError` (a `ConfigError`) whose
message starts with the file and the key, e.g.
``search_spaces/ave.yaml: search.alpha: loguniform needs low > 0, got 0``.

`fixed.epochs` and `fixed.seeds` are the production settings of the exported
configuration; a trial trains at most `--max-epochs` (default `fixed.epochs`) with the
study's one seed.

This module imports neither Ray nor MLflow; Optuna is imported only by `to_optuna`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bmlr.config import _DEFAULTS, FIELD_NAMES, Config, ConfigError, from_dict

KINDS = ("uniform", "loguniform", "int", "choice")
SECTIONS = ("search", "fixed")
# Keys a study controls itself or that are not scalar hyperparameters: never sampled.
NOT_SEARCHABLE = ("dataset", "data_root", "cache_dir", "seeds", "name", "output_dir", "device",
                  "method_args", "adam_betas", "num_workers")
# Keys the command line owns; a search space may not fix them to something else.
COMMAND_LINE_KEYS = ("dataset",)


class SearchSpaceError(ConfigError):
    """A search-space file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Param:
    """One sampled Config key."""

    name: str
    kind: str  # one of KINDS
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    choices: tuple = ()

    @property
    def log(self) -> bool:
        return self.kind == "loguniform"

    def to_optuna(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log,
                                 step=None if self.step is None else float(self.step))

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice {list(self.choices)}"
        step = f" step {self.step}" if self.step is not None else ""
        return f"{self.kind} [{self.low}, {self.high}]{step}"

    def sample_values(self) -> list:
        """Values that must each give a valid Config: the bounds or every choice."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]


@dataclass
class SearchSpace:
    params: dict[str, Param]
    fixed: dict[str, Any]
    source: str = "<search space>"  # file path, for messages
    text: str = ""  # the file's text, logged as an artifact

    def optuna_space(self) -> dict:
        """`{key: optuna distribution}` in file order (OptunaSearch's `space`)."""
        return {name: p.to_optuna() for name, p in self.params.items()}

    def describe(self) -> str:
        lines = [f"  {name:14s} {p.describe()}" for name, p in self.params.items()]
        return "\n".join(lines)

    def base_config(self, overrides: dict[str, Any] | None = None, source: str = "") -> Config:
        """A Config of the fixed part plus `overrides` (sampled keys keep their defaults)."""
        return from_dict({**self.fixed, **(overrides or {})}, source=source or f"{self.source} (fixed)")

    def trial_config(self, base: dict[str, Any], sampled: dict[str, Any]) -> Config:
        unknown = sorted(set(sampled) - set(self.params))
        if unknown:
            raise SearchSpaceError(f"{self.source}: sampled key(s) {unknown} are not in the search space")
        return from_dict({**base, **sampled}, source="trial configuration")


def _err(source: str, key: str, message: str) -> SearchSpaceError:
    return SearchSpaceError(f"{source}: {key}: {message}")


def _number(source: str, key: str, value: Any, integer: bool) -> float | int:
    """A finite number (numeric strings accepted); integers where `integer`."""
    if isinstance(value, bool) or value is None:
        raise _err(source, key, f"expected a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _err(source, key, f"expected a number, got {value!r}") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _err(source, key, f"expected a finite number, got {value!r}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise _err(source, key, f"expected an integer, got {value!r}")
        return int(value)
    return float(value)


def _field_kind(name: str) -> str:
    default = _DEFAULTS[name]
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    return "str"


def _parse_param(source: str, name: str, spec: dict) -> Param:
    key = f"search.{name}"
    kinds = [k for k in spec if k in KINDS]
    unknown = sorted(set(spec) - set(KINDS) - {"step"})
    if unknown:
        raise _err(source, key, f"unknown key(s) {unknown}; expected one of {list(KINDS)} "
                                f"(plus an optional 'step' for uniform and int)")
    if len(kinds) != 1:
        raise _err(source, key, f"expected exactly one of {list(KINDS)}, got {sorted(spec) or 'none'}")
    kind = kinds[0]
    args = spec[kind]
    field_kind = _field_kind(name)
    if kind == "choice":
        if "step" in spec:
            raise _err(source, key, "'step' is only allowed with uniform and int")
        if not isinstance(args, list) or not args:
            raise _err(source, key, f"choice needs a non-empty list of values, got {args!r}")
        for value in args:
            if value is not None and not isinstance(value, (str, int, float, bool)):
                raise _err(source, key, f"choice values must be plain scalars, got {value!r}")
        if len(set(map(repr, args))) != len(args):
            raise _err(source, key, f"choice values must be distinct, got {args!r}")
        return Param(name, kind, choices=tuple(args))
    if field_kind not in ("int", "float"):
        raise _err(source, key, f"{kind} needs a numeric key, but {name!r} is a {field_kind}; use choice")
    if kind in ("uniform", "loguniform") and field_kind == "int":
        raise _err(source, key, f"{name!r} is an integer key; use {{int: [low, high]}} or choice")
    if not isinstance(args, list) or len(args) != 2:
        raise _err(source, key, f"{kind} needs a list [low, high], got {args!r}")
    integer = kind == "int"
    low = _number(source, f"{key}.{kind}[0]", args[0], integer)
    high = _number(source, f"{key}.{kind}[1]", args[1], integer)
    if low > high:
        raise _err(source, key, f"low {low} > high {high}")
    if kind == "loguniform" and low <= 0:
        raise _err(source, key, f"loguniform needs low > 0 (a log scale), got {low}")
    step = None
    if "step" in spec:
        if kind == "loguniform":
            raise _err(source, key, "'step' is not allowed with loguniform")
        step = _number(source, f"{key}.step", spec["step"], integer)
        if step <= 0:
            raise _err(source, key, f"step must be > 0, got {step}")
        span = (high - low) / step
        if abs(span - round(span)) > 1e-9:
            raise _err(source, key, f"high - low ({high - low}) is not a multiple of step {step}")
    return Param(name, kind, low, high, step)


def parse_search_space(data: Any, source: str = "<search space>", text: str = "") -> SearchSpace:
    """Validate a parsed YAML document; every error names `source` and the key."""
    if data is None:
        raise SearchSpaceError(f"{source}: the file is empty; expected 'search:' and 'fixed:' mappings")
    if not isinstance(data, dict):
        raise SearchSpaceError(f"{source}: expected a mapping with 'search' and 'fixed' at the top level, "
                               f"got {type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS), key=str)
    if unknown:
        raise SearchSpaceError(f"{source}: unknown top-level key(s) {unknown}; expected {list(SECTIONS)}")
    search = data.get("search") or {}
    fixed = data.get("fixed") or {}
    for section, mapping in (("search", search), ("fixed", fixed)):
        if not isinstance(mapping, dict):
            raise SearchSpaceError(f"{source}: {section}: expected a mapping of Config keys, "
                                   f"got {type(mapping).__name__}")
        for key in mapping:
            if key not in FIELD_NAMES:
                raise _err(source, f"{section}.{key}", "unknown key: not a field of bmlr.config.Config "
                                                       f"(valid keys: {', '.join(FIELD_NAMES)})")
    if not search:
        raise SearchSpaceError(f"{source}: search: nothing to search; add at least one entry")

    params: dict[str, Param] = {}
    constants: dict[str, Any] = {}
    for name, spec in search.items():
        if name in fixed:
            raise _err(source, f"search.{name}", "also given under 'fixed'; a key is either searched or fixed")
        if name in NOT_SEARCHABLE:
            raise _err(source, f"search.{name}", f"{name!r} cannot be searched (it belongs to the study "
                                                 f"or is not a scalar); put it under 'fixed'")
        if isinstance(spec, dict):
            params[name] = _parse_param(source, name, spec)
        elif isinstance(spec, list):
            raise _err(source, f"search.{name}", f"a bare list {spec!r} is ambiguous; write "
                                                 f"{{choice: [...]}} or {{uniform: [low, high]}}")
        else:
            constants[name] = spec  # a plain value: a constant
    if not params:
        raise SearchSpaceError(f"{source}: search: every entry is a constant; nothing to search")

    all_fixed = {**fixed, **constants}
    for key, value in all_fixed.items():
        section = "fixed" if key in fixed else "search"
        try:
            from_dict({key: value})
        except ConfigError as err:
            raise _err(source, f"{section}.{key}", str(err)) from None
    try:
        base = from_dict(all_fixed, source=f"{source} (fixed)")
    except ConfigError as err:
        raise SearchSpaceError(str(err)) from None
    base_dict = base.to_dict()
    for name, param in params.items():
        for value in param.sample_values():
            try:
                from_dict({**base_dict, name: value})
            except ConfigError as err:
                raise _err(source, f"search.{name}", f"value {value!r} is not valid: {err}") from None
    return SearchSpace(params=params, fixed=all_fixed, source=source, text=text)


def load_search_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    if not path.is_file():
        raise SearchSpaceError(f"{path}: search-space file not found")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SearchSpaceError(f"{path}: not valid YAML ({err})") from None
    return parse_search_space(data, source=str(path), text=text)


def project_root() -> Path:
    """The checkout this package lives in (where `search_spaces/` is)."""
    return Path(__file__).resolve().parents[2]


def resolve_search_space(path: str | None, dataset: str, cwd: Path | None = None) -> Path:
    """`--search-space` (default `search_spaces/<dataset>.yaml`), tried against the current
    directory and then the project root; the first that exists, absolute."""
    candidate = Path(path) if path else Path("search_spaces") / f"{dataset}.yaml"
    if candidate.is_absolute():
        return candidate
    tried = [(cwd or Path.cwd()) / candidate, project_root() / candidate]
    for option in tried:
        if option.is_file():
            return option.resolve()
    raise SearchSpaceError(f"{candidate}: search-space file not found (looked in "
                           f"{', '.join(str(t.parent) for t in tried)})")


def to_flat_params(cfg_dict: dict[str, Any]) -> dict[str, str]:
    """Config -> MLflow-friendly string params (lists and dicts as YAML flow text)."""
    out = {}
    for key, value in cfg_dict.items():
        if isinstance(value, (list, tuple, dict)):
            out[key] = yaml.safe_dump(value, default_flow_style=True).strip()
        else:
            out[key] = str(value)
    return out


__all__ = ["KINDS", "NOT_SEARCHABLE", "Param", "SearchSpace", "SearchSpaceError", "load_search_space",
           "parse_search_space", "resolve_search_space", "project_root", "to_flat_params"]
