"""What each row of a comparison trains: its search space (tuned), its untuned
configuration, the `--set` values that reach it, and its production configuration."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bmlr.config import METHOD_ARGS_PREFIX, Config, ConfigError, from_dict
from bmlr.methods import METHODS
from bmlr.tuning.compare.settings import ComparisonError, ComparisonSettings
from bmlr.tuning.recipes import Arm
from bmlr.tuning.search_space import SearchSpace, SearchSpaceError, method_defaults

__all__ = ["overrides_for", "check_overrides", "arm_space", "untuned_config", "check_method",
           "production_settings"]


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


def arm_space(space: SearchSpace, arm: Arm, overrides: dict[str, Any]) -> SearchSpace:
    """What a tuned arm's study searches: the method's own space with the row's keys and the
    `--set` values fixed (a fixed key is no longer searched)."""
    flat = space.for_method(arm.method)
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
    """An untuned arm's configuration: fixed part + defaults + row + `--set` values."""
    values = {**space.for_method(arm.method).untuned(), **arm.fixed_dict, **overrides_for(arm.method, overrides),
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
