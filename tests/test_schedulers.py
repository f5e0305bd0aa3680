"""The study's early stopping (`--scheduler asha|hyperband|none`) and the end-of-study check of
how well ASHA's rung epochs ranked the trials (bmlr.tuning.rung_check)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bmlr.tuning.ray_backend import hyperband_brackets, make_scheduler
from bmlr.tuning.rung_check import rank_agreement, rung_epochs, rung_warning
from bmlr.tuning.search_space import SearchSpaceError, load_search_space, parse_search_space

ROOT = Path(__file__).resolve().parents[1]


def test_hyperband_runs_every_bracket_and_none_trains_every_trial_to_the_end():
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    assert hyperband_brackets(20, 1, 3) == 3  # first rungs at epochs 1, 3, 9
    assert hyperband_brackets(20, 2, 3) == 3 and hyperband_brackets(2, 1, 3) == 1 and hyperband_brackets(1, 1, 3) == 1
    hyperband = make_scheduler("hyperband", max_t=20, grace_period=1, reduction_factor=3)
    asha = make_scheduler("asha", max_t=20, grace_period=1, reduction_factor=3)
    assert isinstance(hyperband, AsyncHyperBandScheduler) and len(hyperband._brackets) == 3
    assert len(asha._brackets) == 1
    assert isinstance(make_scheduler("none"), FIFOScheduler)
    with pytest.raises(ValueError, match="asha, hyperband, none"):
        make_scheduler("bohb")


def test_the_search_space_can_choose_the_scheduler():
    doc = {"scheduler": "hyperband", "search": {"beta": {"uniform": [0.1, 0.9]}}, "fixed": {}}
    space = parse_search_space(doc, source="s.yaml")
    assert space.scheduler == "hyperband" and space.for_method("bmlr").scheduler == "hyperband"
    assert "scheduler: hyperband" in space.to_yaml()
    with pytest.raises(SearchSpaceError, match="s.yaml: scheduler: 'bohb' is not one of asha, hyperband, none"):
        parse_search_space({**doc, "scheduler": "bohb"}, source="s.yaml")


# four trials that ran 4 epochs: at epoch 1 in the reverse order of their end, from epoch 2 in the
# same order; a stopped trial (2 epochs) is left out of the comparison
LATE = [[0.4, 0.50, 0.60, 0.90], [0.5, 0.45, 0.55, 0.80], [0.6, 0.40, 0.50, 0.70], [0.7, 0.35, 0.45, 0.60],
        [0.9, 0.2]]


def test_rank_agreement_is_spearman_over_the_trials_that_ran_to_the_end():
    assert rung_epochs(1, 3, 20) == [1, 3, 9] and rung_epochs(2, 2, 9) == [2, 4, 8] and rung_epochs(5, 3, 4) == []
    agreement = rank_agreement(LATE, [1, 2, 3])
    assert [(a.epoch, a.rho, a.trials) for a in agreement] == [(1, -1.0, 4), (2, 1.0, 4), (3, 1.0, 4)]
    assert rank_agreement(LATE[1:], [1])[0].rho is None  # 3 long trials: too few to tell


def test_a_first_rung_no_better_than_chance_is_a_warning_with_the_grace_period_to_use():
    text = rung_warning(LATE, grace_period=1, reduction_factor=3, max_epochs=4)
    assert "(4 trials ran to the end): epoch 1: -1.00, epoch 3: +1.00" in text
    assert "warning: ASHA's first rung (epoch 1) ranked the trials no better than chance" in text
    assert "--grace-period 2" in text  # the first epoch whose ranking agreed
    early = [[c[-1]] * 4 for c in LATE[:4]]  # every epoch already ranks as the end does
    assert "warning" not in rung_warning(early, 1, 3, 4) and "epoch 1: +1.00" in rung_warning(early, 1, 3, 4)
    assert rung_warning(LATE[1:], 1, 3, 4) == ""  # too few trials ran to the end


@pytest.mark.slow
def test_a_hyperband_study_as_a_user_runs_it(confirmed_study):
    """The tiny confirmed study (tests/conftest.py) runs with `--scheduler hyperband`."""
    from mlflow import MlflowClient

    assert "Hyperband (ASHA brackets) grace measured on the first 4 trials to finish, reduction 3" in \
        confirmed_study["out"]
    # its 4 trials all ran to the end and measured the grace period, which the summary states
    record = json.loads((confirmed_study["dir"] / "grace_period.json").read_text())
    assert record["trials"] == 4 and set(record["agreement"]) == {"1"}
    assert confirmed_study["settings"]["grace_period"] == "auto"
    line = next(line for line in confirmed_study["out"].splitlines() if line.startswith("grace period: "))
    assert (f"grace period: {record['grace_period']}, measured on the first 4 trials" in line
            if record["grace_period"] else "no trial was stopped early" in line)
    assert confirmed_study["settings"]["scheduler"] == "hyperband"
    parent = MlflowClient(confirmed_study["uri"]).get_run(confirmed_study["parent_run_id"])
    assert parent.data.params["scheduler"] == "hyperband"


@pytest.mark.slow
def test_the_study_summary_reports_the_rung_agreement(finished_study):
    """The tiny study (6 trials, ASHA grace 1, 2 epochs at most) has at least 4 trials that ran to
    the end: its summary and its parent run carry the rung check."""
    from mlflow import MlflowClient

    lines = [line for line in finished_study["out"].splitlines() if line.startswith("rank agreement of the rung")]
    assert len(lines) == 1 and "epoch 1: " in lines[0], finished_study["out"][-3000:]
    tag = MlflowClient(finished_study["uri"]).get_run(finished_study["parent_run_id"]).data.tags["rung_agreement"]
    assert tag.startswith(lines[0])


SPACE = {"search": {"lr": {"loguniform": [1.0e-4, 1.0e-2]}}, "fixed": {"epochs": 4}}


def test_grace_period_in_the_search_space():
    """`grace_period:` is the space's default for ASHA: parsed and checked, carried into the
    method's view and the written space, overridden by --grace-period, cut to a short study's
    epochs (an explicit --grace-period that long is an error), else the code's default."""
    from bmlr.tuning.plan import DEFAULT_GRACE_PERIOD, StudyError, StudySettings, resolve_grace

    space = parse_search_space({**SPACE, "grace_period": 3}, source="s.yaml")
    assert space.grace_period == 3 and space.for_method("bmlr").grace_period == 3
    assert "grace_period: 3" in space.to_yaml()
    for bad in (0, -1, 2.5, "3", True, "Auto"):
        with pytest.raises(SearchSpaceError, match=r"s.yaml: grace_period: expected a whole number of epochs >= 1 or "
                                                   r"auto"):
            parse_search_space({**SPACE, "grace_period": bad}, source="s.yaml")

    def resolved(cli, space, max_epochs):
        return resolve_grace(StudySettings(grace_period=cli), space, max_epochs)

    plain = parse_search_space(SPACE, source="s.yaml")
    assert plain.grace_period is None
    assert resolved(None, space, 20) == 3 and resolved(2, space, 20) == 2
    assert resolved(None, space, 2) == 2  # a two-epoch study cannot wait three
    assert resolved(None, plain, 20) == DEFAULT_GRACE_PERIOD == "auto"  # measured by the study
    assert resolved(None, plain, 2) == "auto" and resolved("auto", space, 20) == "auto"
    assert parse_search_space({**SPACE, "grace_period": "auto"}, source="s.yaml").grace_period == "auto"
    with pytest.raises(StudyError, match="--grace-period 5 exceeds the 4 epochs"):
        resolved(5, space, 4)


def test_a_trials_budget_in_the_search_space(tmp_path):
    """`max_epochs:` is a trial's budget (ASHA's max_t) where --max-epochs says none: parsed and
    checked, carried into every view of the space and the written copy; the production epochs
    (`fixed.epochs`, what best.yaml trains) stay as they are. The shipped synthetic space uses it."""
    from bmlr.tuning.plan import StudySettings, plan_study

    space = parse_search_space({**SPACE, "max_epochs": 4}, source="s.yaml")
    assert space.max_epochs == 4 and space.for_method("bmlr").max_epochs == 4
    assert space.with_fixed({"alpha": 1.0}).max_epochs == 4 and "max_epochs: 4" in space.to_yaml()
    assert parse_search_space(yaml.safe_load(space.to_yaml()), source="again").max_epochs == 4
    for bad in (0, 2.5, "3", True):
        with pytest.raises(SearchSpaceError, match=r"s.yaml: max_epochs: expected a whole number"):
            parse_search_space({**SPACE, "max_epochs": bad}, source="s.yaml")
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**SPACE, "max_epochs": 4, "fixed": {**SPACE.get("fixed", {}), "epochs": 6}}))
    for cli, expected in ((None, 4), (5, 5)):
        plan = plan_study(StudySettings(search_space=str(path), storage=str(tmp_path / "runs"), max_epochs=cli,
                                        name=f"b{cli}"), lock=False)
        assert plan.max_epochs == expected and plan.production.epochs == 6
    shipped = load_search_space(ROOT / "search_spaces" / "synthetic.yaml")
    assert shipped.max_epochs is not None and shipped.max_epochs < shipped.fixed["epochs"]
