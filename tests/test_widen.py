"""Ranges that move (`--widen`, bmlr.tuning.widen): a range whose winner lies in its outer tenth is
widened on that side by half its width (log scale where the range is log), less where the key
allows no more; the second study's searcher is told every trial of the first and samples the
widened range. Hand-checkable bounds; the searcher is built as a study builds it, without Ray."""
from __future__ import annotations

import pytest

from bmlr.tuning.plan import StudySettings, plan_study
from bmlr.tuning.search_space import parse_search_space
from bmlr.tuning.widen import warm_points, widen_param, widened_space

SPACE = {"search": {"lr": {"loguniform": [1.0e-4, 1.0e-2], "default": 1.0e-3},
                    "beta": {"uniform": [0.1, 0.9], "default": 0.5},
                    "model_depth": {"int": [1, 4], "default": 1},
                    "fusion": {"choice": ["concat", "sum"], "default": "concat"}},
         "fixed": {"epochs": 2}}


def _bounds(param):
    return (pytest.approx(param.low), pytest.approx(param.high))


def test_a_range_widens_by_half_its_width_on_the_winners_side_as_far_as_the_key_allows():
    space = parse_search_space(SPACE, source="s.yaml")
    lr, beta, depth = space.params["lr"], space.params["beta"], space.params["model_depth"]
    anything = lambda value: True  # noqa: E731
    assert _bounds(widen_param(lr, "high", anything)) == (1e-4, 1e-1)  # one decade of two, log scale
    assert _bounds(widen_param(lr, "low", anything)) == (1e-5, 1e-2)
    assert (widen_param(depth, "high", anything).low, widen_param(depth, "high", anything).high) == (1, 6)  # 5.5 up
    at_most_one = lambda value: 0.0 <= value <= 1.0  # noqa: E731  (beta's own limits, bmlr.config)
    assert _bounds(widen_param(beta, "high", at_most_one)) == (0.1, 1.0)  # 1.3 is no beta: as far as beta goes
    assert _bounds(widen_param(beta, "low", at_most_one)) == (0.0, 0.9)
    top = widen_param(beta, "high", at_most_one)
    assert top.high == 1.0 and widen_param(top, "high", at_most_one) is None  # at beta's limit: nowhere to go
    near = widen_param(beta, "high", lambda value: 0.0 <= value <= 0.95)  # a limit that is no round step away
    assert near.high == pytest.approx(0.95, abs=1e-9) and near.high <= 0.95


def test_only_the_ranges_whose_winner_is_at_an_edge_move_and_the_key_decides_how_far():
    space = parse_search_space(SPACE, source="s.yaml")
    wide, lines = widened_space(space, {"lr": 9e-3, "beta": 0.85, "model_depth": 2, "fusion": "sum"})
    assert _bounds(wide.params["lr"]) == (1e-4, 1e-1) and _bounds(wide.params["beta"]) == (0.1, 1.0)
    assert wide.params["model_depth"] == space.params["model_depth"] and wide.params["fusion"] == space.params["fusion"]
    assert lines == ["lr: 0.009 is at the high edge of [0.0001, 0.01]: searched in [0.0001, 0.1]",
                     "beta: 0.85 is at the high edge of [0.1, 0.9]: searched in [0.1, 1]"]
    assert wide.fixed == space.fixed and "widened where the winner lay at a range edge" in wide.text
    again = parse_search_space(__import__("yaml").safe_load(wide.text), source="again")  # the file it writes
    assert _bounds(again.params["lr"]) == (1e-4, 1e-1) and again.params["lr"].default == 1e-3
    same, none = widened_space(space, {"lr": 1e-3, "beta": 0.5})
    assert same is space and none == []
    edge_of_beta = parse_search_space({**SPACE, "search": {"beta": {"uniform": [0.1, 1.0]}}}, source="b.yaml")
    same, lines = widened_space(edge_of_beta, {"beta": 0.97})
    assert same is edge_of_beta and lines == ["beta: 0.97 is at the high edge of [0.1, 1.0], which is as far as the "
                                              "key goes: not widened"]


def test_the_second_study_is_told_every_trial_and_samples_the_widened_range(tmp_path):
    space = parse_search_space(SPACE, source="s.yaml")
    rows = [{"trial_id": f"t{i}", "status": "completed", "score": 0.5 + i / 100, "param.lr": lr,
             "param.beta": 0.5, "param.model_depth": 1, "param.fusion": "concat"}
            for i, lr in enumerate((1e-3, 9e-3, 9.5e-3, 2e-3))]
    rows.append({"trial_id": "failed", "status": "failed", "score": None, "param.lr": 5e-3, "param.beta": 0.5,
                 "param.model_depth": 1, "param.fusion": "sum"})
    warm = warm_points(rows, space)
    assert [w["value"] for w in warm] == [0.5, 0.51, 0.52, 0.53] and warm[0]["params"]["lr"] == 1e-3
    wide, _ = widened_space(space, {"lr": 9.5e-3, "beta": 0.5})
    path = wide.save(tmp_path / "widened_space.yaml")
    plan = plan_study(StudySettings(search_space=str(path), storage=str(tmp_path / "runs"), name="s-widened",
                                    samples=8, warm_start=warm), log=lambda _m: None, lock=False)
    assert plan.strategy.untuned_point(plan) == {}  # the defaults were a trial of the first study
    searcher = plan.strategy.tuner_args(plan)["searcher"]
    suggested = [searcher.suggest(f"trial_{i}")["lr"] for i in range(12)]
    assert all(1e-4 <= lr <= 1e-1 for lr in suggested) and max(suggested) > 1e-2  # beyond the first range
