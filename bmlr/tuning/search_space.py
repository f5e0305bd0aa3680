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

Method-specific hyperparameters (docs/comparisons.md)::

    search:
      lr: {loguniform: [1.0e-4, 1.0e-2], default: 1.0e-3}   # default: the untuned value
      beta: {uniform: [0.05, 0.95], default: 0.5}            # read by the bmlr family only
    methods:                     # optional: per method, added to (or replacing) the shared part
      ogm_ge:
        search:
          method_args.alpha_ogm: {loguniform: [0.05, 1.0], default: 0.1}
        fixed:
          method_args.modulation_ends: 50

`SearchSpace.for_method(name)` is the flat space one method searches: the shared entries
minus the Config keys that method ignores (`alpha` and `beta` are read by the label-
reshaping methods only, `METHOD_READS`), then its own section. `method_args.<name>` keys
must name one of that method's `default_args`; their bounds and choices are checked by
building the method. A flat file (no `methods:` section) may use `method_args.<name>`
keys at the top level when it fixes `method`; `bmlr.config.from_dict` folds them into
`method_args`. `default` (optional, inside the bounds or among the choices) is the value
an untuned run uses (`SearchSpace.untuned`); without one, the Config default (or, for a
`method_args` key, the method's own default).

This module imports neither Ray nor MLflow; Optuna is imported only by `to_optuna`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bmlr.config import _DEFAULTS, FIELD_NAMES, Config, ConfigError, from_dict

KINDS = ("uniform", "loguniform", "int", "choice")
SECTIONS = ("search", "fixed", "methods")
METHOD_SECTIONS = ("search", "fixed")
METHOD_ARGS = "method_args."
# Config keys that only some methods read. A method's flat space (`SearchSpace.for_method`)
# drops the ones it ignores, so no trial budget goes to a knob without effect. Every
# registered method is listed (tests/test_compare.py checks it); a method that is not, or
# that sets a class attribute `config_keys`, keeps (or gets) what that says.
METHOD_SPECIFIC_KEYS = ("alpha", "beta")
METHOD_READS: dict[str, tuple[str, ...]] = {
    "bmlr": ("alpha", "beta"),
    "only_reshape": ("alpha", "beta"),
    "vanilla_reshape": ("alpha", "beta"),
    "uni_reshaping": ("beta",),  # the intensity xi uses beta; the uniform target needs no temperature
    "uni_distill": (),  # the partner's plain softmax: no threshold, no temperature
    "baseline": (),
    "uniform_baseline": (),
    "only_tpo": (),
    "ogm_ge": (),
    "dgl": (),
    "aug": (),
    "udi": (),
}
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
    default: Any = None  # the untuned value (None: the Config's or the method's default)

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
        default = f" default {self.default}" if self.default is not None else ""
        if self.kind == "choice":
            return f"choice {list(self.choices)}{default}"
        step = f" step {self.step}" if self.step is not None else ""
        return f"{self.kind} [{self.low}, {self.high}]{step}{default}"

    def to_spec(self) -> dict[str, Any]:
        """The YAML entry this parameter was parsed from."""
        spec: dict[str, Any] = {self.kind: list(self.choices) if self.kind == "choice" else [self.low, self.high]}
        if self.step is not None:
            spec["step"] = self.step
        if self.default is not None:
            spec["default"] = self.default
        return spec

    def sample_values(self) -> list:
        """Values that must each give a valid Config: the bounds or every choice."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]


@dataclass
class MethodSection:
    """`methods.<name>` of a search space: what that method searches and fixes on top of the shared part."""

    params: dict[str, Param]
    fixed: dict[str, Any]


@dataclass
class SearchSpace:
    params: dict[str, Param]
    fixed: dict[str, Any]
    source: str = "<search space>"  # file path, for messages
    text: str = ""  # the file's text, logged as an artifact
    methods: dict[str, MethodSection] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()  # shared keys for_method left out (the method ignores them)

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

    # --- one method's view, fixing keys, untuned values ---------------------------------
    def for_method(self, method: str) -> "SearchSpace":
        """The flat space `method` searches: the shared entries without the Config keys the
        method ignores (`METHOD_READS`), then `methods.<method>` (its entries win), with
        `method` fixed. No `methods:` section is left; `to_yaml()` writes it as a file that a
        plain study reads."""
        if method not in _method_registry():
            raise SearchSpaceError(f"{self.source}: unknown method {method!r}; expected one of "
                                   f"{_method_registry().names()}")
        fixed_method = self.fixed.get("method")
        if fixed_method is not None and fixed_method != method and any(k.startswith(METHOD_ARGS) for k in
                                                                       [*self.params, *self.fixed]):
            raise SearchSpaceError(f"{self.source}: its method_args keys belong to method {fixed_method!r}, "
                                   f"not {method!r}")
        ignored = set(METHOD_SPECIFIC_KEYS) - set(method_reads(method))
        section = self.methods.get(method, MethodSection({}, {}))
        params = {k: p for k, p in self.params.items() if k not in ignored and k not in section.fixed}
        params.update(section.params)
        fixed = {k: v for k, v in self.fixed.items() if k not in section.params}
        fixed.update(section.fixed)
        fixed["method"] = method
        dropped = tuple(k for k in self.params if k in ignored)
        flat = SearchSpace(params=params, fixed=fixed, source=f"{self.source} [method {method}]", dropped=dropped)
        # (a flat space with nothing to search still gives the untuned configuration; a study of it
        # is refused where it is built: bmlr.tuning.compare.arm_space)
        flat.text = flat.to_yaml(header=[f"The search space of method {method!r}, from {self.source}."]
                                 + ([f"Not searched (method {method!r} ignores them): {', '.join(dropped)}."]
                                    if dropped else []))
        return flat

    def with_fixed(self, values: dict[str, Any]) -> "SearchSpace":
        """A copy with `values` fixed: searched keys among them are no longer searched (e.g. a
        row of a recipe that fixes the fusion). Each value is checked like a fixed entry."""
        params = {k: p for k, p in self.params.items() if k not in values}
        if not params:
            raise SearchSpaceError(f"{self.source}: fixing {sorted(values)} leaves nothing to search")
        fixed = {**self.fixed, **values}
        try:
            from_dict(fixed, source=f"{self.source} (fixed)")
        except ConfigError as err:
            raise SearchSpaceError(str(err)) from None
        out = SearchSpace(params=params, fixed=fixed, source=self.source, methods=dict(self.methods),
                          dropped=self.dropped)
        out.text = out.to_yaml(header=[f"From {self.source}, with {', '.join(f'{k}={v}' for k, v in values.items())}."])
        return out

    def untuned(self) -> dict[str, Any]:
        """The configuration an untuned run trains: the fixed part plus each searched key's
        `default` (keys without one keep the Config's or the method's default)."""
        values = dict(self.fixed)
        values.update({k: p.default for k, p in self.params.items() if p.default is not None})
        return values

    def to_yaml(self, header: list[str] | None = None) -> str:
        """The space as a search-space file, one line per entry (a `methods:` section is kept)."""
        def block(params: dict[str, Param], fixed: dict[str, Any], indent: str) -> list[str]:
            out = [f"{indent}search:" + (" {}" if not params else "")]
            out += [f"{indent}  {k}: {_flow(p.to_spec())}" for k, p in params.items()]
            out += [f"{indent}fixed:" + (" {}" if not fixed else "")]
            out += [f"{indent}  {k}: {_flow(v)}" for k, v in fixed.items()]
            return out

        lines = [f"# {line}" for line in (header or [])] + block(self.params, self.fixed, "")
        if self.methods:
            lines.append("methods:")
            for name, sec in self.methods.items():
                lines += [f"  {name}:"] + block(sec.params, sec.fixed, "    ")
        return "\n".join(lines) + "\n"


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("\n...").strip()


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


def _method_registry():
    from bmlr.methods import METHODS

    return METHODS


def method_reads(method: str) -> tuple[str, ...]:
    """Which of `METHOD_SPECIFIC_KEYS` (alpha, beta) `method` reads: its class attribute
    `config_keys` where it has one, else `METHOD_READS`, else (a method nobody listed) all."""
    cls = _method_registry().get(method)
    explicit = getattr(cls, "config_keys", None)
    if explicit is not None:
        return tuple(explicit)
    return METHOD_READS.get(method, METHOD_SPECIFIC_KEYS)


def method_defaults(method: str) -> dict[str, Any]:
    """The method's own `method_args` defaults (its authors' values)."""
    return dict(getattr(_method_registry().get(method), "default_args", {}) or {})


def _kind_of(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    return "str"


def _field_kind(name: str, method: str | None = None) -> str:
    if name.startswith(METHOD_ARGS):
        return _kind_of(method_defaults(method or "").get(name[len(METHOD_ARGS):]) if method else None)
    default = _DEFAULTS[name]
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    return "str"


def _parse_param(source: str, name: str, spec: dict, key: str | None = None, method: str | None = None) -> Param:
    key = key or f"search.{name}"
    kinds = [k for k in spec if k in KINDS]
    unknown = sorted(set(spec) - set(KINDS) - {"step", "default"})
    if unknown:
        raise _err(source, key, f"unknown key(s) {unknown}; expected one of {list(KINDS)} "
                                f"(plus an optional 'step' for uniform and int, and 'default')")
    if len(kinds) != 1:
        raise _err(source, key, f"expected exactly one of {list(KINDS)}, got {sorted(spec) or 'none'}")
    param = _parse_distribution(source, name, spec, key, kinds[0], _field_kind(name, method))
    if "default" not in spec:
        return param
    default = spec["default"]
    if param.kind == "choice":
        if default not in param.choices:
            raise _err(source, key, f"default {default!r} is not one of the choices {list(param.choices)}")
    else:
        default = _number(source, f"{key}.default", default, param.kind == "int")
        if not param.low <= default <= param.high:
            raise _err(source, key, f"default {default} is outside [{param.low}, {param.high}]")
    return Param(param.name, param.kind, param.low, param.high, param.step, param.choices, default)


def _parse_distribution(source: str, name: str, spec: dict, key: str, kind: str, field_kind: str) -> Param:
    args = spec[kind]
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


def _check_keys(source: str, section: str, mapping: Any, method: str | None, where: str) -> None:
    """Every key a Config field, or `method_args.<name>` of `method`."""
    if not isinstance(mapping, dict):
        raise SearchSpaceError(f"{source}: {section}: expected a mapping of Config keys, "
                               f"got {type(mapping).__name__}")
    for key in mapping:
        if isinstance(key, str) and key.startswith(METHOD_ARGS):
            if method is None:
                raise _err(source, f"{section}.{key}", "method-specific keys belong under "
                                                       "methods.<method>.search or methods.<method>.fixed "
                                                       "(or fix 'method' in this file)")
            accepted = method_defaults(method)
            if key[len(METHOD_ARGS):] not in accepted:
                raise _err(source, f"{section}.{key}", f"method {method!r} has no such argument; its "
                                                       f"method_args are {sorted(accepted) or 'none'}{where}")
        elif key not in FIELD_NAMES:
            raise _err(source, f"{section}.{key}", "unknown key: not a field of bmlr.config.Config "
                                                   f"(valid keys: {', '.join(FIELD_NAMES)})")


def _split_search(source: str, prefix: str, search: dict, fixed: dict,
                  method: str | None) -> tuple[dict[str, Param], dict[str, Any]]:
    params: dict[str, Param] = {}
    constants: dict[str, Any] = {}
    for name, spec in search.items():
        key = f"{prefix}search.{name}"
        if name in fixed:
            raise _err(source, key, "also given under 'fixed'; a key is either searched or fixed")
        if name in NOT_SEARCHABLE or name == "method" and isinstance(spec, dict):
            raise _err(source, key, f"{name!r} cannot be searched (it belongs to the study "
                                    f"or is not a scalar); put it under 'fixed'")
        if isinstance(spec, dict):
            params[name] = _parse_param(source, name, spec, key=key, method=method)
        elif isinstance(spec, list):
            raise _err(source, key, f"a bare list {spec!r} is ambiguous; write "
                                    f"{{choice: [...]}} or {{uniform: [low, high]}}")
        else:
            constants[name] = spec  # a plain value: a constant
    return params, constants


def _check_method_values(source: str, key: str, cfg_dict: dict[str, Any]) -> None:
    """Build the method of `cfg_dict`: its own checks of method_args (e.g. alpha_ogm >= 0)."""
    cfg = from_dict(cfg_dict)
    try:
        _method_registry().get(cfg.method)(cfg)
    except (ValueError, TypeError, KeyError) as err:
        raise _err(source, key, f"method {cfg.method!r} rejects it: {err}") from None


def _validate_values(source: str, prefix: str, fixed: dict, constants: dict, params: dict[str, Param],
                     base_fixed: dict[str, Any]) -> dict[str, Any]:
    """Each fixed value alone, the fixed part as a whole, and each parameter at its bounds or
    with each choice; returns the merged fixed part."""
    all_fixed = {**fixed, **constants}
    for key, value in all_fixed.items():
        section = f"{prefix}fixed" if key in fixed else f"{prefix}search"
        try:
            from_dict({**({"method": base_fixed["method"]} if "method" in base_fixed else {}), key: value})
        except ConfigError as err:
            raise _err(source, f"{section}.{key}", str(err)) from None
    merged = {**base_fixed, **all_fixed}
    try:
        base = from_dict(merged, source=f"{source} ({prefix}fixed)")
    except ConfigError as err:
        raise SearchSpaceError(str(err)) from None
    base_dict = base.to_dict()
    has_method_args = any(k.startswith(METHOD_ARGS) for k in merged)
    if has_method_args:
        _check_method_values(source, f"{prefix}fixed", base_dict)
    for name, param in params.items():
        for value in param.sample_values():
            try:
                from_dict({**base_dict, name: value})
            except ConfigError as err:
                raise _err(source, f"{prefix}search.{name}", f"value {value!r} is not valid: {err}") from None
            if name.startswith(METHOD_ARGS):
                _check_method_values(source, f"{prefix}search.{name}", {**base_dict, name: value})
    return all_fixed


def _parse_method_section(source: str, method: Any, doc: Any, shared_fixed: dict[str, Any],
                          shared_params: dict[str, Param]) -> MethodSection:
    prefix = f"methods.{method}."
    if method not in _method_registry():
        raise _err(source, f"methods.{method}", f"unknown method; expected one of {_method_registry().names()}")
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise _err(source, f"methods.{method}", f"expected a mapping with 'search' and/or 'fixed', "
                                                f"got {type(doc).__name__}")
    unknown = sorted(set(doc) - set(METHOD_SECTIONS), key=str)
    if unknown:
        raise _err(source, f"methods.{method}", f"unknown key(s) {unknown}; expected {list(METHOD_SECTIONS)}")
    search = doc.get("search") or {}
    fixed = doc.get("fixed") or {}
    ignored = set(METHOD_SPECIFIC_KEYS) - set(method_reads(method))
    for section, mapping in (("search", search), ("fixed", fixed)):
        _check_keys(source, f"{prefix}{section}", mapping, method, f" (methods.{method})")
        for key in mapping:
            if key in ignored:
                raise _err(source, f"{prefix}{section}.{key}", f"method {method!r} does not read {key!r}; "
                                                               f"searching or fixing it has no effect")
            if key in ("method", "dataset"):
                raise _err(source, f"{prefix}{section}.{key}", f"{key!r} cannot be set in a method section")
    params, constants = _split_search(source, prefix, search, fixed, method)
    base_fixed = {k: v for k, v in shared_fixed.items() if k not in params}
    base_fixed["method"] = method
    # a shared searched key the section fixes is no longer searched; the others keep their defaults
    all_fixed = _validate_values(source, prefix, fixed, constants, params, base_fixed)
    return MethodSection(params=params, fixed=all_fixed)


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
    methods = data.get("methods") or {}
    top_method = None  # a flat file that fixes its method may use method_args.<name> at the top level
    for mapping in (fixed, search):
        if isinstance(mapping, dict) and isinstance(mapping.get("method"), str):
            top_method = mapping["method"]
    if top_method is not None and top_method not in _method_registry():
        top_method = None  # reported below as an invalid value of 'method'
    for section, mapping in (("search", search), ("fixed", fixed)):
        _check_keys(source, section, mapping, top_method, "")
    if not isinstance(methods, dict):
        raise SearchSpaceError(f"{source}: methods: expected a mapping of method names to sections, "
                               f"got {type(methods).__name__}")
    if not search:
        raise SearchSpaceError(f"{source}: search: nothing to search; add at least one entry")

    params, constants = _split_search(source, "", search, fixed, top_method)
    if not params:
        raise SearchSpaceError(f"{source}: search: every entry is a constant; nothing to search")
    all_fixed = _validate_values(source, "", fixed, constants, params, {})
    sections = {str(m): _parse_method_section(source, m, doc, all_fixed, params) for m, doc in methods.items()}
    return SearchSpace(params=params, fixed=all_fixed, source=source, text=text, methods=sections)


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


__all__ = ["KINDS", "METHOD_READS", "METHOD_SPECIFIC_KEYS", "NOT_SEARCHABLE", "MethodSection", "Param",
           "SearchSpace", "SearchSpaceError", "load_search_space", "method_defaults", "method_reads",
           "parse_search_space", "resolve_search_space", "project_root", "to_flat_params"]
