"""The end of a study: the tuned winner against the same method untuned and against the baseline.

A tuned number means little alone. After the search, two references are trained once each,
concurrently, as Ray tasks in the study's Ray session, with what a trial has: the study's
seed, thread count, schedule horizon and budget (`max_epochs`), scored by the study's score
rule on the same validation split (test is never read):

* **untuned**: the study's method with the search space's defaults (each searched key's
  `default:`), what a user who did not tune would train;
* **baseline**: the winner's configuration with ``method: baseline`` (the report's baseline
  counterpart, whose learning curves it then reuses instead of training it again).

The summary prints the three scores with their standard errors and each difference against
the noise of a difference (two standard errors of it); the numbers go to
``<study>/references.json`` and to the parent MLflow run (metrics ``reference.<name>.score``
and tags). The winner's score is the best of the study's trials, so it is optimistic (the
winner's curse); the references are single runs. On by default for the embedded synthetic
data (``--references`` / ``--no-references``).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

from bmlr.config import from_dict
from bmlr.fileio import finite_or_none, write_json
from bmlr.tuning import ray_backend, tracking
from bmlr.tuning.plan import Plan, StudyOutcome
from bmlr.tuning.results import best_epoch
from bmlr.tuning.selection import score

__all__ = ["FILE", "reference_configs", "train_references", "difference_text", "run_references"]

FILE = "references.json"
History = list[dict[str, Any]]


def reference_configs(plan: Plan, best: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    """``{name: (configuration, how it was obtained)}`` of the two references."""
    from bmlr.tuning.report.baseline import counterpart_config
    from bmlr.tuning.report.study_view import StudyView

    # a trial's configuration (the fixed part, --set values, seed, threads) with each searched key's default
    defaults_of = {k: p.default for k, p in plan.space.params.items() if p.default is not None}
    untuned = {**plan.trial_base, **defaults_of}
    defaults = ", ".join(f"{k} {v}" for k, v in defaults_of.items())
    defaults = defaults or "it gives none: the configuration's values"
    out = {"untuned": (untuned, f"{plan.settings.method} with the search space's defaults ({defaults})")}
    planned = counterpart_config(StudyView(plan.study_dir), best)
    if planned is not None and plan.settings.method != "baseline":
        out["baseline"] = (planned[0].to_dict(), f"baseline at the winner's configuration (trial {best['trial_id']})")
    return out


def _share_with_report(plan: Plan, config: dict[str, Any], history: History, seconds: float) -> None:
    """The baseline reference is the report's baseline counterpart: cached where the report
    looks for it, so that the report does not train it again."""
    from bmlr.tuning.report.baseline import write_counterpart
    from bmlr.tuning.report.study_view import REPORT_DIR

    write_counterpart(plan.study_dir / REPORT_DIR, config, plan.max_epochs, history, seconds)


def _train(config: dict[str, Any], budget: int) -> History:
    """One reference run (in a Ray worker): `budget` epochs, validation only, by the loop the
    report trains its baseline counterpart with."""
    from bmlr.tuning.report.baseline import train_history

    return train_history(from_dict(config, source="reference run"), budget)


def train_references(configs: dict[str, dict[str, Any]], budget: int, cpus: float, gpus: float) -> dict[str, History]:
    """Every configuration trained at once, one Ray task each (the Ray session must be up)."""
    import ray

    task = ray.remote(num_cpus=cpus, num_gpus=gpus or 0)(_train)
    futures = {name: task.remote(config, budget) for name, config in configs.items()}
    return {name: ray.get(future) for name, future in futures.items()}


def difference_text(a: float, a_se: float | None, b: float, b_se: float | None) -> str:
    """``+4.2 points (2 SE of the difference: 3.1)``: the difference of two accuracies and two
    standard errors of it, with "; within the noise" where the difference is inside that band."""
    diff = 100 * (a - b)
    if a_se is None or b_se is None:
        return f"{diff:+.1f} points"
    band = 200 * math.sqrt(a_se ** 2 + b_se ** 2)
    inside = "; within the noise" if abs(diff) <= band else ""
    return f"{diff:+.1f} points (2 SE of the difference: {band:.1f}{inside})"


def _lines(plan: Plan, best: dict[str, Any], scored: dict[str, dict[str, Any]], n_val: int | None,
           n_trials: int) -> list[str]:
    s = plan.settings
    w, w_se = score(best), finite_or_none(best.get("score_se"))
    lines = [f"tuned against untuned, on the same validation split ({n_val or '?'} samples), seed {s.seed}, at most "
             f"{plan.max_epochs} epochs each, score {s.rule.name}:",
             f"  tuned {s.method} (trial {best['trial_id']}, the best of {n_trials}): {w:.4f}"
             + (f" +- {w_se:.4f}" if w_se is not None else "")]
    for name, entry in scored.items():
        text = (f"  {name} ({entry['how']}): {entry['score']:.4f}"
                + (f" +- {entry['score_se']:.4f}" if entry.get("score_se") is not None else ""))
        lines.append(text + f"; tuned - {name} = {difference_text(w, w_se, entry['score'], entry.get('score_se'))}")
    lines.append("  (each reference is one run trained after the study; the winner is the best of many runs, "
                 "so its score is optimistic: --confirm K retrains the top K with new seeds)")
    return lines


def run_references(plan: Plan, outcome: StudyOutcome, log: Callable[[str], None]) -> dict[str, Any]:
    """Train and score the references of a finished study, print the comparison, record it.
    Returns what ``references.json`` holds (empty without a winner)."""
    best = outcome.best
    if best is None or score(best) is None:
        return {}
    s, store = plan.settings, plan.store
    planned = reference_configs(plan, best)
    log(f"\nreferences: training {', '.join(planned)} ({plan.max_epochs} epochs each, seed {s.seed}, at once; "
        f"--no-references skips them)")
    start = time.time()
    histories = train_references({k: v[0] for k, v in planned.items()}, plan.max_epochs, s.cpus_per_trial,
                                 ray_backend.gpus_per_trial(s.gpus_per_trial))
    if "baseline" in histories:
        _share_with_report(plan, planned["baseline"][0], histories["baseline"], time.time() - start)
    n_val = (store.data_info().get("sizes") or {}).get("val")
    scored = {}
    for name, history in histories.items():
        row = best_epoch(history, s.rule, n_val)
        scored[name] = {"how": planned[name][1], "score": row.get("score"), "score_se": row.get("score_se"),
                        "best_epoch": row.get("best_epoch"), "config": planned[name][0], "history": history}
    record = {"winner": {"trial_id": best["trial_id"], "score": score(best), "score_se": best.get("score_se")},
              "references": scored, "max_epochs": plan.max_epochs, "seconds": round(time.time() - start, 1)}
    write_json(plan.study_dir / FILE, record)
    client = tracking.client_for(plan.tracking_uri)
    for name, entry in scored.items():
        client.log_metric(plan.parent_run_id, f"reference.{name}.score", float(entry["score"]))
        client.set_tag(plan.parent_run_id, f"reference.{name}", entry["how"][:5000])
    client.log_artifact(plan.parent_run_id, str(plan.study_dir / FILE))
    for line in _lines(plan, best, scored, n_val, len(outcome.rows)):
        log(line)
    return record
