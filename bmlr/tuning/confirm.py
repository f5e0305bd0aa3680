"""The confirmation stage: after the search, the top configurations are trained again with
new seeds, and the exported winner is the one with the best mean over those seeds.

A search ranks its trials by one seed each; the top few are often inside each other's noise
(:func:`bmlr.tuning.selection.noise_note`), and the maximum of many noisy numbers is an
optimistic pick (the winner's curse). The confirmation trains the top ``--confirm`` distinct
configurations with ``--confirm-seeds`` seeds the search never used, at the production epochs
and by the production protocol (every epoch, the best validation epoch kept), all at once
through Ray (a grid, no early stopping). Each confirmation run is an MLflow run nested under
the trial it confirms (tags ``confirmation_of``, ``bmlr.role=confirmation``). The candidate
with the highest mean validation accuracy wins (ties: the search's order); ``best.yaml`` is
rewritten with every candidate's mean +- std and the seeds in its header, the MLflow winner's
mark moves to it, and ``confirmation.csv`` keeps the rows. Test data are never read.
"""
from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any, Callable

from bmlr.tuning import ray_backend
from bmlr.tuning.plan import Plan, StudyOutcome
from bmlr.tuning.results import Row, export_best, sampled_values
from bmlr.tuning.scores import VAL_ACC
from bmlr.tuning.selection import Candidate, choose_confirmed, rank

__all__ = ["pick_candidates", "confirmation_seeds", "confirmation_space", "confirm"]

NAME_PREFIX = "confirm-"  # a confirmation trial's Config `name`: which search trial it confirms


def pick_candidates(rows: list[Row], space, k: int) -> list[Candidate]:
    """The first ``k`` distinct configurations (sampled values) of the search's ranking."""
    seen, out = set(), []
    for row in rank(rows):
        sampled = sampled_values(row, space)
        key = tuple(sorted((name, repr(value)) for name, value in sampled.items()))
        if key not in seen:
            seen.add(key)
            out.append(Candidate(row, sampled, {}))
        if len(out) == k:
            break
    return out


def confirmation_seeds(study_seed: int, n: int) -> list[int]:
    """``n`` training seeds the search did not use: the ones after the study's seed."""
    return [study_seed + 1 + i for i in range(n)]


def _value(key: str, values: dict[str, dict[str, Any]], config: dict[str, Any]) -> Any:
    return values[config["name"]][key]


def confirmation_space(candidates: list[Candidate], seeds: list[int]) -> dict[str, Any]:
    """Ray's grid over candidate x seed: the Config `name` names the candidate (``confirm-<trial
    id>``), the sampled keys follow it, `seeds` holds the one training seed."""
    from ray import tune

    values = {NAME_PREFIX + c.trial_id: c.sampled for c in candidates}
    space: dict[str, Any] = {"name": tune.grid_search(list(values)),
                             "seeds": tune.grid_search([[int(s)] for s in seeds])}
    for key in candidates[0].sampled:
        space[key] = tune.sample_from(partial(_value, key, values))
    return space


def _rows(grid, store, max_epochs: int) -> list[Row]:
    rows = []
    for result in grid:
        config = result.config or {}
        trial_id = result.path.rstrip("/").rsplit("trial_", 1)[-1]
        accs = [float(h[VAL_ACC]) for h in store.history(trial_id) if h.get(VAL_ACC) is not None]
        status = "failed" if result.error is not None else "completed" if len(accs) >= max_epochs else "interrupted"
        rows.append({"trial_id": trial_id, "candidate": str(config.get("name", "")).removeprefix(NAME_PREFIX),
                     "seed": int(config.get("seeds", [0])[0]), "status": status, "epochs": len(accs),
                     "best_val_acc": max(accs) if accs else None,
                     "best_epoch": accs.index(max(accs)) + 1 if accs else None})
    return sorted(rows, key=lambda r: (r["candidate"], r["seed"]))


def _tuner(plan: Plan, candidates: list[Candidate], seeds: list[int], runs: dict[str, str], verbose: int):
    """Ray's grid of candidate x seed, each trained for the production epochs, no early stopping."""
    s, epochs = plan.settings, plan.production.epochs
    logger = plan.trial_logger(epochs, confirms={NAME_PREFIX + c.trial_id: runs.get(c.trial_id) for c in candidates})
    return ray_backend.build_tuner(plan.trainable(epochs), plan.store.confirm_ray_dir, callbacks=[logger],
                                   scheduler=ray_backend.make_scheduler("fifo"), concurrent=s.concurrent,
                                   max_failures=s.max_failures, verbose=verbose,
                                   param_space=confirmation_space(candidates, seeds),
                                   storage=plan.ray_storage(plan.store.confirm_ray_dir))


def _end_interrupted(plan: Plan) -> None:
    """End the study's confirmation runs still RUNNING as KILLED (the search's records stand)."""
    plan.runs.end_running(f"tags.`bmlr.role` = 'confirmation' and tags.study = '{plan.settings.name}'",
                          "interrupted")


def confirm(plan: Plan, outcome: StudyOutcome, verbose: int, log: Callable[[str], None]) -> StudyOutcome:
    """Run the confirmation of a finished search (inside its Ray session) and export its winner;
    the search's outcome unchanged where there is nothing to confirm."""
    s, store = plan.settings, plan.store
    candidates = pick_candidates(outcome.rows, plan.space, s.confirm)
    if len(candidates) < 2:
        log(f"confirmation: {len(candidates)} distinct configuration(s) finished; nothing to compare")
        return outcome
    seeds = confirmation_seeds(s.seed, s.confirm_seeds)
    searched = sum(int(r.get("epochs") or 0) for r in outcome.rows)
    cost = len(candidates) * len(seeds) * plan.production.epochs
    log(f"\nconfirmation: the top {len(candidates)} configurations x seeds {seeds} x {plan.production.epochs} "
        f"epochs = {cost} epochs ({cost / max(searched, 1):.2f}x the search's {searched})")
    runs = {r["trial_id"]: r.get("run_id") for r in outcome.rows}
    try:
        grid = _tuner(plan, candidates, seeds, runs, verbose).fit()
    except KeyboardInterrupt:
        _end_interrupted(plan)
        log(f"\nconfirmation interrupted: {store.best_path} stays the search's winner")
        raise
    plan.pull_records()
    results = _rows(grid, store, plan.production.epochs)
    store.write_confirmation(results)
    if any(r["status"] == "interrupted" for r in results):  # Ray stopped it (Ctrl-C, SIGTERM) and returned
        _end_interrupted(plan)
        log(f"confirmation interrupted: {store.best_path} stays the search's winner")
        return replace(outcome, interrupted=True)
    winner = choose_confirmed(candidates, results)
    for c in candidates:
        log(f"  {c.text()}")
    if winner is None:
        log("confirmation: no seed finished; best.yaml stays the search's winner")
        return outcome
    lines = [f"confirmed over seeds {seeds} at {plan.production.epochs} epochs (mean +- std of the best "
             f"validation accuracy; the winner's mean is the highest):"] + [f"  {c.text()}" for c in candidates]
    trial_runs = plan.runs.trials()
    best_yaml = export_best(plan, winner.row, {t: r for t, r in trial_runs.items() if t in runs}, lines)
    store.record_winner(winner.row)  # the winner the report and a resume read
    plan.runs.set_tags({"confirmation": "; ".join(c.text() for c in candidates), "confirmation_cost_epochs": cost})
    plan.runs.log_artifacts([store.confirmation_path])
    log(f"confirmed winner: trial {winner.trial_id} ({winner.mean:.4f} over {len(winner.values)} seeds); "
        f"{best_yaml} now holds it" + ("" if winner.row is outcome.best else
                                      f" (the search's own winner was trial {outcome.best['trial_id']})"))
    return StudyOutcome(outcome.study_dir, outcome.rows, winner.row, best_yaml, outcome.parent_run_id,
                        outcome.tracking_uri, False)
