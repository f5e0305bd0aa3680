"""Winners that hold up: the trial score rules (`--score`), the validation noise beside every
score, and the confirmation stage (`--confirm`): hand-checkable numbers first, then one tiny
study run as a user runs it."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from bmlr.tuning.confirm import confirmation_seeds, pick_candidates
from bmlr.tuning.results import format_table
from bmlr.tuning.scores import ScoreError, parse_score
from bmlr.tuning.search_space import SearchSpaceError, parse_search_space
from bmlr.tuning.selection import Candidate, choose_best, choose_confirmed, noise_note, score, standard_error

ACCS = [0.5, 0.7, 0.6, 0.65, 0.64]


@pytest.mark.parametrize("text, value, epoch", [
    ("best", 0.7, 2),                      # the maximum, at its first epoch
    ("last", 0.64, 5),                     # the last epoch
    ("last-3", (0.6 + 0.65 + 0.64) / 3, 5),
    ("last-9", sum(ACCS) / 5, 5),          # fewer epochs than the window: all of them
    ("smooth-3", (0.7 + 0.6 + 0.65) / 3, 4),  # windows ending at 3, 4, 5: 0.6, 0.65, 0.63
    ("smooth-2", (0.7 + 0.6) / 2, 3),      # 0.6, 0.65, 0.625, 0.645: the first of the best
])
def test_score_rules_on_hand_checkable_epochs(text, value, epoch):
    rule = parse_score(text)
    assert rule.value(ACCS) == pytest.approx(value) and rule.epoch(ACCS) == epoch
    assert rule.name == text and rule.value([]) is None


@pytest.mark.parametrize("text", ["smooth", "best-2", "last-0", "mean", "last-x", ""])
def test_score_rules_that_do_not_parse_say_what_is_expected(text):
    if text == "":
        assert parse_score(text).name == "best"  # nothing given: the default
        return
    with pytest.raises(ScoreError, match="--score"):
        parse_score(text)


def test_the_search_space_can_choose_the_score():
    doc = {"score": "last-3", "search": {"beta": {"uniform": [0.1, 0.9]}}, "fixed": {"epochs": 4}}
    space = parse_search_space(doc, source="s.yaml")
    assert space.score == "last-3" and space.for_method("bmlr").score == "last-3"
    assert "score: last-3" in space.to_yaml()
    with pytest.raises(SearchSpaceError, match="s.yaml: score"):
        parse_search_space({**doc, "score": "median"}, source="s.yaml")


def test_standard_error_is_binomial_on_the_validation_size():
    assert standard_error(0.8, 100) == pytest.approx(0.04)  # sqrt(0.8 * 0.2 / 100)
    assert standard_error(0.8, None) is None and standard_error(None, 100) is None


def _row(tid, acc, se=0.04, epochs=4, **extra):
    return {"trial_id": tid, "status": "completed", "epochs": epochs, "best_epoch": epochs, "score": acc,
            "score_se": se, "score_rule": "best", **extra}


def test_the_summary_shows_the_standard_error_and_says_when_the_top_is_noise():
    rows = [_row("a", 0.80), _row("b", 0.75), _row("c", 0.60)]
    table = format_table(rows, 3).splitlines()
    assert table[0].split()[:5] == ["trial_id", "status", "epochs", "score", "+-se"]
    assert table[2].split()[3:5] == ["0.8", "0.04"]
    # b is 5 points below a, inside 2 x 4 points; c is 20 points below
    assert "the next 1 of the top 3 trials score within two standard errors (8.0 points)" in noise_note(rows, 5)
    assert noise_note([_row("a", 0.80), _row("c", 0.60)], 5) == ""


def test_rows_from_before_score_rules_rank_by_their_best_val_acc():
    old = [{"trial_id": "a", "status": "completed", "best_val_acc": 0.6, "best_epoch": 2},
           {"trial_id": "b", "status": "completed", "best_val_acc": 0.7, "best_epoch": 3}]
    assert choose_best(old)["trial_id"] == "b" and score(old[0]) == 0.6


def test_candidates_are_distinct_configurations_in_the_search_order():
    space = parse_search_space({"search": {"beta": {"uniform": [0.1, 0.9]}}, "fixed": {}}, source="s")
    rows = [_row("a", 0.9, **{"param.beta": 0.5}), _row("b", 0.8, **{"param.beta": 0.5}),  # b repeats a
            _row("c", 0.7, **{"param.beta": 0.3}), _row("d", 0.6, **{"param.beta": 0.2}),
            {**_row("e", 0.95, **{"param.beta": 0.1}), "status": "failed"}]  # failed: never a candidate
    assert [c.trial_id for c in pick_candidates(rows, space, 3)] == ["a", "c", "d"]
    assert confirmation_seeds(3, 3) == [4, 5, 6]


def test_the_confirmed_winner_is_the_best_mean_and_ties_keep_the_search_order():
    a, b = Candidate(_row("a", 0.9), {}, {}), Candidate(_row("b", 0.8), {}, {})
    results = [{"candidate": "a", "seed": 1, "status": "completed", "best_val_acc": 0.70},
               {"candidate": "a", "seed": 2, "status": "completed", "best_val_acc": 0.74},
               {"candidate": "b", "seed": 1, "status": "completed", "best_val_acc": 0.76},
               {"candidate": "b", "seed": 2, "status": "failed", "best_val_acc": 0.99}]  # failed: left out
    assert choose_confirmed([a, b], results) is b and a.mean == pytest.approx(0.72) and b.values == {1: 0.76}
    assert a.std == pytest.approx(math.sqrt(2 * 0.02 ** 2))
    c, d = Candidate(_row("c", 0.9), {}, {}), Candidate(_row("d", 0.8), {}, {})
    tie = [{"candidate": k, "seed": 1, "status": "completed", "best_val_acc": 0.5} for k in ("d", "c")]
    assert choose_confirmed([c, d], tie) is c


# --- one tiny study with a score rule and a confirmation, as a user runs it -------------------------
def _csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_the_score_rule_ranks_the_trials_and_is_what_ray_saw(confirmed_study):
    rows = _csv(confirmed_study["dir"] / "trials.csv")
    for row in rows:
        history = json.loads((confirmed_study["dir"] / "trials" / f"trial_{row['trial_id']}" /
                              "history.json").read_text())
        accs = [h["val_acc"] for h in history]
        assert float(row["score"]) == pytest.approx(sum(accs[-2:]) / len(accs[-2:]))  # last-2
        assert history[-1]["score"] == pytest.approx(float(row["score"]))  # reported to Ray / Optuna / ASHA
        assert row["score_rule"] == "last-2" and float(row["score_se"]) > 0
    assert "best trials by score, last-2: the mean validation accuracy of the last 2 epochs" in confirmed_study["out"]


@pytest.mark.slow
def test_the_confirmation_trains_the_top_configurations_again_and_exports_the_best_mean(confirmed_study):
    from mlflow import MlflowClient

    rows = _csv(confirmed_study["dir"] / "confirmation.csv")
    assert sorted((r["candidate"], r["seed"]) for r in rows) == sorted(
        (c, s) for c in {r["candidate"] for r in rows} for s in ("4", "5")) and len(rows) == 4
    assert all(r["status"] == "completed" and r["epochs"] == "2" for r in rows)  # production epochs
    means = {c: sum(float(r["best_val_acc"]) for r in rows if r["candidate"] == c) / 2 for c in {r["candidate"]
                                                                                                 for r in rows}}
    best_yaml = (confirmed_study["dir"] / "best.yaml").read_text()
    # the best mean wins; a tie (likely on 12 validation clips) goes to the search's order, the
    # order in which best.yaml's header lists the candidates
    order = re.findall(r"^#   trial (\w+):", best_yaml, flags=re.M)
    assert sorted(order) == sorted(means)
    winner = next(c for c in order if means[c] == max(means.values()))
    assert f"trial {winner}, MLflow run" in best_yaml and "confirmed over seeds [4, 5] at 2 epochs" in best_yaml
    assert f"confirmed winner: trial {winner}" in confirmed_study["out"]
    assert "confirmation: the top 2 configurations x seeds [4, 5] x 2 epochs = 8 epochs" in confirmed_study["out"]
    client = MlflowClient(confirmed_study["uri"])
    parent = client.get_run(confirmed_study["parent_run_id"])
    best_run = client.get_run(parent.data.tags["best_run_id"])
    assert best_run.data.tags["trial_id"] == winner and best_run.data.tags["best_trial"] == "true"
    assert "confirmed over seeds [4, 5]" in best_run.data.tags["mlflow.note.content"]
    assert "confirmation.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    confirmations = client.search_runs([confirmed_study["experiment_id"]], "tags.`bmlr.role` = 'confirmation'")
    assert len(confirmations) == 4
    for run in confirmations:  # nested under the trial each confirms, one per seed, finished
        trial_run = client.get_run(run.data.tags["mlflow.parentRunId"])
        assert trial_run.data.tags["trial_id"] == run.data.tags["confirmation_of"]
        assert run.info.run_name == f"confirm {run.data.tags['confirmation_of']} seed {run.data.tags['seed']}"
        assert run.info.status == "FINISHED"
    assert yaml.safe_load(best_yaml)["source"]["trial_id"] == winner
