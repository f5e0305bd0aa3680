"""A comparison whose verdict survives the search's own luck (issue 17, item 7): common random
numbers for the keys rows share (bmlr.tuning.crn_sampler), several study seeds per row, and
the flags of the comparison table (bmlr.tuning.compare.tables).

The sampler tests drive real Optuna studies the way Ray's OptunaSearch does (``ask`` with the
row's distributions, ``tell``); the table tests build rows in memory."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from bmlr.tuning.crn_sampler import CommonRandomSampler, tpe_startup_trials, value_at
from bmlr.tuning.ray_backend import make_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

LR = FloatDistribution(1e-4, 1e-2, log=True)
FUSION = CategoricalDistribution(["concat", "sum", "film"])
BASELINE = {"lr": LR, "fusion": FUSION}  # lr x fusion
BMLR = {"alpha": FloatDistribution(0.5, 2.0, log=True), "beta": FloatDistribution(0.05, 0.95), "lr": LR,
        "fusion": FUSION}  # its own keys come first: they use up a plain sampler's stream


def _objective(params: dict) -> float:
    return -abs(math.log10(params["lr"]) + 2.5) + (0.1 if params["fusion"] == "concat" else 0.0)


def _search(space: dict, sampler, trials: int) -> list[dict]:
    """`trials` trials asked and told one after another, as Ray's OptunaSearch does."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    drawn = []
    for _ in range(trials):
        trial = study.ask(fixed_distributions=space)
        drawn.append(dict(trial.params))
        study.tell(trial, _objective(trial.params))
    return drawn


def test_rows_sharing_lr_draw_the_same_start_up_values():
    startup = tpe_startup_trials()
    assert startup == 10
    base = _search(BASELINE, make_sampler("tpe", seed=3, crn=True), startup)
    bmlr = _search(BMLR, make_sampler("tpe", seed=3, crn=True), startup)
    assert [t["lr"] for t in base] == [t["lr"] for t in bmlr]
    assert [t["fusion"] for t in base] == [t["fusion"] for t in bmlr]
    assert len({t["lr"] for t in base}) == startup  # ten different values, not one repeated
    # bmlr's own keys vary, and a row's draws are reproducible
    assert len({t["alpha"] for t in bmlr}) == startup
    assert _search(BMLR, make_sampler("tpe", seed=3, crn=True), startup) == bmlr
    # another study seed draws other values
    other = _search(BASELINE, make_sampler("tpe", seed=4, crn=True), startup)
    assert [t["lr"] for t in other] != [t["lr"] for t in base]


def test_plain_tpe_gives_such_rows_different_lr_values():
    """What the common random numbers fix: one stream for all keys."""
    base = _search(BASELINE, make_sampler("tpe", seed=3), 10)
    bmlr = _search(BMLR, make_sampler("tpe", seed=3), 10)
    assert [t["lr"] for t in base] != [t["lr"] for t in bmlr]


def test_after_the_start_up_tpe_proposes_what_plain_tpe_would():
    """The wrapped TPE is untouched by the start-up draws: told the same history, it proposes
    the same next trial as a plain TPE with the same seed."""
    startup = 4
    crn_sampler = make_sampler("tpe", seed=7, n_startup_trials=startup, crn=True)
    drawn = _search(BMLR, crn_sampler, startup + 3)
    plain = optuna.create_study(direction="maximize", sampler=make_sampler("tpe", seed=7, n_startup_trials=startup))
    for params in drawn[:startup]:
        plain.add_trial(optuna.trial.create_trial(params=params, distributions=BMLR, value=_objective(params)))
    for params in drawn[startup:]:
        trial = plain.ask(fixed_distributions=BMLR)
        assert trial.params == params
        plain.tell(trial, _objective(trial.params))


def test_a_trial_is_random_while_fewer_than_the_start_up_trials_finished():
    """Trials asked before any finished (Ray's concurrent trials) are all start-up trials;
    the decision is kept per trial."""
    sampler = make_sampler("tpe", seed=0, n_startup_trials=2, crn=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    asked = [study.ask(fixed_distributions=BASELINE) for _ in range(4)]
    frozen = study.get_trials(deepcopy=False)
    assert len(frozen) == 4 and all(sampler.in_startup(study, t) for t in frozen)
    for t in asked:
        study.tell(t, _objective(t.params))
    later = study.ask(fixed_distributions=BASELINE)
    assert not sampler.in_startup(study, study.get_trials(deepcopy=False)[later.number])


@pytest.mark.parametrize("distribution, check", [
    (FloatDistribution(1e-4, 1e-2, log=True), lambda v: 1e-4 <= v <= 1e-2 and isinstance(v, float)),
    (FloatDistribution(0.0, 1.0, step=0.25), lambda v: v in (0.0, 0.25, 0.5, 0.75, 1.0)),
    (FloatDistribution(-1.0, 1.0), lambda v: -1.0 <= v <= 1.0),
    (IntDistribution(1, 5), lambda v: v in range(1, 6) and isinstance(v, int)),
    (IntDistribution(2, 10, step=4), lambda v: v in (2, 6, 10)),
    (IntDistribution(1, 64, log=True), lambda v: 1 <= v <= 64 and isinstance(v, int)),
    (CategoricalDistribution(["a", "b", None]), lambda v: v in ("a", "b", None)),
])
def test_draws_respect_the_distribution(distribution, check):
    values = [value_at(distribution, (i + 0.5) / 240) for i in range(240)]
    assert all(check(v) for v in values)
    if not getattr(distribution, "log", False) and not (isinstance(distribution, FloatDistribution)
                                                        and distribution.step is None):
        # grid points and choices: each equally likely (equal shares of [0, 1))
        counts: dict = {}
        for v in values:
            counts[v] = counts.get(v, 0) + 1
        assert len(counts) == len(_points(distribution)) and max(counts.values()) - min(counts.values()) <= 1


def _points(distribution) -> list:
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    step = distribution.step
    return [distribution.low + k * step for k in range(int(round((distribution.high - distribution.low) / step)) + 1)]


def test_log_draws_are_uniform_in_log_space():
    d = FloatDistribution(1e-4, 1e-2, log=True)
    assert value_at(d, 0.5) == pytest.approx(1e-3)
    assert value_at(d, 0.0) == pytest.approx(1e-4) and value_at(d, 0.999999) <= 1e-2


def test_crn_is_for_tpe_only():
    with pytest.raises(ValueError, match="tpe"):
        make_sampler("random", seed=0, crn=True)
    with pytest.raises(ValueError, match="n_startup_trials"):
        CommonRandomSampler(optuna.samplers.TPESampler(seed=0), 0, -1)


# ---------------------------------------------------------------------------------------------
# the budget flag and the rows' readings in the comparison table (the other flags: test_compare_flags.py)
def _res(acc: float, std: float = 0.01, seeds: int = 2) -> dict:
    stat = {"mean": acc, "std": std}
    return {"summary": {"test_acc": stat, "test_acc_audio": stat, "test_acc_visual": stat,
                        "test_imbalance_ratio": {"mean": 1.0, "std": 0.0}},
            "seeds": [{"seed": s, "test": {"acc": acc}} for s in range(seeds)]}


def _row(label: str, vals: list[float], tests: list[float], se: float | None = 0.002, startup: int = 10) -> dict:
    searches = [{"study_seed": k, "trials": 12, "epochs_searched": 30, "best_val_acc": v, "best_val_se": se,
                 "results": _res(t)} for k, (v, t) in enumerate(zip(vals, tests))]
    row = {"label": label, "method": label, "startup_trials": startup, "crn": True, **searches[0]}
    if len(searches) > 1:
        row["searches"] = searches
    return row


def _settings(samples: int, study_seeds: int):
    from bmlr.tuning.compare import ComparisonSettings

    return ComparisonSettings(dataset="avmnist", arms=[{"label": "baseline", "method": "baseline"}],
                              samples=samples, reference="baseline", name="t", study_seeds=study_seeds)


def test_a_budget_of_start_up_trials_only_flags_every_row_and_still_ranks_it():
    from bmlr.tuning.compare.tables import render_markdown, search_flags

    def rows_of(trials: int) -> list[dict]:  # each row's own number of trials decides
        return [{**_row(label, [0.99], [acc]), "trials": trials} for label, acc in (("baseline", 0.97), ("bmlr", 0.975))]
    rows = rows_of(10)
    assert all(k == "budget" for r in rows for k, _ in search_flags(rows, samples=10)[r["label"]])
    assert search_flags(rows_of(11), samples=11) == {"baseline": [], "bmlr": []}
    assert search_flags([{k: v for k, v in r.items() if k != "trials"} for r in rows], samples=11)["bmlr"] == []
    markdown = render_markdown("t", rows, _settings(10, 1), "python tune.py compare")
    # a flag says what the place rests on; it does not take the row out of the ranking
    assert ("Ranking by mean test accuracy (≈: cannot be told apart, within two standard errors of the group's "
            "first): bmlr (97.50; flagged: budget) > baseline (97.00; flagged: budget).") in markdown
    assert "random search only (10 trials <= 10 start-up)" in markdown and "- flag *budget*:" in markdown
    lines = render_markdown("t", rows_of(11), _settings(11, 1), "x").splitlines()
    assert any(line.endswith("bmlr (97.50) > baseline (97.00).") for line in lines)


def test_the_tables_state_each_rows_reading_of_an_ambiguous_method():
    from bmlr.methods import METHODS
    from bmlr.tuning.compare.tables import readings, render_markdown

    rows = [_row("baseline", [0.99], [0.97]), _row("vanilla_reshape", [0.98], [0.96]),
            {**_row("uni (non-target)", [0.98], [0.96]), "method": "uni_reshaping"}]
    lines = readings(rows)
    assert lines[0] == "" and len(lines) == 3  # baseline has no reading to state
    assert lines[1] == f"- *vanilla_reshape* (our reading; docs/comparisons.md): {METHODS.get('vanilla_reshape').reading}."
    assert lines[2].startswith("- *uni (non-target)* (our reading") and "`target_share: non_target`" in lines[2]
    assert "`xi_d` is the literal reading" in render_markdown("t", rows, _settings(12, 1), "x")
    ambiguous = {"vanilla_reshape", "uni_reshaping", "uni_distill", "udi", "aug", "pmr", "agm"}
    assert {m for m in ambiguous if METHODS.get(m).reading} == ambiguous


# ---------------------------------------------------------------------------------------------
# end to end: a tuned comparison of two rows sharing lr and fusion, two study seeds each
TINY_SPACE = {"search": {"beta": {"uniform": [0.1, 0.9], "default": 0.5},
                         "alpha": {"loguniform": [0.5, 2.0], "default": 1.0},
                         "lr": {"loguniform": [1.0e-3, 1.0e-2], "default": 5.0e-3},
                         "fusion": {"choice": ["concat", "sum"], "default": "concat"}},
              "fixed": {"model_width": 4, "model_depth": 1, "image_size": 32, "frames": 2, "batch_size": 16,
                        "val_fraction": 0.3, "epochs": 2, "seeds": [0]}}


@pytest.fixture(scope="module")
def two_seed_comparison(tmp_path_factory):
    from bmlr.data.synthetic import generate
    from bmlr.tuning.compare import Comparison, ComparisonSettings

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    base = tmp_path_factory.mktemp("crn")
    data = generate(base / "data", seed=0, n_train_per_class=12,
        n_test_per_class=2, n_val_per_class=2, image_size=32, n_frames=2)
    space = base / "space.yaml"
    space.write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    settings = ComparisonSettings(dataset="synthetic", arms=[{"label": m, "method": m} for m in ("baseline", "bmlr")],
                                  search_space=str(space), data_root=str(data), samples=2, max_epochs=1, epochs=1,
                                  seeds=[0], concurrent=1, storage=str(base / "runs"), name="cmp",
                                  overrides={"cache_dir": str(base / "cache"), "threads": 1}, study_seeds=2)
    outcome = Comparison(settings, log=lambda line: None, command="test").run(num_cpus=2, verbose=0)
    info = json.loads((outcome.comparison_dir / "comparison.json").read_text())
    return {"outcome": outcome, "info": info}


def _lrs(study_dir: str) -> list[float]:
    with (Path(study_dir) / "trials.csv").open() as f:
        return sorted(float(t["param.lr"]) for t in csv.DictReader(f))


@pytest.mark.slow
def test_each_row_is_searched_once_per_study_seed_and_its_winners_spread_is_tabulated(two_seed_comparison):
    from mlflow import MlflowClient

    outcome, info = two_seed_comparison["outcome"], two_seed_comparison["info"]
    assert not outcome.failed and not outcome.interrupted
    folder = outcome.comparison_dir
    means = {}
    for row in info["rows"]:
        label = row["label"]
        assert [t["study_seed"] for t in row["searches"]] == [0, 1] and row["startup_trials"] == 10
        for t in row["searches"]:
            assert Path(t["study_dir"]).name == f"cmp-{label}-seed{t['study_seed']}" and t["trials"] == 2
            assert Path(t["run_dir"]) == folder / "runs" / f"{label}-seed{t['study_seed']}"
            assert yaml.safe_load(Path(t["config"]).read_text())["method"] == label
        accs = [json.loads((Path(t["run_dir"]) / "results.json").read_text())["summary"]["test_acc"]["mean"]
                for t in row["searches"]]
        means[label] = sum(accs) / 2
        assert row["run_dir"] == row["searches"][0]["run_dir"]  # the row's own run: its first search's
    markdown = outcome.markdown
    assert "| method | test acc % (winners of 2 study seeds: mean ± std) |" in markdown
    assert "| baseline | " in markdown and f"{100 * means['bmlr']:.2f} ± " in markdown
    # two trials are TPE's random start-up trials only: every row flagged, and ranked all the same
    assert "Ranking by mean test accuracy" in markdown and "random search only (2 trials <= 10 start-up)" in markdown
    assert markdown.count("flagged: budget") == 2
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    parent = client.get_run(info["parent_run_id"])
    for row in info["rows"]:
        assert parent.data.metrics[f"{row['label']}.acc_over_study_seeds"] == pytest.approx(means[row["label"]])
        for t in row["searches"]:
            study = client.get_run(t["study_run_id"])
            assert study.data.tags["study_seed"] == str(t["study_seed"])
            assert study.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert "production.test_acc" in study.data.metrics


@pytest.mark.slow
def test_rows_of_a_comparison_draw_the_same_lr_values(two_seed_comparison):
    rows = {r["label"]: r for r in two_seed_comparison["info"]["rows"]}
    assert all(r["crn"] for r in rows.values())
    for k in (0, 1):
        assert _lrs(rows["baseline"]["searches"][k]["study_dir"]) == _lrs(rows["bmlr"]["searches"][k]["study_dir"])
    assert _lrs(rows["baseline"]["searches"][0]["study_dir"]) != _lrs(rows["baseline"]["searches"][1]["study_dir"])
