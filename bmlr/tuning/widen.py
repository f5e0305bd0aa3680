"""Ranges that move (``--widen``): where a finished search's winner lies at the edge of a numeric
range (:meth:`Param.edge`: its outer tenth, on a log scale for a loguniform one), the best may
lie beyond it, so a second study searches that range widened, told every trial of the first.

* :func:`widen_param` extends a range on the winner's side by half its width (on a log scale
  for a loguniform range: [1e-4, 1e-2] becomes [1e-4, 1e-1]), or as far as the key allows
  where that is not a valid value of it (beta [0.1, 0.9] becomes [0.1, 1]);
* :func:`widened_space` is the search space with every flagged range widened;
* :func:`run_widened` runs the second study, ``<name>-widened``, beside the first: the same
  settings and number of trials, its space written to the first study's folder
  (``widened_space.yaml``), and every trial of the first given to Optuna as a known result
  (Ray's ``points_to_evaluate`` with ``evaluated_rewards``: nothing is trained twice, and the
  untuned first trial is among them). Each study exports its own winner; the summary compares
  the two with their noise.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable

from bmlr.config import ConfigError
from bmlr.tuning.results import sampled_values
from bmlr.tuning.search_space import Param, SearchSpace, SearchSpaceError, load_search_space
from bmlr.tuning.selection import difference_text, score
from bmlr.tuning.store import StudyStore

__all__ = ["WIDENED_SPACE", "widen_param", "widened_space", "warm_points", "run_widened"]

WIDENED_SPACE = "widened_space.yaml"  # in the first study's folder
BISECTIONS = 40  # where half a width is not a valid value: the furthest valid bound, found this finely


def widen_param(param: Param, side: str, valid: Callable[[Any], bool]) -> Param | None:
    """``param`` with its ``side`` ("low" or "high") bound moved out by half the range's width (log
    scale for a loguniform range, whole numbers for an int one); where that bound is not
    ``valid``, as far as the key allows (found by bisection, then rounded to 6 significant
    digits where that stays valid: beta's limit 1 is reached exactly). None where the bound
    cannot move at all."""
    low, high = float(param.low), float(param.high)
    old = low if side == "low" else high

    def bound_at(share: float) -> float:
        if param.log:
            factor = (high / low) ** share
            bound = low / factor if side == "low" else high * factor
        else:
            bound = low - (high - low) * share if side == "low" else high + (high - low) * share
        if param.kind == "int":
            bound = math.floor(bound) if side == "low" else math.ceil(bound)
        return bound

    share = 0.5
    if not valid(bound_at(share)):
        inside, outside = 0.0, share
        for _ in range(BISECTIONS):
            middle = (inside + outside) / 2
            inside, outside = (middle, outside) if valid(bound_at(middle)) else (inside, middle)
        share = inside
    bound = bound_at(share)
    rounded = float(f"{bound:.6g}")
    bound = rounded if valid(rounded) and abs(rounded - old) >= abs(bound - old) else bound
    if bound == old or not valid(bound):
        return None
    return replace(param, low=bound) if side == "low" else replace(param, high=bound)


def widened_space(space: SearchSpace, sampled: dict[str, Any]) -> tuple[SearchSpace, list[str]]:
    """The space with every range whose ``sampled`` value lies at an edge widened on that side,
    and a line per change (or per range that could not move); the space itself where none moved."""
    def valid(key: str) -> Callable[[Any], bool]:
        def check(value: Any) -> bool:
            try:
                space.trial_config(space.fixed, {key: value})
            except (ConfigError, SearchSpaceError, ValueError):
                return False
            return not (space.params[key].log and value <= 0)
        return check

    params, lines = dict(space.params), []
    for key, value in sampled.items():
        param = space.params.get(key)
        side = param.edge(value) if param is not None else None
        if side is None:
            continue
        wide = widen_param(param, side, valid(key))
        if wide is None:
            lines.append(f"{key}: {value:.4g} is at the {side} edge of [{param.low}, {param.high}], which is as far "
                         f"as the key goes: not widened")
            continue
        params[key] = wide
        lines.append(f"{key}: {value:.4g} is at the {side} edge of [{param.low}, {param.high}]: searched in "
                     f"[{wide.low:.4g}, {wide.high:.4g}]")
    if params == space.params:
        return space, lines
    out = SearchSpace(params, dict(space.fixed), f"{space.source} (widened)", methods=dict(space.methods),
                      dropped=space.dropped, defaults=space.defaults)
    out.text = out.to_yaml(header=[f"From {space.source}, widened where the winner lay at a range edge:",
                                   *lines])
    return out, lines


def warm_points(rows: list[dict[str, Any]], space: SearchSpace) -> list[dict[str, Any]]:
    """Every scored trial of ``rows`` as a known result for Optuna: its searched values and score."""
    points = []
    for row in rows:
        values = sampled_values(row, space)
        if score(row) is not None and set(values) == set(space.params):
            points.append({"params": values, "value": float(score(row))})
    return points


def run_widened(runtime, first, log: Callable[[str], None] = print):
    """The second study of a finished search ``first`` (a :class:`StudyOutcome`) whose winner
    lay at a range edge, with the first's settings as ``study.json`` records them (a resumed
    study's too), or None where no range moved."""
    from bmlr.tuning.study import StudySettings, run_study

    if first.best is None or first.interrupted:
        return None
    store = StudyStore(first.study_dir)
    space = load_search_space(store.space_path)
    wide, lines = widened_space(space, sampled_values(first.best, space))
    if wide is space:
        log("\n--widen: " + ("; ".join(lines) if lines else "the winner lies inside every range: nothing to widen"))
        return None
    path = wide.save(first.study_dir / WIDENED_SPACE)
    name = f"{first.study_dir.name}-widened"
    warm = warm_points(first.rows, space)
    settings = replace(StudySettings(**store.settings()), name=name, search_space=str(path), warm_start=warm,
                       folder=None, storage=str(first.study_dir.parent.parent))  # beside the first, wherever it is now
    log(f"\n--widen: {'; '.join(lines)}\n  a second study, {name}: {_trials(settings.samples)} in {path}, told "
        f"the {_trials(len(warm))} of {first.study_dir.name}")
    second = run_study(settings, runtime)
    if second.best is not None:
        a, b = second.best, first.best
        log(f"widened study's winner {score(a):.4f} against the first study's {score(b):.4f}: "
            + difference_text(score(a), a.get("score_se"), score(b), b.get("score_se"))
            + f"; each exported its own best.yaml ({second.best_yaml}, {first.best_yaml})")
    return second


def _trials(n: int) -> str:
    return f"{n} trial" + ("" if n == 1 else "s")
