"""The study's early stopping (`--scheduler asha|hyperband|none`) and the end-of-study check of
how well ASHA's rung epochs ranked the trials (bmlr.tuning.rung_check)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bmlr.tuning.ray_backend import hyperband_brackets, make_scheduler
from bmlr.tuning.rung_check import rank_agreement, rung_epochs, rung_warning
from bmlr.tuning.search_space import SearchSpaceError, parse_search_space

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
def test_a_hyperband_study_as_a_user_runs_it(finished_study, tmp_path):
    from mlflow import MlflowClient

    env = dict(os.environ, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    storage = tmp_path / "runs"
    out = subprocess.run([sys.executable, str(ROOT / "tune.py"), "--data-root", str(finished_study["data"]),
                          "--search-space", str(finished_study["space"]), "--storage", str(storage), "--set",
                          f"cache_dir={finished_study['cache']}", "--num-cpus", "2", "-v", "0", "--samples", "5",
                          "--max-epochs", "3", "--name", "hb", "--report", "none", "--scheduler", "hyperband"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Hyperband (ASHA brackets) grace 1, reduction 3" in out.stdout
    info = json.loads((storage / "synthetic" / "hb" / "study.json").read_text())
    assert info["settings"]["scheduler"] == "hyperband"
    parent = MlflowClient(f"sqlite:///{storage.resolve()}/mlflow.db").get_run(info["parent_run_id"])
    assert parent.data.params["scheduler"] == "hyperband"
