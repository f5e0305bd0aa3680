"""A study's results after Ray Tune returns: one typed row per trial (``trials.csv``), the
winner (:mod:`bmlr.tuning.selection`, or a caller's rule) exported as ``best.yaml``, the MLflow
runs marked, and the summary printed.

A row: ``trial_id``, ``status`` (completed, stopped_early, failed, interrupted), ``epochs``,
its ``score`` (the study's score rule, :mod:`bmlr.tuning.scores`) and ``score_se`` (the
binomial standard error of an accuracy that high on the validation split's size), the
metrics of the epoch at which the score is reached (``best_epoch``, the ``val_*`` values and
``train_loss``), ``best_val_acc`` (the highest validation accuracy at any epoch),
``param.<key>`` for each key Ray passed the trial, its MLflow ``run_id`` and, for a failed
trial, ``error``. Test metrics do not exist here.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bmlr.config import beside_study
from bmlr.fileio import finite_or_none
from bmlr.tuning import run_view, tracking
from bmlr.tuning.export import production_config, source_of, train_command, write_config
from bmlr.tuning.faults import resume_line
from bmlr.tuning.plan import Plan, StudyOutcome
from bmlr.tuning.ray_backend import AUTO, METRIC
from bmlr.tuning.rung_check import AGREES, MIN_TRIALS, rung_warning
from bmlr.tuning.scores import DEFAULT_RULE, VAL_ACC, ScoreRule, rule_of
from bmlr.tuning.search_space import SearchSpace
from bmlr.tuning.selection import (SCORE, difference_text, noise_note, rank, score, standard_error,
                                   table_order)
from bmlr.tuning.store import StudyStore, read_json_lines

__all__ = ["Row", "STATUSES", "best_epoch", "trial_rows", "sync_runs", "sampled_values", "status_counts",
           "format_table", "winner_note", "score_text", "export_best", "finish", "FolderResult", "folder_results",
           "untuned_row"]

Row = dict[str, Any]
STATUSES = ("completed", "stopped_early", "failed", "interrupted", "lost")  # a trial's ends, as counted


def _trial_id(result) -> str:
    if result.metrics and "trial_id" in result.metrics:
        return str(result.metrics["trial_id"])
    return Path(result.path).name.removeprefix("trial_")


def _status(result, epochs: int, max_epochs: int) -> str:
    if result.error is not None:
        return "failed"
    if (result.metrics or {}).get("done"):
        return tracking.trial_status(epochs, max_epochs, errored=False)
    return "interrupted"  # cut off by Ctrl-C or a lost driver: --resume continues it


@dataclass
class FolderResult:
    """A trial as Ray's experiment folder keeps it (``<ray>/trial_<id>/``), with what
    :func:`trial_rows` reads of a result of Ray's result grid."""
    path: str
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def folder_results(ray_dir: Path, runs: dict[str, Any] | None = None) -> list[FolderResult]:
    """Every trial Ray started in ``ray_dir``, read from its folder (``params.json``, the last
    line of ``result.json``, ``error.txt``): the results where Ray Tune stopped at once (a
    second Ctrl-C) and returned none. Given the trials' MLflow runs (``runs``, by trial id), a
    trial without one is left out (a lost trial: its run was deleted), and one whose run the
    callback ended as completed or stopped early counts as done (Ray may not have written so)."""
    found = []
    for folder in sorted(Path(ray_dir).glob("trial_*")):
        trial_id = folder.name.removeprefix("trial_")
        if not folder.is_dir() or (runs is not None and trial_id not in runs):
            continue
        metrics = {**(read_json_lines(folder / "result.json") or [{}])[-1], "trial_id": trial_id}
        config = _json_object(folder / "params.json") or dict(metrics.get("config") or {})
        error = (folder / "error.txt").read_text(errors="replace") if (folder / "error.txt").is_file() else None
        tags = runs[trial_id].data.tags if runs is not None else {}
        if error is None and tags.get("trial_status") in ("completed", "stopped_early"):
            metrics["done"] = True
        elif error is None and tags.get("trial_status") == "failed":
            error = tags.get("error") or "failed"
        found.append(FolderResult(str(folder), config, metrics, error))
    return found


def _json_object(path: Path) -> dict[str, Any]:
    """The JSON object in a file ({} where there is none, or none whole)."""
    try:
        value = json.loads(path.read_text(errors="replace"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def best_epoch(history: list[Row], rule: ScoreRule = DEFAULT_RULE, n_val: int | None = None) -> Row:
    """The trial's score by ``rule`` and the metrics of the epoch at which it is reached
    (the first of equals; nothing where it reported no epoch); ``score_se`` where the
    validation split's size ``n_val`` is known."""
    scored = [h for h in history if h.get(VAL_ACC) is not None]
    if not scored:
        return {}
    accs = [float(h[VAL_ACC]) for h in scored]
    epoch = rule.epoch(accs)
    if epoch is None:
        return {}
    at = scored[epoch - 1]
    row: Row = {"best_epoch": int(at["epoch"]), SCORE: rule.value(accs), "score_rule": rule.name,
                "best_val_acc": max(accs)}
    row["score_se"] = standard_error(row[SCORE], n_val)
    for key in sorted({k for h in history for k in h}):
        if key.startswith("val_") or key == "train_loss":
            row[key] = finite_or_none(at.get(key))
    return row


def trial_rows(grid, max_epochs: int, runs: dict[str, Any], store: StudyStore, rule: ScoreRule,
               n_val: int | None = None) -> list[Row]:
    """One row per trial of Ray's result grid, best first (:func:`~bmlr.tuning.selection.rank`:
    the score, then fewer epochs to reach it, then trial id; failed trials last); ``runs``: the
    trials' MLflow runs by trial id. A trial's epochs come from its whole history
    (:meth:`~bmlr.tuning.store.StudyStore.history`: every epoch, those trained before a resume
    included), not from what Ray saw since the last restore."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        trial_id = _trial_id(result)
        history = store.history(trial_id)
        epochs = int(history[-1]["epoch"]) if history else int(metrics.get("epoch", 0) or 0)
        row: Row = {"trial_id": trial_id, "status": _status(result, epochs, max_epochs), "epochs": epochs}
        row.update(best_epoch(history, rule, n_val))
        for key, value in (result.config or {}).items():
            row[f"param.{key}"] = value
        run = runs.get(trial_id)
        row["run_id"] = run.info.run_id if run is not None else None
        if result.error is not None:
            text = str(result.error).strip().splitlines()
            row["error"] = (text[-1] if text else type(result.error).__name__)[:300]
        rows.append(row)
    return table_order(rows)


def sampled_values(row: Row, space: SearchSpace) -> dict[str, Any]:
    """A trials-table row's values of the searched keys (not a surface trial's seed)."""
    return {k.removeprefix("param."): v for k, v in row.items()
            if k.startswith("param.") and k.removeprefix("param.") in space.params}


def status_counts(rows: list[Row]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def format_table(rows: list[Row], top: int = 5) -> str:
    """The first ``top`` rows as a text table: status, epochs, scores and the sampled values."""
    params = [k for k in (rows[0] if rows else {}) if k.startswith("param.")]
    for row in rows:
        params.extend(k for k in row if k.startswith("param.") and k not in params)
    cols = ["trial_id", "status", "epochs", SCORE, "score_se", "val_macro_f1", "val_imbalance_ratio"] + params
    names = {"score_se": "+-se", "val_imbalance_ratio": "imbalance"}
    heads = [names.get(c, c.removeprefix("param.")) for c in cols]

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    body = [[cell(r.get(c)) for c in cols] for r in rows[:top]]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


# --- the end of a run ---------------------------------------------------------------------------
def finish(plan: Plan, grid, interrupted: bool, log: Callable[[str], None] = print, top: int = 5) -> StudyOutcome:
    """Write ``trials.csv`` and ``best.yaml`` (the trial the study's strategy picks), record the
    winner, mark the MLflow runs, end the parent run and print the summary. An uninterrupted
    study's trial states are deleted (nothing to resume)."""
    store, study_runs = plan.store, plan.runs
    runs = study_runs.trials()
    n_val = (store.data_info().get("sizes") or {}).get("val")
    rows = trial_rows(grid, plan.max_epochs, runs, store, plan.rule, n_val)
    known = {row["trial_id"] for row in rows}
    lost = int(study_runs.tags().get("trials.lost", "0")) + study_runs.mark_lost(
        [run for trial_id, run in runs.items() if trial_id not in known])
    runs = {trial_id: run for trial_id, run in runs.items() if trial_id in known}
    sync_runs(study_runs, rows, runs, store)
    best = plan.strategy.choose(rows)
    store.write_rows(rows)
    best_yaml = export_best(plan, best, runs) if best is not None else None
    if best is not None:
        store.record_winner(best)
    counts = status_counts(rows)
    if lost:
        counts["lost"] = lost
    # every count current, 0 where none (after a resume)
    study_runs.set_tags({f"trials.{status}": counts.get(status, 0) for status in sorted(set(STATUSES) | set(counts))})
    study_runs.log_artifacts([store.trials_path, store.info_path])
    study_runs.end("KILLED" if interrupted else "FINISHED")
    if not interrupted:  # every trial has ended: no state to continue from
        shutil.rmtree(store.state_dir, ignore_errors=True)
        if plan.mirror is not None:
            plan.mirror.delete(store.state_dir)
    _summary(plan, rows, counts, best, best_yaml, interrupted, log, top)
    return StudyOutcome(plan.study_dir, rows, best, best_yaml, plan.parent_run_id, plan.tracking_uri, interrupted)


def sync_runs(study_runs: tracking.StudyRuns, rows: list[Row], runs: dict[str, Any], store: StudyStore) -> None:
    """Make each trial's MLflow run match its row: the epochs of its history MLflow lacks
    (the driver died before it logged them), its end state and its status tags."""
    for row in rows:
        run = runs.get(row["trial_id"])
        if run is None:
            continue
        steps = study_runs.logged_epochs(run.info.run_id)
        missing = [h for h in store.history(row["trial_id"]) if int(h["epoch"]) > max(steps, default=0)]
        study_runs.sync_trial(run, row["status"], row["epochs"], missing)


def export_best(plan: Plan, best: Row, runs: dict[str, Any], confirmation: list[str] = ()):
    """``best.yaml`` (the production configuration with the winner's sampled values; the
    ``confirmation`` lines, where a confirmation chose it, in its header and the winner's MLflow
    description) and the MLflow tags that name the winner. ``runs``: the trials' MLflow runs."""
    s = plan.settings
    sampled = sampled_values(best, plan.space)
    trial_run = runs.get(best["trial_id"])
    source = source_of(tracking_uri=plan.tracking_uri, experiment_id=plan.experiment_id, run_id=best["run_id"],
                       run_name=trial_run.info.run_name if trial_run else None, study=s.name,
                       trial_id=best["trial_id"], parent_run_id=plan.parent_run_id)
    production = {**plan.production.to_dict(), **sampled,
                  "output_dir": beside_study(plan.production.output_dir, plan.store.dir)}
    cfg = production_config(production, source=source)  # bmlr.train logs beside it, and trains there
    edges = edge_lines(plan.space, sampled)
    header = [f"Best trial of study {s.name} ({s.dataset}, method {s.method}):",
              f"trial {best['trial_id']}, MLflow run {best['run_id']}, {score_text(best)} "
              f"(study seed {s.seed}; test never read)",
              "sampled: " + ", ".join(f"{k}={v}" for k, v in sampled.items()),
              f"production: {cfg.epochs} epochs, seeds {cfg.seeds}", *confirmation, *edges]
    best_yaml = write_config(cfg, plan.store.best_path, header)
    note = winner_note(best, f"study {s.name}") + ("\n\n" + "\n".join(confirmation) if confirmation else "")
    plan.runs.mark_winner(runs.values(), best, note, range_edges="; ".join(edges) or "none")
    plan.runs.log_artifacts([best_yaml])
    return best_yaml


def edge_lines(space: SearchSpace, sampled: dict[str, Any]) -> list[str]:
    """A line for each of the winner's values in the outer tenth of its numeric range (log scale
    where the range is): the best may lie beyond it."""
    lines = []
    for key, value in sampled.items():
        param = space.params.get(key)
        edge = param.edge(value) if param is not None else None
        if edge:
            scale = " (log scale)" if param.log else ""
            lines.append(f"range edge: {key} = {value:.4g} lies in the {'top' if edge == 'high' else 'bottom'} "
                         f"tenth of its range [{param.low}, {param.high}]{scale}; the best may lie beyond it: search "
                         f"again with --widen (or widen search.{key} in the search space)")
    return lines


def score_text(row: Row) -> str:
    """A row's score as a phrase: ``score 0.8333 +- 0.0340 (best: ... at epoch 7 of 12 trained)``."""
    value = score(row)
    se = finite_or_none(row.get("score_se"))
    rule = rule_of(row)
    return (f"score {value:.4f}" + (f" +- {se:.4f}" if se is not None else "")
            + f" ({rule.name}: {rule.describe()}, reached at epoch {row.get('best_epoch')} of {row.get('epochs')} trained)")


def winner_note(best: Row, where: str) -> str:
    """The winner's run description: why it won."""
    return (f"**Best trial** of {where}: {score_text(best)}, {best.get('status')}; the highest of the study's "
            f"trials (ties: fewer epochs to reach it, then trial id; +- one binomial standard error on the "
            f"validation split; test never read). Trial {best['trial_id']}.")


def untuned_row(plan: Plan, rows: list[Row]) -> Row | None:
    """The trial of the untuned configuration (the search's first trial: each searched key's
    default); None where the study trained no such trial (a grid, a warm-started stage)."""
    return _row_at(plan.strategy.untuned_point(plan), rows)


def _row_at(point: dict[str, Any] | None, rows: list[Row]) -> Row | None:
    return next((r for r in rows if point and all(r.get(f"param.{k}") == v for k, v in point.items())), None)


def untuned_line(plan: Plan, rows: list[Row]) -> str:
    """Where the untuned configuration ranked (:func:`untuned_row`), and the winner against it;
    also the parent run's tag ``untuned_trial``. Empty where the study trained no such trial."""
    point = plan.strategy.untuned_point(plan)
    row = _row_at(point, rows)
    if row is None:
        return ""
    ranked = rank(rows)
    where = f"ranked {ranked.index(row) + 1} of {len(ranked)}" if row in ranked else f"{row['status']}, no score"
    line = (f"untuned defaults ({', '.join(f'{k}={v}' for k, v in point.items())}): trial {row['trial_id']}, "
            f"{where}")
    if ranked and ranked[0] is not row and score(row) is not None:
        best, se = ranked[0], lambda r: finite_or_none(r.get("score_se"))
        line += f"; best - untuned = {difference_text(score(best), se(best), score(row), se(row))}"
    plan.runs.set_tags({"untuned_trial": line})
    return line


def rung_line(plan: Plan, rows: list[Row]) -> str:
    """How well ASHA's rung epochs ranked the trials (:mod:`bmlr.tuning.rung_check`), also the
    parent run's tag ``rung_agreement``; empty without early stopping or too few long trials."""
    s = plan.settings
    if not plan.strategy.early_stopping:
        return ""
    curves = []
    for row in rows:
        if row["status"] != "failed":
            history = plan.store.history(row["trial_id"])
            curves.append([float(h.get(METRIC, h.get(VAL_ACC))) for h in history])
    grace, line = s.grace_period, ""
    if grace == AUTO:
        grace, line = measured_grace(plan.store.read_grace())
    checked = rung_warning(curves, grace, s.reduction_factor, plan.max_epochs) if grace else ""
    line = "\n".join(t for t in (line, checked) if t)
    if line:
        plan.runs.set_tags({"rung_agreement": line})
    return line


def measured_grace(record: dict | None) -> tuple[int | None, str]:
    """The grace period a study measured (:mod:`bmlr.tuning.calibrated_asha`) and a line on it."""
    if record is None:
        return None, (f"grace period: not measured (fewer than {MIN_TRIALS} trials ran to the end); "
                      "no trial was stopped early")
    grace, n = record["grace_period"], record["trials"]
    if grace is None:
        return None, (f"grace period: no epoch before the last ranked the first {n} trials that ran to the end "
                      "as their final scores did; no trial was stopped early")
    return grace, (f"grace period: {grace}, measured on the first {n} trials that ran to the end (every epoch "
                   f"from {grace} on ranked them with Spearman >= {AGREES} against their final scores)")


def _summary(plan: Plan, rows: list[Row], counts: dict[str, int], best: Row | None, best_yaml, interrupted: bool,
             log: Callable[[str], None], top: int) -> None:
    s = plan.settings
    log(f"\nstudy {plan.study_dir}  trials: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if rows:
        rule = plan.rule
        log(f"best trials by score, {rule.name}: {rule.describe()} (of {len(rows)}):\n" + format_table(rows, top))
        edges = edge_lines(plan.space, sampled_values(best, plan.space)) if best is not None else []
        for line in (noise_note(rows, top), untuned_line(plan, rows), *edges):
            if line:
                log(line)
        rungs = rung_line(plan, rows)
        if rungs:
            log(rungs)
    if best_yaml is not None:
        log(f"best configuration: {best_yaml}\n"
            f"  train it: {train_command(best_yaml)}")
    else:
        log("no trial finished successfully: nothing exported")
    log(f"MLflow: {plan.tracking_uri}  experiment {s.experiment!r}  parent run {plan.parent_run_id}")
    view = plan.runs.save_table_view(plan.space.params, SCORE)
    for line in run_view.ui_lines(plan.tracking_uri, plan.experiment_id, plan.parent_run_id, view):
        log(line)
    if interrupted:
        log(f"the study was interrupted; continue it with: {resume_line(plan)}")
