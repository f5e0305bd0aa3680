"""The grace period a study measures (`grace_period: auto`, the default; bmlr.tuning.calibrated_asha):
nothing is stopped until 4 trials ran to the end, then ASHA with the first epoch from which their
ranking held, its rungs filled with what was seen; none where no epoch held. Fake trials, Ray's
own ASHA inside."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from ray.tune.schedulers import TrialScheduler

from bmlr.tuning.calibrated_asha import CalibratedASHA, choose_grace
from bmlr.tuning.ray_backend import TIME_ATTR, make_scheduler

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP

# four trials of 6 epochs: epochs 1 and 2 rank them in the reverse of their final order, from
# epoch 3 on as the end does
LATE = [[0.60, 0.60, 0.50, 0.55, 0.60, 0.70], [0.55, 0.55, 0.52, 0.57, 0.62, 0.72],
        [0.50, 0.50, 0.54, 0.59, 0.64, 0.74], [0.45, 0.45, 0.56, 0.61, 0.66, 0.76]]


@dataclass(frozen=True)
class FakeTrial:
    trial_id: str


def test_the_grace_period_is_the_first_epoch_from_which_every_epoch_ranks_as_the_end():
    decision = choose_grace(LATE, max_t=6)
    assert decision.grace_period == 3 and decision.trials == 4
    assert [(a.epoch, a.rho) for a in decision.agreement] == [(1, -1.0), (2, -1.0), (3, 1.0), (4, 1.0), (5, 1.0)]
    # epoch 4 disagrees again: only epoch 5 holds from there on
    wobbly = [c[:3] + [c[3] if i % 2 else 0.9 - c[3]] + c[4:] for i, c in enumerate(LATE)]
    assert choose_grace(wobbly, 6).grace_period == 5
    # the epoch before the last disagrees: nothing may stop a trial
    flat_end = [c[:5] + [1.5 - c[4]] for c in LATE]
    assert choose_grace(flat_end, 6).grace_period is None
    assert choose_grace(LATE[:3], 6).grace_period is None  # three trials: too few to tell


def _feed(scheduler, trial, values, start=1):
    return [scheduler.on_trial_result(None, trial, {TIME_ATTR: e, "score": v}) for e, v in enumerate(values, start)]


def test_nothing_stops_until_four_trials_ran_to_the_end_then_asha_with_the_measured_grace(tmp_path):
    record = tmp_path / "grace_period.json"
    scheduler = make_scheduler("asha", max_t=6, grace_period="auto", reduction_factor=2, record=record)
    assert isinstance(scheduler, CalibratedASHA)
    scheduler.set_search_properties("score", "max")
    trials = [FakeTrial(f"t{i}") for i in range(7)]
    for trial in trials[:5]:
        scheduler.on_trial_add(None, trial)
    # a fifth trial runs beside the first four and is not stopped while they calibrate, however bad
    assert _feed(scheduler, trials[4], [0.01, 0.01, 0.01]) == [CONTINUE] * 3
    for trial, curve in zip(trials[:4], LATE):
        assert _feed(scheduler, trial, curve) == [CONTINUE] * 5 + [STOP]  # run to the end
        scheduler.on_trial_complete(None, trial, {TIME_ATTR: 6, "score": curve[-1]})
    assert scheduler.decision.grace_period == 3
    assert json.loads(record.read_text())["grace_period"] == 3
    # the rungs saw the fifth trial's epoch 3 (below every other): it stops at its next result
    assert _feed(scheduler, trials[4], [0.01], start=4) == [STOP]
    # a new trial is judged at epoch 3 (rungs 3 and 6 with factor 2), not before
    scheduler.on_trial_add(None, trials[5])
    assert _feed(scheduler, trials[5], [0.0, 0.0, 0.0]) == [CONTINUE, CONTINUE, STOP]
    scheduler.on_trial_add(None, trials[6])
    assert _feed(scheduler, trials[6], [0.0, 0.0, 0.9, 0.9]) == [CONTINUE] * 4  # top of rung 3


def test_where_the_first_epoch_already_ranks_as_the_end_a_bad_trial_stops_at_epoch_1(tmp_path):
    """The opposite of LATE: the four trials keep their order from epoch 1, so the grace period
    is 1 and a new trial below them all stops after its first epoch."""
    early = [[0.50 + 0.05 * i + 0.04 * e for e in range(6)] for i in range(4)]
    assert choose_grace(early, 6).grace_period == 1
    scheduler = make_scheduler("asha", max_t=6, grace_period="auto", reduction_factor=2, record=tmp_path / "g.json")
    scheduler.set_search_properties("score", "max")
    for i, curve in enumerate(early):
        scheduler.on_trial_add(None, FakeTrial(f"t{i}"))
        _feed(scheduler, FakeTrial(f"t{i}"), curve)
    assert scheduler.decision.grace_period == 1
    bad = FakeTrial("bad")
    scheduler.on_trial_add(None, bad)
    assert _feed(scheduler, bad, [0.1]) == [STOP]


def test_where_no_epoch_held_nothing_is_ever_stopped(tmp_path):
    record = tmp_path / "grace_period.json"
    scheduler = make_scheduler("hyperband", max_t=6, grace_period="auto", reduction_factor=2, record=record)
    scheduler.set_search_properties("score", "max")
    flat_end = [c[:5] + [1.5 - c[4]] for c in LATE]
    for i, curve in enumerate(flat_end):
        scheduler.on_trial_add(None, FakeTrial(f"t{i}"))
        _feed(scheduler, FakeTrial(f"t{i}"), curve)
    assert scheduler.decision.grace_period is None and json.loads(record.read_text())["grace_period"] is None
    late = FakeTrial("late")
    scheduler.on_trial_add(None, late)
    assert _feed(scheduler, late, [0.0] * 6) == [CONTINUE] * 5 + [STOP]


def test_a_set_grace_period_is_plain_asha():
    from ray.tune.schedulers import AsyncHyperBandScheduler

    scheduler = make_scheduler("asha", max_t=6, grace_period=2, reduction_factor=2)
    assert isinstance(scheduler, AsyncHyperBandScheduler) and not isinstance(scheduler, CalibratedASHA)


@pytest.mark.parametrize("text, expected", [("auto", "auto"), ("3", 3)])
def test_grace_period_on_the_command_line(text, expected):
    from bmlr.tuning.options import grace_period

    assert grace_period(text) == expected


def test_a_resumed_study_keeps_its_learned_grace_period(tmp_path):
    import pickle

    record = tmp_path / "grace_period.json"
    first = make_scheduler("asha", max_t=6, grace_period="auto", reduction_factor=2, record=record)
    first.set_search_properties("score", "max")
    as_saved = pickle.dumps(first)  # Ray pickles the scheduler with the tuner when the study starts
    for i, curve in enumerate(LATE):
        first.on_trial_add(None, FakeTrial(f"t{i}"))
        _feed(first, FakeTrial(f"t{i}"), curve)
    assert first.decision.grace_period == 3
    # the driver restarts (--resume, Tuner.restore): the scheduler comes back as it was saved and
    # judges at epoch 3 from the first new trial on, without calibrating again
    resumed = pickle.loads(as_saved)
    good, bad = FakeTrial("good"), FakeTrial("bad")
    resumed.on_trial_add(None, good)
    resumed.on_trial_add(None, bad)
    assert resumed.decision == first.decision
    assert _feed(resumed, good, [0.9, 0.9, 0.9]) == [CONTINUE] * 3
    assert _feed(resumed, bad, [0.0, 0.0, 0.0]) == [CONTINUE, CONTINUE, STOP]
    assert json.loads(record.read_text())["grace_period"] == 3
    # a study that decided to stop nothing keeps that too
    record.write_text(json.dumps({"grace_period": None, "trials": 4, "agreement": {"1": 0.1}}))
    never = pickle.loads(as_saved)
    never.on_trial_add(None, good)
    never.on_trial_add(None, bad)
    _feed(never, good, [0.9] * 3)
    assert _feed(never, bad, [0.0] * 6) == [CONTINUE] * 5 + [STOP]


def test_a_resumed_study_says_the_grace_period_it_measured(tmp_path):
    """The banner of a resumed study names the grace period it keeps, not a measurement to come."""
    import types

    from bmlr.tuning.store import StudyStore
    from bmlr.tuning.strategies import Search

    settings = types.SimpleNamespace(grace_period="auto", reduction_factor=3)
    plan = types.SimpleNamespace(settings=settings, resumed=True, store=StudyStore(tmp_path))
    assert Search().schedule_text(plan) == "ASHA grace measured on the first 4 trials to finish, reduction 3"
    (tmp_path / "grace_period.json").write_text(json.dumps({"grace_period": 3, "trials": 4, "agreement": {}}))
    assert Search().schedule_text(plan) == "ASHA grace 3, as measured on the first 4 trials, reduction 3"
    (tmp_path / "grace_period.json").write_text(json.dumps({"grace_period": None, "trials": 5, "agreement": {}}))
    assert Search("hyperband").schedule_text(plan) == \
        "Hyperband (ASHA brackets) no early stopping, as measured on the first 5 trials, reduction 3"
    plan.resumed = False  # a new study in a folder that happens to hold a record: still to be measured
    assert Search().schedule_text(plan) == "ASHA grace measured on the first 4 trials to finish, reduction 3"
