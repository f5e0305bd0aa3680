"""The end of a study: the tuned winner against the same method untuned and against the baseline.

A tuned number means little alone. After the search, two references are trained once each,
concurrently, as Ray tasks in the study's Ray session, with what a trial has: the study's
seed, thread count, schedule horizon and budget (`max_epochs`), scored by the study's score
rule on the same validation split (test is never read):

* **untuned**: the study's method with the search space's defaults (each searched key's
  `default:`), what a user who did not tune would train. A study enqueues that configuration
  as its first trial: where that trial ran the whole budget, its history is the reference (the
  same configuration, seed and threads would train the same epochs again) and nothing is trained;
* **baseline**: the winner's configuration with ``method: baseline`` (whose per-epoch history
  the report's learning curves draw beside the winner's).

The summary prints the three scores with their standard errors and each difference against
the noise of a difference (two standard errors of it); the numbers go to
``<study>/references.json`` and to the parent MLflow run (metrics ``reference.<name>.score``
and tags). The winner's score is the best of the study's trials, so it is optimistic (the
winner's curse); the references are single runs. On by default for the embedded synthetic
data (``--references`` / ``--no-references``).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import yaml

from bmlr.config import from_dict, load_config
from bmlr.fileio import finite_or_none, write_json
from bmlr.tuning import ray_backend
from bmlr.tuning.plan import Plan, StudyOutcome
from bmlr.tuning.results import best_epoch, untuned_row
from bmlr.tuning.selection import difference_text, score

__all__ = ["FILE", "reference_configs", "baseline_config", "reused_untuned", "train_references", "difference_text",
           "run_references"]

FILE = "references.json"
History = list[dict[str, Any]]


def reference_configs(plan: Plan, best: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    """``{name: (configuration, how it was obtained)}`` of the two references."""
    # a trial's configuration (the fixed part, --set values, seed, threads) with each searched key's default
    defaults_of = plan.space.defaults_point()
    untuned = {**plan.trial_base, **defaults_of}
    defaults = ", ".join(f"{k} {v}" for k, v in defaults_of.items())
    defaults = defaults or "it gives none: the configuration's values"
    out = {"untuned": (untuned, f"{plan.settings.method} with the search space's defaults ({defaults})")}
    if plan.store.best_path.is_file() and plan.settings.method != "baseline":
        out["baseline"] = (baseline_config(plan, best), f"baseline at the winner's configuration (trial "
                                                        f"{best['trial_id']})")
    return out


def baseline_config(plan: Plan, best: dict[str, Any]) -> dict[str, Any]:
    """The winner's production configuration (``best.yaml``) with ``method: baseline`` and the
    trial's one seed; its epochs the schedule's horizon, stretched to the study's budget as a
    trial's is."""
    cfg = load_config(plan.store.best_path).to_dict()
    seeds = best.get("param.seeds")
    seeds = yaml.safe_load(seeds) if isinstance(seeds, str) else seeds
    seed = int(seeds[0]) if isinstance(seeds, (list, tuple)) and seeds else plan.settings.seed
    cfg.update(method="baseline", epochs=max(int(cfg["epochs"]), plan.max_epochs), seeds=[seed], name=None)
    return from_dict(cfg, source="baseline reference").to_dict()


def _train(config: dict[str, Any], budget: int) -> History:
    """One reference run (in a Ray worker): `budget` epochs of `config` from scratch,
    validation only, on at most 4 threads unless it sets its own."""
    import torch

    from bmlr.engine import Trainer

    cfg = from_dict(config, source="reference run")
    if not cfg.threads:
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    history = Trainer(cfg, seed=cfg.seeds[0]).fit(budget)
    return [{k: finite_or_none(v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for m in history]


def reused_untuned(plan: Plan, rows: list[dict[str, Any]]) -> tuple[str, History] | None:
    """``(trial id, history)`` of the untuned configuration's trial where it trained every epoch
    of the budget (it completed, with a history of ``max_epochs`` epochs), else None."""
    row = untuned_row(plan, rows)
    if row is None or row.get("status") != "completed":
        return None
    history = plan.store.history(row["trial_id"])
    return (row["trial_id"], history[:plan.max_epochs]) if len(history) >= plan.max_epochs else None


def train_references(configs: dict[str, dict[str, Any]], budget: int, cpus: float, gpus: float) -> dict[str, History]:
    """Every configuration trained at once, one Ray task each (the Ray session must be up)."""
    import ray

    task = ray.remote(num_cpus=cpus, num_gpus=gpus or 0)(_train)
    futures = {name: task.remote(config, budget) for name, config in configs.items()}
    return {name: ray.get(future) for name, future in futures.items()}


def _lines(plan: Plan, best: dict[str, Any], scored: dict[str, dict[str, Any]], n_val: int | None,
           n_trials: int) -> list[str]:
    s = plan.settings
    w, w_se = score(best), finite_or_none(best.get("score_se"))
    lines = [f"tuned against untuned, on the same validation split ({n_val or '?'} samples), seed {s.seed}, at most "
             f"{plan.max_epochs} epochs each, score {plan.rule.name}:",
             f"  tuned {s.method} (trial {best['trial_id']}, the best of {n_trials}): {w:.4f}"
             + (f" +- {w_se:.4f}" if w_se is not None else "")]
    for name, entry in scored.items():
        text = (f"  {name} ({entry['how']}): {entry['score']:.4f}"
                + (f" +- {entry['score_se']:.4f}" if entry.get("score_se") is not None else ""))
        lines.append(text + f"; tuned - {name} = {difference_text(w, w_se, entry['score'], entry.get('score_se'))}")
    lines.append("  (each reference is one run, trained after the study or the untuned trial's own; the winner is "
                 "the best of many runs, so its score is optimistic: --confirm K retrains the top K with new seeds)")
    return lines


def run_references(plan: Plan, outcome: StudyOutcome, log: Callable[[str], None]) -> dict[str, Any]:
    """Train and score the references of a finished study, print the comparison, record it.
    Returns what ``references.json`` holds (empty without a winner)."""
    best = outcome.best
    if best is None or score(best) is None:
        return {}
    s, store = plan.settings, plan.store
    planned = reference_configs(plan, best)
    histories: dict[str, History] = {}
    reused = reused_untuned(plan, outcome.rows)
    if reused is not None:
        trial_id, histories["untuned"] = reused
        planned["untuned"] = (planned["untuned"][0], f"{planned['untuned'][1]}, trial {trial_id}")
    to_train = {k: v[0] for k, v in planned.items() if k not in histories}
    each = "each, " if len(to_train) > 1 else ""
    log(f"\nreferences: training {', '.join(to_train) or 'nothing'} ({plan.max_epochs} epochs {each}seed {s.seed}"
        f"{', at once' if each else ''}; --no-references skips them)"
        + ("; untuned: its trial ran the whole budget, its history is the reference" if reused else ""))
    start = time.time()
    if to_train:
        histories.update(train_references(to_train, plan.max_epochs, s.cpus_per_trial,
                                          ray_backend.gpus_per_trial(s.gpus_per_trial)))
    n_val = (store.data_info().get("sizes") or {}).get("val")
    scored = {}
    for name, history in histories.items():
        row = best_epoch(history, plan.rule, n_val)
        scored[name] = {"how": planned[name][1], "score": row.get("score"), "score_se": row.get("score_se"),
                        "best_epoch": row.get("best_epoch"), "config": planned[name][0], "history": history}
    record = {"winner": {"trial_id": best["trial_id"], "score": score(best), "score_se": best.get("score_se")},
              "references": scored, "max_epochs": plan.max_epochs, "seconds": round(time.time() - start, 1)}
    write_json(plan.study_dir / FILE, record)
    plan.runs.log_metrics({f"reference.{name}.score": float(entry["score"]) for name, entry in scored.items()})
    plan.runs.set_tags({f"reference.{name}": entry["how"] for name, entry in scored.items()})
    plan.runs.log_artifacts([plan.study_dir / FILE])
    for line in _lines(plan, best, scored, n_val, len(outcome.rows)):
        log(line)
    return record
