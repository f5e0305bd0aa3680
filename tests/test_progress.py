"""What a study prints while it runs (bmlr.tuning.progress), checked without a Ray cluster: the
status line (trials done of the total, the best so far by the summary's rule, ties included,
the time left), the table's columns, the callback fed fake trials, and the tuner's output
configuration at each verbosity. No test reads a clock."""
from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest

from bmlr.tuning import ray_backend, study
from bmlr.tuning.plan import StudySettings, plan_study
from bmlr.tuning.progress import (StudyProgress, ended_line, format_table, status_line, time_left, trial_row,
                                  trial_status)
from bmlr.tuning.results import best_epoch
from bmlr.tuning.scores import parse_score
from bmlr.tuning.selection import choose_best, table_order

ROOT = Path(__file__).resolve().parents[1]


def _row(trial_id, status, epochs, score, best, **params):
    return {"trial_id": trial_id, "status": status, "epochs": epochs, "score": score, "best_epoch": best,
            **{f"param.{k}": v for k, v in params.items()}}


ROWS = [_row("t_00000", "completed", 4, 0.80, 4, lr=0.01), _row("t_00001", "stopped_early", 2, 0.80, 2, lr=0.1),
        _row("t_00002", "failed", 1, 0.95, 1, lr=1.0), _row("t_00003", "running", 1, 0.50, 1, lr=0.001),
        _row("t_00004", "pending", 0, None, None, lr=0.003), _row("t_00005", "running", 0, None, None, lr=0.2)]


def test_the_status_line_counts_done_of_total_and_names_the_summary_s_best_on_a_tie():
    line = status_line(ROWS, 8, 90.0)
    assert line.startswith("3 of 8 trials done, 2 running | ")
    # 0.80 twice: fewer epochs to reach it wins (not the smaller id, not the failed 0.95)
    assert "best so far: trial t_00001, score 0.8000 at epoch 2" in line
    assert choose_best(ROWS)["trial_id"] == "t_00001"
    # the trials table and the summary's table list the same one first (then the failed and unscored)
    assert [r["trial_id"] for r in table_order(ROWS)] == ["t_00001", "t_00000", "t_00003", "t_00002", "t_00004",
                                                          "t_00005"]
    assert "time left: at most ~" in line
    assert "best so far" not in status_line(ROWS, 8, 90.0, choose=None)  # a caller with no rule names none
    assert "time left" not in status_line(ROWS, 3, 90.0)  # everything done: nothing left


def test_the_time_left_counts_the_epochs_left_at_most():
    # unfinished: t_00003 (3 epochs left), t_00004 (4), t_00005 (4); not started: 8 - 6 trials x 4 epochs
    left = time_left(ROWS, 8, 4, epoch_s=1.0, parallel=1)
    assert left == 3 + 4 + 4 + 2 * 4
    assert time_left(ROWS, 8, 4, epoch_s=2.0, parallel=1) == 2 * left  # proportional to an epoch's time
    assert time_left(ROWS, 8, 4, epoch_s=1.0, parallel=2) == left / 2  # shared by the trials running at once
    assert time_left(ROWS, 8, None, 1.0) is None and time_left(ROWS, 8, 4, None) is None


def test_a_trial_s_status_and_row():
    assert trial_status("RUNNING", "done", 2, 4) == "stopped_early"  # Ray marks it TERMINATED after the callback
    assert trial_status("TERMINATED", None, 4, 4) == "completed"
    assert trial_status("RUNNING", "failed", 2, 4) == trial_status("ERROR", None, 2, 4) == "failed"
    assert trial_status("PENDING", None, 0, 4) == "pending"
    row = trial_row("t", "running", {"lr": 0.1}, {"epoch": 3, "score": 0.7}, [0.6, 0.7, 0.7])
    assert row == {"trial_id": "t", "status": "running", "epochs": 3, "score": 0.7, "best_epoch": 2, "param.lr": 0.1}
    assert trial_row("t", "running", {}, {"epoch": 3, "score": 0.7}, [0.6, 0.7, 0.7], parse_score("last"))[
        "best_epoch"] == 3


def test_the_table_shows_status_epochs_score_and_sampled_values_best_first():
    table = format_table(ROWS, ["lr"], max_epochs=4, best=choose_best(ROWS)).splitlines()
    assert table[0].split() == ["trial", "status", "epochs", "score", "lr"]
    assert table[1].split() == ["*", "t_00001", "stopped_early", "2/4", "0.8", "0.1"]
    # ranked (running t_00003 among them), then running, pending, failed without a score
    assert [line.split()[0] for line in table[2:]] == ["t_00000", "t_00003", "t_00005", "t_00004", "t_00002"]
    assert format_table(ROWS, ["lr"], max_rows=2).splitlines()[-1] == "... and 4 more trials"
    assert ended_line(ROWS[1], ["lr"], 4) == "trial t_00001 stopped early after 2 of 4 epochs: score 0.8000 (lr=0.1)"


def _trial(trial_id, status="RUNNING", **config):
    return SimpleNamespace(trial_id=trial_id, status=status, config=config, last_result={})


def _report(progress, trials, trial, epoch, acc, metric):
    trial.last_result = {"epoch": epoch, "val_acc": acc, "score": metric, "time_this_iter_s": 1.0}
    progress.on_trial_result(0, trials, trial, trial.last_result)


def test_the_callback_names_the_trial_the_summary_names():
    printed = []
    rule = parse_score("best")
    progress = StudyProgress(["lr"], max_epochs=3, rule=rule, choose=choose_best, log=printed.append)
    progress.setup(total_num_samples=2)
    a, b = _trial("t_00000", lr=0.1), _trial("t_00001", lr=0.01)
    trials = [a, b]
    histories = {"t_00000": [0.5, 0.6, 0.8], "t_00001": [0.8, 0.7, 0.6]}  # both score 0.8; b reached it at epoch 1
    for epoch in range(3):
        for trial in trials:
            accs = histories[trial.trial_id][:epoch + 1]
            _report(progress, trials, trial, epoch + 1, accs[-1], max(accs))
    progress.on_trial_complete(0, trials, a)
    assert printed[-1].splitlines()[0] == "trial t_00000 completed 3 of 3 epochs: score 0.8000 (lr=0.1)"
    assert "1 of 2 trials done, 1 running | best so far: trial t_00001, score 0.8000 at epoch 1" in printed[-1]
    # Ray's own "current best trial" would be the first of the list with the highest score: t_00000
    summary = [{"trial_id": t, "status": "completed", **best_epoch([{"epoch": i + 1, "val_acc": v}
                                                                    for i, v in enumerate(h)], rule)}
               for t, h in histories.items()]
    assert choose_best(summary)["trial_id"] == "t_00001"
    a.status = "TERMINATED"
    progress.on_trial_complete(0, trials, b)
    progress.on_experiment_end(trials)
    table = printed[-1].splitlines()
    assert table[0].split() == ["trial", "status", "epochs", "score", "lr"] and table[1].startswith("*  t_00001")
    assert table[-1].startswith("2 of 2 trials done, 0 running | best so far: trial t_00001")


def test_a_restored_trial_s_earlier_epochs_come_from_its_history():
    history = {"t_00000": [{"epoch": 1, "val_acc": 0.9}, {"epoch": 2, "val_acc": 0.5}]}
    progress = StudyProgress(max_epochs=3, choose=choose_best, history=lambda t: history.get(t, []),
                             log=lambda _m: None)
    trial = _trial("t_00000", lr=0.1)
    _report(progress, [trial], trial, 3, 0.6, 0.9)  # the first report after the restore
    row = progress.rows([trial])[0]
    assert row["best_epoch"] == 1 and row["score"] == 0.9
    assert progress.columns([trial]) == ["lr"]  # the sampled keys, from the trials where not named


@pytest.fixture
def tuner_args(monkeypatch):
    """What build_tuner gives Ray's Tuner (no Tuner is built)."""
    from ray import tune

    seen = {}
    monkeypatch.setattr(tune, "Tuner", lambda trainable, **kwargs: seen.update(kwargs) or "tuner")
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    return seen


@pytest.mark.parametrize("verbose, ray_verbose, ours", [(0, 0, False), (1, 0, True), (2, 2, True)])
def test_the_tuner_s_output_at_each_verbosity(tuner_args, tmp_path, verbose, ray_verbose, ours):
    import os

    ray_backend.build_tuner(lambda config: None, tmp_path / "ray", verbose=verbose)
    run = tuner_args["run_config"]
    assert run.verbose == ray_verbose
    assert any(isinstance(c, StudyProgress) for c in run.callbacks) == ours
    # below 2 Ray's legacy engine, which is silent at 0 (the new one prints its header and final table)
    assert os.environ.get("RAY_AIR_NEW_OUTPUT") == (None if verbose == 2 else "0")


def test_a_study_s_progress_shows_its_sampled_keys_and_uses_its_strategy_s_rule(tuner_args, tmp_path, monkeypatch):
    settings = StudySettings(search_space=str(ROOT / "search_spaces" / "synthetic.yaml"),
                             storage=str(tmp_path / "runs"), name="s", samples=4)
    plan = plan_study(settings, log=lambda _m: None, lock=False)
    monkeypatch.setattr(type(plan), "trainable", lambda self, max_epochs=None: (lambda config: None))
    monkeypatch.setattr(type(plan), "trial_logger", lambda self, *a, **k: "logger")
    study.build_tuner(plan, 1)
    progress = [c for c in tuner_args["run_config"].callbacks if isinstance(c, StudyProgress)]
    assert len(progress) == 1
    progress = progress[0]
    assert progress.columns() == list(plan.space.params) and progress.metric == ray_backend.METRIC == "score"
    assert progress.choose(ROWS) == plan.strategy.choose(ROWS) and progress.rule == plan.rule
    assert progress.max_epochs == plan.max_epochs
    header = format_table([], progress.columns()).split()
    assert "score" in header and set(plan.space.params) <= set(header)
    again = pickle.loads(pickle.dumps(progress))  # Ray keeps it in the experiment (tuner.pkl) for --resume
    assert again.columns() == progress.columns() and again.choose(ROWS) == progress.choose(ROWS)
