"""A study's strategy as an object (bmlr.tuning.strategies), checked without starting Ray: the
searcher it builds suggests the untuned configuration first (every study and every comparison
row: both are searches), a warm-started search trains no defaults again, a grid has none, and
the summary says where the defaults ranked."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bmlr.tuning.plan import StudySettings, plan_study
from bmlr.tuning.results import untuned_line
from bmlr.tuning.strategies import Grid, Search, strategy_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def plan(tmp_path):
    """The shipped synthetic space's plan (each searched key has a default); nothing is run."""
    settings = StudySettings(search_space=str(ROOT / "search_spaces" / "synthetic.yaml"),
                             storage=str(tmp_path / "runs"), name="s", samples=4)
    return plan_study(settings, log=lambda _m: None, lock=False)


def _first_suggestions(searcher, n: int) -> list[dict]:
    return [searcher.suggest(f"trial_{i}") for i in range(n)]


@pytest.mark.parametrize("crn", [False, True])
def test_the_untuned_configuration_is_the_first_trial(plan, crn):
    defaults = plan.space.defaults_point()
    assert set(defaults) == set(plan.space.params)  # the shipped space names a default for each key
    strategy = Search("asha", crn=crn)
    first, second = _first_suggestions(strategy.tuner_args(plan)["searcher"], 2)
    assert first == defaults and second != defaults  # then TPE samples (common random numbers with crn)
    assert strategy.untuned_point(plan) == defaults


def test_a_warm_started_search_trains_no_defaults_again_and_a_grid_has_none(plan):
    warm = ({"params": {k: v for k, v in plan.space.defaults_point().items()}, "value": 0.5},)
    searcher = Search("asha", warm_start=warm).tuner_args(plan)["searcher"]
    assert _first_suggestions(searcher, 1)[0] != plan.space.defaults_point()  # told, not trained again
    assert Search("asha", warm_start=warm).untuned_point(plan) == {}
    assert Grid((0, 1)).untuned_point(plan) == {} and Grid((0,)).early_stopping is False
    assert strategy_for(StudySettings(kind="surface", grid_seeds=[3, 4])) == Grid((3, 4))
    assert strategy_for(StudySettings(scheduler="none", crn=True)) == Search("none", crn=True)


def test_the_summary_says_where_the_defaults_ranked(plan, monkeypatch):
    tags = {}
    monkeypatch.setattr(type(plan.runs), "set_tags", lambda self, t: tags.update(t))
    defaults = {f"param.{k}": v for k, v in plan.space.defaults_point().items()}
    other = {f"param.{k}": v for k, v in yaml.safe_load("{beta: 0.7, alpha: 1.5, lr: 0.003, fusion: sum}").items()}
    rows = [{"trial_id": "b", "status": "completed", "score": 0.80, "score_se": 0.02, "best_epoch": 3, **other},
            {"trial_id": "a", "status": "completed", "score": 0.70, "score_se": 0.02, "best_epoch": 2, **defaults}]
    line = untuned_line(plan, rows)
    assert line.startswith("untuned defaults (") and "trial a, ranked 2 of 2" in line
    assert line.endswith("best - untuned = +10.0 points (2 SE of the difference: 5.7)")
    assert tags == {"untuned_trial": line}
    assert untuned_line(plan, rows[:1]) == ""  # no trial trained the defaults: nothing to say


def test_a_winner_at_the_edge_of_a_range_is_flagged():
    """The outer tenth of a numeric range, on a log scale where the range is log: lr 9e-3 of
    [1e-4, 1e-2] is at the top (log position 0.98), 1.5e-4 at the bottom (0.09), 1e-3 inside;
    beta 0.85 of [0.1, 0.9] is at the top (0.94), 0.5 inside; a choice has no edge."""
    from bmlr.tuning.results import edge_lines
    from bmlr.tuning.search_space import parse_search_space

    space = parse_search_space({"search": {"lr": {"loguniform": [1e-4, 1e-2]}, "beta": {"uniform": [0.1, 0.9]},
                                           "fusion": {"choice": ["concat", "sum"]}}, "fixed": {}}, source="s.yaml")
    lr, beta = space.params["lr"], space.params["beta"]
    assert [lr.edge(v) for v in (9e-3, 1.5e-4, 1e-3)] == ["high", "low", None]
    assert [beta.edge(v) for v in (0.85, 0.5, 0.1)] == ["high", None, "low"]
    assert space.params["fusion"].edge("sum") is None
    lines = edge_lines(space, {"lr": 9e-3, "beta": 0.5, "fusion": "sum"})
    assert lines == ["range edge: lr = 0.009 lies in the top tenth of its range [0.0001, 0.01] (log scale); the "
                     "best may lie beyond it: search again with --widen (or widen search.lr in the search space)"]
