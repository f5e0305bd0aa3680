"""A study you can watch: what a study prints while Ray Tune runs it at the default verbosity,
as a ``ray.tune.Callback`` (:class:`StudyProgress`; :func:`bmlr.tuning.ray_backend.build_tuner`
adds it at ``-v 1`` and ``-v 2``, never at ``-v 0``):

* a line when a trial ends (completed, stopped early by the scheduler, failed): its epochs,
  score and sampled values, then the status line;
* the status line (:func:`status_line`): trials done of the total, how many run, the best trial
  so far and an estimate of the time left;
* the table (:func:`format_table`): each trial's status, epochs, score and sampled values, best
  first; every ``every_s`` seconds where a result came in, and once at the end.

**The best so far** is picked by the study's own rule (``choose``, by default
:func:`bmlr.tuning.selection.choose_best`: the highest score, then fewer epochs to reach it
(``best_epoch``), then the trial id) over the results reported so far, so that it names the
trial the summary names. Ray's own "Current best trial" line (the highest last report, the first
trial on a tie, failed trials included) is not printed.

**The time left** (:func:`time_left`) is the epochs still to train at most (each unfinished trial
to ``max_epochs``, each trial not started yet from scratch) times the mean wall time of an epoch
so far, shared by the trials seen running at once: an upper bound where a scheduler (ASHA)
stops trials early, an estimate where none does.

Why a callback, not a ``progress_reporter``: Ray 2.60's default output engine
(``RAY_AIR_NEW_OUTPUT`` unset or 1) ignores ``RunConfig.progress_reporter`` and takes no columns
(only the metrics of a trainable's ``_progress_metrics`` and the parameters of a ``param_space``,
not those of an Optuna searcher); the legacy engine's ``CLIReporter`` takes columns but always
prints its own best-trial line. Callbacks run under both engines.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterable, Sequence

from ray.tune import Callback

from bmlr.fileio import finite_or_none
from bmlr.tuning.scores import DEFAULT_RULE, VAL_ACC, ScoreRule
from bmlr.tuning.selection import SCORE, choose_best, rank, score

__all__ = ["StudyProgress", "trial_status", "trial_row", "time_left", "duration", "status_line", "format_table",
           "ended_line", "say"]

Row = dict[str, Any]
DONE = ("completed", "stopped_early", "failed")  # a trial's ends, as the trials table names them


def trial_status(ray_status: str, ended: str | None, epochs: int, max_epochs: int | None) -> str:
    """The trials table's word for a trial: ``failed``, ``completed`` or ``stopped_early`` (fewer
    epochs than ``max_epochs``) once it has ended (``ended``: "done" or "failed", as the callback
    saw it end; else Ray's status), else Ray's status in lower case (pending, running, paused)."""
    if ended == "failed" or ray_status == "ERROR":
        return "failed"
    if ended == "done" or ray_status == "TERMINATED":
        return "stopped_early" if max_epochs and epochs < max_epochs else "completed"
    return ray_status.lower()


def trial_row(trial_id: str, status: str, config: dict[str, Any], last: dict[str, Any], accs: Sequence[float] | None,
              rule: ScoreRule = DEFAULT_RULE, metric: str = SCORE) -> Row:
    """A trial as the selection rule reads it: ``trial_id``, ``status``, ``epochs``, ``score`` (its
    last report of ``metric``), ``best_epoch`` (where ``rule`` reaches it over the validation
    accuracies ``accs`` of epochs 1, 2, ...; None where they are not known) and ``param.<key>``."""
    row: Row = {"trial_id": trial_id, "status": status, "epochs": int(last.get("epoch") or 0),
                SCORE: finite_or_none(last.get(metric)), "best_epoch": rule.epoch(list(accs)) if accs else None}
    row.update({f"param.{k}": v for k, v in (config or {}).items()})
    return row


def time_left(rows: Sequence[Row], total: int | None, max_epochs: int | None, epoch_s: float | None,
              parallel: int = 1) -> float | None:
    """Seconds left at most: the epochs left (each unfinished trial to ``max_epochs``, each of the
    ``total`` not started yet all of them) times ``epoch_s`` (the mean wall time of an epoch),
    over the trials that run at once (``parallel``, at most the unfinished ones). None where a
    number is missing."""
    if not max_epochs or epoch_s is None or total is None:
        return None
    unfinished = [r for r in rows if r["status"] not in DONE]
    not_started = max(0, total - len(rows))
    epochs = sum(max(0, max_epochs - r["epochs"]) for r in unfinished) + not_started * max_epochs
    at_once = max(1, min(parallel, len(unfinished) + not_started))
    return epochs * epoch_s / at_once


def duration(seconds: float) -> str:
    """``45s``, ``3m 10s``, ``2h 05m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return _cell(value[0])
    return str(value)


def _values(row: Row, keys: Iterable[str]) -> str:
    return ", ".join(f"{k}={_cell(row.get(f'param.{k}'))}" for k in keys if f"param.{k}" in row)


def status_line(rows: Sequence[Row], total: int | None, seconds_left: float | None,
                choose: Callable[[list[Row]], Row | None] | None = choose_best) -> str:
    """``3 of 8 trials done, 2 running | best so far: trial X, score 0.6125 at epoch 3 | time left:
    at most ~1m 20s``; without ``choose`` no best is named."""
    done = sum(r["status"] in DONE for r in rows)
    running = sum(r["status"] == "running" for r in rows)
    parts = [f"{done} of {total if total is not None else '?'} trials done, {running} running"]
    best = choose(list(rows)) if choose is not None else None
    if best is not None:
        at = best.get("best_epoch") or "?"
        parts.append(f"best so far: trial {best['trial_id']}, score {score(best):.4f} at epoch {at}")
    if seconds_left is not None and done < (total or 0):
        parts.append(f"time left: at most ~{duration(seconds_left)}")
    return " | ".join(parts)


def format_table(rows: Sequence[Row], keys: Sequence[str], max_epochs: int | None = None,
                 best: Row | None = None, max_rows: int = 20) -> str:
    """The trials as a text table, ranked first (:func:`bmlr.tuning.selection.rank`), then those
    not ranked (running, paused, pending, then failed; by id): ``*`` marks ``best``; columns
    trial, status, epochs, score, ``keys``; at most ``max_rows`` trials."""
    ranked = rank(rows)
    waiting = {"running": 0, "paused": 1, "pending": 2}  # then those not ranked: running first, failed last
    ordered = ranked + sorted((r for r in rows if r not in ranked),
                              key=lambda r: (waiting.get(r["status"], 3), str(r["trial_id"])))
    heads = ["", "trial", "status", "epochs", SCORE, *keys]
    of = f"/{max_epochs}" if max_epochs else ""
    body = [["*" if best is not None and r["trial_id"] == best["trial_id"] else "", str(r["trial_id"]),
             r["status"], f"{r['epochs']}{of}", _cell(score(r)), *(_cell(r.get(f"param.{k}")) for k in keys)]
            for r in ordered[:max_rows]]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(heads)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [heads] + body]
    if len(ordered) > max_rows:
        lines.append(f"... and {len(ordered) - max_rows} more trials")
    return "\n".join(lines)


def ended_line(row: Row, keys: Sequence[str], max_epochs: int | None = None) -> str:
    """``trial X stopped early after 1 of 4 epochs: score 0.4375 (alpha=0.3, lr=0.01)``."""
    of = f" of {max_epochs}" if max_epochs else ""
    what = {"stopped_early": "stopped early after", "failed": "failed after"}.get(row["status"], "completed")
    value = score(row)
    scored = f": score {value:.4f}" if value is not None else ": no score"
    values = _values(row, keys)
    return f"trial {row['trial_id']} {what} {row['epochs']}{of} epochs{scored}" + (f" ({values})" if values else "")


def say(line: str) -> None:
    """Print ``line``; nothing once the terminal is gone (a hang-up: writing fails, and the study
    must still stop on the signal and write its records). A module function: Ray pickles the
    callback into its experiment state."""
    with contextlib.suppress(OSError):
        print(line, flush=True)


class StudyProgress(Callback):
    """Ray Tune callback printing a study's progress (see the module's docstring). ``keys``: the
    sampled keys (columns; keys of the trials' configurations not named are added after them);
    ``max_epochs``: a trial's budget (for the status words and the time left); ``rule``: the score
    rule (for ``best_epoch``); ``choose``: the rule naming the best (None: no best is named);
    ``history``: a trial's whole history by trial id (a restored trial's epochs before the
    restore); ``metric``: the reported score."""

    def __init__(self, keys: Sequence[str] = (), max_epochs: int | None = None, rule: ScoreRule = DEFAULT_RULE,
                 choose: Callable[[list[Row]], Row | None] | None = None,
                 history: Callable[[str], list[Row]] | None = None, metric: str = SCORE, every_s: float = 60.0,
                 log: Callable[[str], None] = say):
        self.keys, self.max_epochs, self.rule, self.choose = list(keys), max_epochs, rule, choose
        self.history, self.metric, self.every_s, self.log = history, metric, every_s, log
        self.total: int | None = None
        self._accs: dict[str, dict[int, float]] = {}  # trial id -> epoch -> validation accuracy
        self._ended: dict[str, str] = {}  # trial id -> "done" | "failed", as seen here
        self._seconds, self._epochs = 0.0, 0  # wall time of the epochs reported, and how many
        self._parallel = 1  # the most trials seen running at once
        self._last_table, self._fresh = time.monotonic(), False

    # --- what Ray calls -------------------------------------------------------------------
    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        self.total = total_num_samples
        self._last_table = time.monotonic()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        epoch, acc = result.get("epoch"), finite_or_none(result.get(VAL_ACC))
        seen = self._accs.setdefault(trial.trial_id, {})
        seconds = finite_or_none(result.get("time_this_iter_s"))
        if epoch is not None and int(epoch) not in seen and seconds is not None:
            self._seconds, self._epochs = self._seconds + seconds, self._epochs + 1
        if epoch is not None and acc is not None:
            seen[int(epoch)] = acc
        self._fresh = True

    def on_step_end(self, iteration, trials, **info):
        self._parallel = max(self._parallel, sum(t.status == "RUNNING" for t in trials))
        if self._fresh and time.monotonic() - self._last_table >= self.every_s:
            self.print_table(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trials, trial, "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trials, trial, "failed")

    def on_experiment_end(self, trials, **info):
        self.print_table(trials)

    # --- what it prints --------------------------------------------------------------------
    def rows(self, trials) -> list[Row]:
        """Each of Ray's trials as a row for the selection rule (:func:`trial_row`)."""
        out = []
        for t in trials:
            last = t.last_result or {}
            status = trial_status(t.status, self._ended.get(t.trial_id), int(last.get("epoch") or 0), self.max_epochs)
            out.append(trial_row(t.trial_id, status, t.config, last, self._history(t.trial_id, last), self.rule,
                                 self.metric))
        return out

    def columns(self, trials=()) -> list[str]:
        """The sampled keys shown: ``keys``, then any other key of the trials' configurations."""
        extra = [k for t in trials for k in (t.config or {}) if k not in self.keys]
        return self.keys + list(dict.fromkeys(extra))

    def status(self, rows: list[Row]) -> str:
        epoch_s = self._seconds / self._epochs if self._epochs else None
        left = time_left(rows, self.total, self.max_epochs, epoch_s, self._parallel)
        return status_line(rows, self.total, left, self.choose)

    def print_table(self, trials) -> None:
        rows = self.rows(trials)
        best = self.choose(rows) if self.choose is not None else None
        self.log(f"{format_table(rows, self.columns(trials), self.max_epochs, best)}\n{self.status(rows)}")
        self._last_table, self._fresh = time.monotonic(), False

    def _end(self, trials, trial, how: str) -> None:
        self._ended[trial.trial_id] = how
        rows = self.rows(trials)
        row = next(r for r in rows if r["trial_id"] == trial.trial_id)
        last = self.total is not None and sum(r["status"] in DONE for r in rows) >= self.total
        status = "" if last else f"\n  {self.status(rows)}"  # the last: the final table says it
        self.log(ended_line(row, self.columns(trials), self.max_epochs) + status)

    def _history(self, trial_id: str, last: dict[str, Any]) -> list[float] | None:
        """The trial's validation accuracies of epochs 1..n as reported here; from ``history``
        where epochs are missing (a restored trial), else None."""
        seen = self._accs.get(trial_id, {})
        epochs = int(last.get("epoch") or 0)
        if epochs and any(e not in seen for e in range(1, epochs + 1)) and self.history is not None:
            for h in self.history(trial_id):
                if h.get("epoch") is not None and finite_or_none(h.get(VAL_ACC)) is not None:
                    seen.setdefault(int(h["epoch"]), float(h[VAL_ACC]))
            self._accs[trial_id] = seen
        if not epochs or any(e not in seen for e in range(1, epochs + 1)):
            return None
        return [seen[e] for e in range(1, epochs + 1)]
