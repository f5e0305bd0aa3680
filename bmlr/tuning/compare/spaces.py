"""What each row of a comparison trains: its search space (tuned), its untuned
configuration, the `--set` values that reach it, its method's authors' training settings
(`bmlr.methods.protocols`), and its production configuration."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bmlr.config import METHOD_ARGS_PREFIX, Config, ConfigError, from_dict
from bmlr.methods import METHODS
from bmlr.methods.protocols import REFERENCE_LR, Protocol, lr_factor, protocol_for
from bmlr.tuning.compare.settings import ComparisonError, ComparisonSettings
from bmlr.tuning.recipes import Arm
from bmlr.tuning.search_space import Param, SearchSpace, SearchSpaceError, method_defaults

__all__ = ["overrides_for", "check_overrides", "user_named_keys", "protocol_space", "arm_space", "untuned_config",
           "check_method", "production_settings"]


def overrides_for(method: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """`--set` values that apply to `method`: every plain key, and the `method_args.<name>`
    keys the method accepts (`--set method_args.anchor_epochs=4` reaches UDI only)."""
    accepted = method_defaults(method)
    return {k: v for k, v in overrides.items()
            if not k.startswith(METHOD_ARGS_PREFIX) or k[len(METHOD_ARGS_PREFIX):] in accepted}


def check_overrides(arms: list[Arm], overrides: dict[str, Any]) -> list[str]:
    """`method_args.<name>` overrides must name an argument of some method (a typo is an
    error); returns those that no row of this comparison takes (the same `--set` list can
    then serve every recipe)."""
    unused = []
    for key in overrides:
        if not key.startswith(METHOD_ARGS_PREFIX):
            continue
        name = key[len(METHOD_ARGS_PREFIX):]
        takers = [m for m in METHODS.names() if name in method_defaults(m)]
        if not takers:
            raise ComparisonError(f"--set {key}: no method accepts {name!r}")
        if not any(key in overrides_for(a.method, {key: 0}) for a in arms):
            unused.append(key)
    return unused


def user_named_keys(space: SearchSpace, arm: Arm, overrides: dict[str, Any]) -> set[str]:
    """The keys someone chose for this row: the row's own (a recipe's fusion), the `--set`
    values that reach its method, and the method's section of the search space. A method's
    authors' setting never replaces them."""
    section = space.methods.get(arm.method)
    named = set(arm.fixed_dict) | set(overrides_for(arm.method, overrides))
    if section is not None:
        named |= set(section.params) | set(section.fixed)
    return named


def _scaled(value: Any, factor: float) -> Any:
    """A learning rate times `factor`, rounded to 12 significant digits (5e-3 x 20 = 0.1, not
    0.10000000000000002); anything that is not a number is left alone."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return float(f"{value * factor:.12g}")


def _scaled_lr(param: Param, factor: float) -> Param:
    """A searched lr moved by `factor`: the same width (log-width for loguniform) around the
    method's lr; a param without a default gets the scaled Config default."""
    default = _scaled(REFERENCE_LR if param.default is None else param.default, factor)
    if param.kind == "choice":
        return dataclasses.replace(param, choices=tuple(_scaled(c, factor) for c in param.choices), default=default)
    return dataclasses.replace(param, low=_scaled(param.low, factor), high=_scaled(param.high, factor),
                               step=None if param.step is None else _scaled(param.step, factor), default=default)


def _apply_protocol(flat: SearchSpace, protocol: Protocol, named: set[str]) -> tuple[dict, dict, list[str]]:
    """`flat`'s params and fixed part with `protocol`'s settings where no one named the key;
    a searched key stays searched (lr: moved by the protocol's factor). Also what changed."""
    params, fixed, changed = dict(flat.params), dict(flat.fixed), []
    for key, value in protocol.settings.items():
        if key in named or key in params or key == "lr":
            continue
        fixed[key] = value
        changed.append(f"{key}={value}")
    factor = lr_factor(protocol)
    if factor is not None and "lr" not in named:
        if "lr" in params:
            params["lr"] = _scaled_lr(params["lr"], factor)
            changed.append(f"lr searched x{factor:g} ({params['lr'].describe()})")
        else:
            fixed["lr"] = _scaled(fixed.get("lr", REFERENCE_LR), factor)
            changed.append(f"lr={fixed['lr']} (x{factor:g})")
    return params, fixed, changed


def protocol_space(space: SearchSpace, arm: Arm, overrides: dict[str, Any]) -> SearchSpace:
    """The flat space of `arm`'s method with its authors' training settings
    (`bmlr.methods.protocols`) in place of the shared ones, where `arm.protocol` is set and
    the protocol has any: each setting goes to the fixed part unless someone named the key
    (`user_named_keys`) or it is searched (a searched key stays searched). The lr is the
    space's lr times the protocol's factor (its default and, searched, its range). A row
    whose optimizer someone chose (`--set optimizer=...`, the method's section) other than
    the authors' keeps the shared settings: their lr and schedule belong to their optimizer."""
    flat = space.for_method(arm.method)
    protocol = protocol_for(arm.method)
    if not arm.protocol or not protocol.settings:
        return flat
    named = user_named_keys(space, arm, overrides)
    chosen = {**flat.fixed, **arm.fixed_dict, **overrides_for(arm.method, overrides)}.get("optimizer")
    if "optimizer" in named and chosen != protocol.settings.get("optimizer", chosen):
        return flat
    params, fixed, changed = _apply_protocol(flat, protocol, named)
    out = SearchSpace(params=params, fixed=fixed, source=f"{flat.source} + its authors' settings",
                      dropped=flat.dropped, defaults=flat.defaults)
    out.text = out.to_yaml(header=[f"The search space of method {arm.method!r}, from {space.source}, with its "
                                   f"authors' training settings: {protocol.source}.",
                                   f"Changed: {'; '.join(changed) or 'nothing (every key named by the user)'}."])
    return out


def arm_space(space: SearchSpace, arm: Arm, overrides: dict[str, Any]) -> SearchSpace:
    """What a tuned arm's study searches: the method's own space with its authors' settings
    (`protocol_space`), the row's keys and the `--set` values fixed (a fixed key is no longer
    searched)."""
    flat = protocol_space(space, arm, overrides)
    if not flat.params:
        raise ComparisonError(f"row {arm.label!r}: method {arm.method!r} has nothing to search in {space.source} "
                              f"(add entries under methods.{arm.method}.search)")
    fixed = {**arm.fixed_dict, **overrides_for(arm.method, overrides)}
    if not fixed:
        return flat
    try:
        return flat.with_fixed(fixed)
    except SearchSpaceError as err:
        raise ComparisonError(f"row {arm.label!r}: {err}") from None


def untuned_config(space: SearchSpace, arm: Arm, dataset: str, data_root: str | None,
                   overrides: dict[str, Any]) -> Config:
    """An untuned arm's configuration: fixed part + defaults (with the method's authors'
    settings, `protocol_space`) + row + `--set` values."""
    values = {**protocol_space(space, arm, overrides).untuned(), **arm.fixed_dict,
              **overrides_for(arm.method, overrides),
              "dataset": dataset, "method": arm.method}
    if data_root:
        values["data_root"] = data_root
    try:
        cfg = from_dict(values, source=f"row {arm.label!r} (untuned: {space.source} fixed + defaults)")
    except ConfigError as err:
        raise ComparisonError(str(err)) from None
    check_method(cfg, arm.label)
    return cfg


def check_method(cfg: Config, label: str) -> None:
    """The row's method accepts its configuration (built once, as training would)."""
    try:
        METHODS.get(cfg.method)(cfg)
    except (ValueError, TypeError, KeyError) as err:
        raise ComparisonError(f"row {label!r}: method {cfg.method!r}: {err}") from None


def production_settings(cfg: Config, settings: ComparisonSettings, run_dir: Path) -> Config:
    """`cfg` trained into `run_dir` with the comparison's production seeds and epochs."""
    changes: dict[str, Any] = {"output_dir": str(run_dir.parent), "name": run_dir.name}
    if settings.seeds is not None:
        changes["seeds"] = list(settings.seeds)
    if settings.epochs is not None:
        changes["epochs"] = int(settings.epochs)
    return cfg.replace(**changes)
