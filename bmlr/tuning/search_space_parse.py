"""Search-space documents -> validated `SearchSpace` objects (the grammar: `bmlr.tuning.search_space`).

`parse_search_space` checks a parsed YAML document and builds the space: every key a field of
`bmlr.config.Config` (or `method_args.<name>` of the method it belongs to), each distribution
well formed, `fixed` valid as a Config, each search entry valid at its bounds or with each
choice, each method's arguments accepted by the method's `Args`. Every error is a
`SearchSpaceError` whose message starts with the source and the key. `grid_space` builds the
space of a grid (every listed value of a few keys) the same way.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from bmlr.config import FIELD_NAMES, ConfigError, field_kind, from_dict
from bmlr.methods import METHOD_SPECIFIC_KEYS, METHODS, arg_kinds
from bmlr.tuning.scores import ScoreError, parse_score
from bmlr.tuning.search_space_types import (KINDS, METHOD_ARGS, NOT_SEARCHABLE, SCHEDULERS, MethodSection, Param,
                                            SearchSpace, SearchSpaceError)

__all__ = ["SECTIONS", "METHOD_SECTIONS", "parse_search_space", "grid_space"]

SECTIONS = ("search", "fixed", "methods", "score", "scheduler", "grace_period", "max_epochs")
METHOD_SECTIONS = ("search", "fixed")


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


def _field_kind(name: str, method: str | None = None) -> str:
    """"bool", "int", "float" or "str": the type of Config key `name` or of `method_args.<arg>`
    of `method` (its `Args` field)."""
    if name.startswith(METHOD_ARGS):
        kinds = arg_kinds(METHODS.get(method).Args) if method else {}
        return kinds.get(name[len(METHOD_ARGS):], "str")
    return field_kind(name)


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


def _parse_distribution(source: str, name: str, spec: dict, key: str, kind: str, key_kind: str) -> Param:
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
    if key_kind not in ("int", "float"):
        raise _err(source, key, f"{kind} needs a numeric key, but {name!r} is a {key_kind}; use choice")
    if kind in ("uniform", "loguniform") and key_kind == "int":
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
            accepted = METHODS.get(method).defaults()
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
        METHODS.get(cfg.method).parse_args(cfg.method_args, cfg.method)
    except ValueError as err:
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
    if method not in METHODS:
        raise _err(source, f"methods.{method}", f"unknown method; expected one of {METHODS.names()}")
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
    ignored = set(METHOD_SPECIFIC_KEYS) - set(METHODS.get(method).reads)
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
    if top_method is not None and top_method not in METHODS:
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
    score = data.get("score")
    if score is not None:
        try:
            score = parse_score(str(score), f"{source}: score").name
        except ScoreError as err:
            raise SearchSpaceError(str(err)) from None
    scheduler = data.get("scheduler")
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise SearchSpaceError(f"{source}: scheduler: {scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    grace = data.get("grace_period")
    if grace is not None and (isinstance(grace, bool) or not isinstance(grace, int) or grace < 1):
        raise SearchSpaceError(f"{source}: grace_period: expected a whole number of epochs >= 1, got {grace!r}")
    budget = data.get("max_epochs")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise SearchSpaceError(f"{source}: max_epochs: expected a whole number of epochs >= 1, got {budget!r}")
    return SearchSpace(params=params, fixed=all_fixed, source=source, text=text, methods=sections, score=score,
                       scheduler=scheduler, grace_period=grace, max_epochs=budget)


def grid_space(values: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any], source: str,
               header: list[str] | None = None) -> SearchSpace:
    """The space whose only searched keys are `values` (each a choice among its list, in order)
    and whose fixed part is `fixed`, checked like a file; e.g. the alpha x beta grid of a
    surface over a base configuration. `text` is its file (with `header` as comments)."""
    doc = {"search": {k: {"choice": list(v)} for k, v in values.items()},
           "fixed": {k: v for k, v in fixed.items() if k not in values}}
    space = parse_search_space(doc, source=source)
    space.text = space.to_yaml(header=header)
    return space
