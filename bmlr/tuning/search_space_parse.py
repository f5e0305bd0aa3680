"""Search-space documents -> checked values (the grammar: `bmlr.tuning.search_space`).

`check_document` checks a parsed YAML document: every key a field of `bmlr.config.Config` (or
`method_args.<name>` of the method it belongs to), each distribution well formed, `fixed` valid
as a Config, each search entry valid at its bounds or with each choice, each method's arguments
accepted by the method's `Args`, and the study defaults. Every error is a `SearchSpaceError`
whose message starts with the source and the key. It returns plain values, which
`bmlr.tuning.search_space.parse_search_space` turns into objects: this module imports none.
"""
from __future__ import annotations

import math
from typing import Any

from bmlr.config import FIELD_NAMES, METHOD_ARGS_PREFIX, Config, ConfigError, field_kind, from_dict
from bmlr.methods import METHOD_SPECIFIC_KEYS, METHODS, arg_kinds
from bmlr.tuning.ray_backend import AUTO, SCHEDULERS
from bmlr.tuning.scores import ScoreError, parse_score

__all__ = ["KINDS", "METHOD_ARGS", "NOT_SEARCHABLE", "SECTIONS", "METHOD_SECTIONS", "DEFAULT_KEYS", "SearchSpaceError",
           "check_document", "checked_config"]

KINDS = ("uniform", "loguniform", "int", "choice")
METHOD_ARGS = METHOD_ARGS_PREFIX  # "method_args.": `method_args.<name>` keys
# Keys a study controls itself or that are not scalar hyperparameters: never sampled.
NOT_SEARCHABLE = ("dataset", "data_root", "cache_dir", "seeds", "name", "output_dir", "device",
                  "method_args", "adam_betas", "num_workers")
DEFAULT_KEYS = ("score", "scheduler", "grace_period", "max_epochs")  # the study defaults (StudyDefaults)
SECTIONS = ("search", "fixed", "methods", *DEFAULT_KEYS)
METHOD_SECTIONS = ("search", "fixed")
Entry = dict[str, Any]  # one searched key: the keyword arguments of `bmlr.tuning.search_space.Param`
Part = tuple[dict[str, Entry], dict[str, Any]]  # what a space or a method section searches, what it fixes


class SearchSpaceError(ConfigError):
    """A search-space file is malformed; the message names the file and the key."""


def checked_config(values: dict[str, Any], source: str = "", where: str = "") -> Config:
    """`bmlr.config.from_dict(values, source)`, its `ConfigError` raised as a `SearchSpaceError`
    (the message after `where`)."""
    try:
        return from_dict(values, source=source)
    except ConfigError as err:
        raise SearchSpaceError(f"{where}{err}") from None


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


def _parse_param(source: str, name: str, spec: dict, key: str, method: str | None) -> Entry:
    kinds = [k for k in spec if k in KINDS]
    unknown = sorted(set(spec) - set(KINDS) - {"step", "default"})
    if unknown:
        raise _err(source, key, f"unknown key(s) {unknown}; expected one of {list(KINDS)} "
                                f"(plus an optional 'step' for uniform and int, and 'default')")
    if len(kinds) != 1:
        raise _err(source, key, f"expected exactly one of {list(KINDS)}, got {sorted(spec) or 'none'}")
    entry = _parse_distribution(source, name, spec, key, kinds[0], _field_kind(name, method))
    if "default" not in spec:
        return entry
    default = spec["default"]
    if entry["kind"] == "choice":
        if default not in entry["choices"]:
            raise _err(source, key, f"default {default!r} is not one of the choices {list(entry['choices'])}")
    else:
        default = _number(source, f"{key}.default", default, entry["kind"] == "int")
        if not entry["low"] <= default <= entry["high"]:
            raise _err(source, key, f"default {default} is outside [{entry['low']}, {entry['high']}]")
    return {**entry, "default": default}


def _parse_distribution(source: str, name: str, spec: dict, key: str, kind: str, key_kind: str) -> Entry:
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
        return {"name": name, "kind": kind, "choices": tuple(args)}
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
    return {"name": name, "kind": kind, "low": low, "high": high, "step": step}


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


def _split_search(source: str, prefix: str, search: dict, fixed: dict, method: str | None) -> Part:
    params: dict[str, Entry] = {}
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


def _validate_values(source: str, prefix: str, fixed: dict, constants: dict, params: dict[str, Entry],
                     base_fixed: dict[str, Any]) -> dict[str, Any]:
    """Each fixed value alone, the fixed part as a whole, and each parameter at its bounds or
    with each choice; returns the merged fixed part."""
    all_fixed = {**fixed, **constants}
    for key, value in all_fixed.items():
        section = f"{prefix}fixed" if key in fixed else f"{prefix}search"
        checked_config({**({"method": base_fixed["method"]} if "method" in base_fixed else {}), key: value},
                       where=f"{source}: {section}.{key}: ")
    merged = {**base_fixed, **all_fixed}
    base_dict = checked_config(merged, source=f"{source} ({prefix}fixed)").to_dict()
    if any(k.startswith(METHOD_ARGS) for k in merged):
        _check_method_values(source, f"{prefix}fixed", base_dict)
    for name, entry in params.items():
        for value in entry.get("choices") or (entry["low"], entry["high"]):  # every choice, or the bounds
            checked_config({**base_dict, name: value},
                           where=f"{source}: {prefix}search.{name}: value {value!r} is not valid: ")
            if name.startswith(METHOD_ARGS):
                _check_method_values(source, f"{prefix}search.{name}", {**base_dict, name: value})
    return all_fixed


def _parse_method_section(source: str, method: Any, doc: Any, shared_fixed: dict[str, Any]) -> Part:
    """`methods.<method>`: what it searches and fixes on top of the shared part."""
    prefix = f"methods.{method}."
    if method not in METHODS:
        raise _err(source, f"methods.{method}", f"unknown method; expected one of {METHODS.names()}")
    doc = {} if doc is None else doc
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
    base_fixed = {k: v for k, v in shared_fixed.items() if k not in params} | {"method": method}
    # a shared searched key the section fixes is no longer searched; the others keep their defaults
    all_fixed = _validate_values(source, prefix, fixed, constants, params, base_fixed)
    return params, all_fixed


def check_document(data: Any, source: str) -> tuple[dict[str, Entry], dict[str, Any], dict[str, Part], dict[str, Any]]:
    """A parsed YAML document, checked: its searched entries, its fixed part, each method's
    section (entries, fixed part) and its study defaults (`DEFAULT_KEYS`, None where not given).
    Every error names `source` and the key."""
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
    # a flat file that fixes its method may use method_args.<name> at the top level (an unknown
    # method is reported below as an invalid value of 'method')
    named = [m["method"] for m in (fixed, search) if isinstance(m, dict) and isinstance(m.get("method"), str)]
    top_method = named[-1] if named and named[-1] in METHODS else None
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
    sections = {str(m): _parse_method_section(source, m, doc, all_fixed) for m, doc in methods.items()}
    return params, all_fixed, sections, _study_defaults(data, source)


def _study_defaults(data: dict, source: str) -> dict[str, Any]:
    """`score:` (its rule's name), `scheduler:`, `grace_period:` and `max_epochs:`, checked."""
    out = {key: data.get(key) for key in DEFAULT_KEYS}
    if out["score"] is not None:
        try:
            out["score"] = parse_score(str(out["score"]), f"{source}: score").name
        except ScoreError as err:
            raise SearchSpaceError(str(err)) from None
    if out["scheduler"] is not None and out["scheduler"] not in SCHEDULERS:
        raise SearchSpaceError(f"{source}: scheduler: {out['scheduler']!r} is not one of {', '.join(SCHEDULERS)}")
    for key in ("grace_period", "max_epochs"):
        epochs = out[key]
        if key == "grace_period" and epochs == AUTO:
            continue
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            auto = " or auto" if key == "grace_period" else ""
            raise SearchSpaceError(f"{source}: {key}: expected a whole number of epochs >= 1{auto}, got {epochs!r}")
    return out
