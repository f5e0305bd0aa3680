"""The search-space grammar: shipped files, Optuna conversion, and every malformed case
rejected with the file and the key named. Fast: no Ray, no training."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from bmlr.config import ConfigError
from bmlr.tuning.search_space import (SearchSpace, SearchSpaceError, StudyDefaults, load_search_space,
                                      parse_search_space, resolve_search_space)
from bmlr.tuning.search_space_parse import DEFAULT_KEYS

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("synthetic", "cremad", "ks", "ave", "avmnist", "mosi", "mosei")


@pytest.mark.parametrize("dataset", DATASETS)
def test_shipped_search_spaces_are_valid(dataset):
    space = load_search_space(ROOT / "search_spaces" / f"{dataset}.yaml")
    assert {"alpha", "beta", "lr", "fusion"} <= set(space.params)
    assert {"epochs", "batch_size", "model_width", "model_depth"} <= set(space.fixed)
    # beta: the open threshold interval; alpha and lr on a log scale (Figure 5 discussion in comments)
    assert space.params["beta"].kind == "uniform" and 0 < space.params["beta"].low < space.params["beta"].high < 1
    assert space.params["alpha"].kind == "loguniform" and space.params["lr"].kind == "loguniform"
    text = (ROOT / "search_spaces" / f"{dataset}.yaml").read_text()
    assert "Figure 5" in text and "beta" in text  # the ranges are explained in the file


def test_optuna_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = parse_search_space({
        "search": {"beta": {"uniform": [0.1, 0.9]}, "alpha": {"loguniform": ["0.5", "2"]},
                   "model_width": {"int": [4, 16], "step": 4}, "fusion": {"choice": ["concat", "sum"]},
                   "gamma": {"uniform": [0.1, 0.5], "step": 0.1}, "optimizer": "sgd"},
        "fixed": {"epochs": 3}}, source="s.yaml")
    dists = space.optuna_space()
    assert list(dists) == ["beta", "alpha", "model_width", "fusion", "gamma"]  # file order
    assert dists["beta"] == FloatDistribution(0.1, 0.9)
    assert dists["alpha"] == FloatDistribution(0.5, 2.0, log=True)  # numeric strings accepted ("1e-5")
    assert dists["model_width"] == IntDistribution(4, 16, step=4)
    assert dists["fusion"] == CategoricalDistribution(["concat", "sum"])
    assert dists["gamma"] == FloatDistribution(0.1, 0.5, step=0.1)
    assert space.fixed == {"epochs": 3, "optimizer": "sgd"}  # plain value in search: a constant
    cfg = space.trial_config(space.base_config().to_dict(), {"beta": 0.3, "fusion": "sum", "model_width": 8})
    assert (cfg.beta, cfg.fusion, cfg.model_width, cfg.optimizer, cfg.epochs) == (0.3, "sum", 8, "sgd", 3)


GOOD = {"beta": {"uniform": [0.1, 0.9]}}


@pytest.mark.parametrize("doc, key, words", [
    # unknown keys
    ({"search": {"bogus": {"uniform": [0, 1]}}}, "search.bogus", "unknown key"),
    ({"search": GOOD, "fixed": {"bogus": 1}}, "fixed.bogus", "unknown key"),
    ({"search": GOOD, "extra": {}}, "extra", "unknown top-level"),
    ({"search": {"beta": {"uniform": [0.1, 0.9], "lo": 1}}}, "search.beta", "unknown key"),
    ({"search": {"beta": {"gaussian": [0.1, 0.9]}}}, "search.beta", "gaussian"),
    ({"search": {"beta": {"uniform": [0.1, 0.9], "choice": [0.1]}}}, "search.beta", "exactly one"),
    # bounds
    ({"search": {"beta": {"uniform": [0.9, 0.1]}}}, "search.beta", "low 0.9 > high 0.1"),
    ({"search": {"model_width": {"int": [16, 4]}}}, "search.model_width", "low 16 > high 4"),
    ({"search": {"lr": {"loguniform": [0, 1e-3]}}}, "search.lr", "low > 0"),
    ({"search": {"lr": {"loguniform": [-1e-5, 1e-3]}}}, "search.lr", "low > 0"),
    ({"search": {"beta": {"uniform": [0.1]}}}, "search.beta", "[low, high]"),
    ({"search": {"beta": {"uniform": "0.1-0.9"}}}, "search.beta", "[low, high]"),
    ({"search": {"beta": {"uniform": [0.1, "x"]}}}, "search.beta.uniform[1]", "number"),
    ({"search": {"beta": {"uniform": [0.1, float("inf")]}}}, "search.beta.uniform[1]", "finite"),
    ({"search": {"model_width": {"int": [4, 8.5]}}}, "search.model_width.int[1]", "integer"),
    ({"search": {"beta": {"uniform": [0.1, 0.9], "step": 0.25}}}, "search.beta", "multiple of step"),
    ({"search": {"lr": {"loguniform": [1e-5, 1e-3], "step": 1e-5}}}, "search.lr", "step"),
    # values the Config rejects (bounds and choices are built into Configs)
    ({"search": {"beta": {"uniform": [0.1, 1.5]}}}, "search.beta", "beta"),
    ({"search": {"alpha": {"uniform": [0, 1]}}}, "search.alpha", "alpha"),
    ({"search": {"fusion": {"choice": ["concat", "attention"]}}}, "search.fusion", "attention"),
    ({"search": {"optimizer": {"choice": ["adam", "lamb"]}}}, "search.optimizer", "lamb"),
    ({"search": GOOD, "fixed": {"fusion": "attention"}}, "fixed.fusion", "attention"),
    ({"search": GOOD, "fixed": {"epochs": 0}}, "fixed.epochs", ">= 1"),
    ({"search": {"beta": {"uniform": [0.1, 0.9]}, "optimizer": "lamb"}}, "search.optimizer", "lamb"),
    # types
    ({"search": {"batch_size": {"uniform": [16, 64]}}}, "search.batch_size", "integer key"),
    ({"search": {"fusion": {"uniform": [0, 1]}}}, "search.fusion", "choice"),
    ({"search": {"fusion": {"choice": []}}}, "search.fusion", "non-empty"),
    ({"search": {"fusion": {"choice": ["sum", "sum"]}}}, "search.fusion", "distinct"),
    ({"search": {"fusion": {"choice": [["sum"]]}}}, "search.fusion", "scalars"),
    ({"search": {"fusion": ["concat", "sum"]}}, "search.fusion", "ambiguous"),
    # structure
    ({"search": {"seeds": {"choice": [0, 1]}}}, "search.seeds", "cannot be searched"),
    ({"search": {"dataset": {"choice": ["ks", "ave"]}}}, "search.dataset", "cannot be searched"),
    ({"search": GOOD, "fixed": {"beta": 0.5}}, "search.beta", "either searched or fixed"),
    ({"search": {}, "fixed": {"epochs": 3}}, "search", "nothing to search"),
    ({"search": {"beta": 0.5}}, "search", "every entry is a constant"),
    ({"search": [1, 2]}, "search", "mapping"),
    ([1, 2], "", "mapping"),
])
def test_malformed_files_name_file_and_key(tmp_path, doc, key, words):
    path = tmp_path / "bad_space.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(SearchSpaceError) as err:
        load_search_space(path)
    message = str(err.value)
    assert message.startswith(str(path)), message
    assert key in message and words in message, message
    assert isinstance(err.value, ConfigError)  # the CLI reports both the same way


def test_empty_missing_and_invalid_yaml(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(SearchSpaceError, match=r"empty\.yaml: the file is empty"):
        load_search_space(empty)
    with pytest.raises(SearchSpaceError, match=r"nope\.yaml: search-space file not found"):
        load_search_space(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("search: {beta: [\n")
    with pytest.raises(SearchSpaceError, match=r"broken\.yaml: not valid YAML"):
        load_search_space(broken)


def test_resolve_against_cwd_then_project(tmp_path):
    assert resolve_search_space(None, "ave", cwd=tmp_path) == ROOT / "search_spaces" / "ave.yaml"
    own = tmp_path / "search_spaces" / "ave.yaml"
    own.parent.mkdir()
    own.write_text(yaml.safe_dump({"search": GOOD}))
    assert resolve_search_space(None, "ave", cwd=tmp_path) == own  # the current folder wins
    with pytest.raises(SearchSpaceError, match="not found"):
        resolve_search_space("missing.yaml", "ave", cwd=tmp_path)


def test_a_parameter_describes_itself_and_writes_the_entry_it_was_read_from():
    space = parse_search_space({"search": {"beta": {"uniform": [0.1, 0.9], "step": 0.1, "default": 0.5},
                                           "fusion": {"choice": ["concat", "sum"], "default": "sum"},
                                           "model_width": {"int": [4, 16]}}}, source="s.yaml")
    assert space.describe().splitlines() == ["  beta           uniform [0.1, 0.9] step 0.1 default 0.5",
                                             "  fusion         choice ['concat', 'sum'] default sum",
                                             "  model_width    int [4, 16]"]
    assert space.params["beta"].to_spec() == {"uniform": [0.1, 0.9], "step": 0.1, "default": 0.5}
    assert space.params["model_width"].to_spec() == {"int": [4, 16]}
    assert parse_search_space(yaml.safe_load(space.to_yaml()), source="s.yaml") == space


def test_study_defaults_are_kept_apart_from_the_parameters():
    """`score:`, `scheduler:`, `grace_period:` and `max_epochs:` are the study's: one frozen
    `StudyDefaults` (`space.defaults`), never among the params; every derived space and the
    written file keep them, and the read access from before (`space.score`, ...) still answers."""
    doc = {"score": "last-3", "scheduler": "hyperband", "grace_period": 2, "max_epochs": 6, "fixed": {"epochs": 8},
           "search": {"beta": {"uniform": [0.1, 0.9], "default": 0.5}, "lr": {"loguniform": [1e-4, 1e-2]}}}
    space = parse_search_space(doc, source="s.yaml")
    expected = StudyDefaults(score="last-3", scheduler="hyperband", grace_period=2, max_epochs=6)
    assert space.defaults == expected and list(space.params) == ["beta", "lr"]
    assert (space.score, space.scheduler, space.grace_period, space.max_epochs) == ("last-3", "hyperband", 2, 6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        space.defaults.score = "best"
    for derived in (space.for_method("bmlr"), space.with_fixed({"lr": 1e-3}), space.restricted(["lr"])):
        assert derived.defaults == expected
    assert parse_search_space(yaml.safe_load(space.to_yaml()), source="s.yaml") == space
    assert parse_search_space({"search": doc["search"]}, source="s.yaml").defaults == StudyDefaults()
    assert DEFAULT_KEYS == tuple(f.name for f in dataclasses.fields(StudyDefaults)) == tuple(doc)[:4]
    # the spelling from before `defaults` (one keyword per entry) builds the same space
    old = SearchSpace(space.params, space.fixed, "s.yaml", score="last-3", scheduler="hyperband", grace_period=2,
                      max_epochs=6)
    assert old == space
    assert SearchSpace({}, {}, defaults=expected, score="best").defaults == dataclasses.replace(expected, score="best")


def test_the_scheduler_names_live_where_schedulers_are_built():
    from bmlr.tuning.ray_backend import SCHEDULERS

    assert SCHEDULERS == ("asha", "hyperband", "none")
    for name in SCHEDULERS:
        assert parse_search_space({"scheduler": name, "search": GOOD}, source="s.yaml").defaults.scheduler == name
