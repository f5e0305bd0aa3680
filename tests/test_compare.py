"""Comparisons and recipes (bmlr.tuning.compare, bmlr.tuning.recipes) and the method-specific
search-space sections (bmlr.tuning.search_space).

Fast tests build spaces, rows and tables in memory. The `slow` ones run `tune.py compare`
(tuned: Ray, one study per method) and `tune.py recipe` (untuned) end to end on a tiny
generated synthetic data set with a tiny model, one production seed and one epoch.
"""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from bmlr.config import from_dict
from bmlr.tuning import cli
from bmlr.tuning.compare import (ComparisonError, accuracy_table, arm_space, check_overrides, fusion_table,
                                 modality_table, overrides_for, run_key, untuned_config)
from bmlr.tuning.recipes import RECIPES, TABLE1_METHODS, Arm, get_recipe
from bmlr.methods import METHOD_READS
from bmlr.tuning.search_space import SearchSpaceError, load_search_space, parse_search_space

ROOT = Path(__file__).resolve().parents[1]
os.environ.pop("MLFLOW_TRACKING_URI", None)  # these tests use the default store in --storage
TINY_FIXED = {"model_width": 4, "model_depth": 1, "image_size": 32, "frames": 2, "batch_size": 16,
              "val_fraction": 0.3, "epochs": 2, "seeds": [0, 1]}
SPACE = {"search": {"beta": {"uniform": [0.1, 0.9], "default": 0.5},
                    "alpha": {"loguniform": [0.5, 2.0], "default": 1.0},
                    "lr": {"loguniform": [1.0e-3, 1.0e-2], "default": 5.0e-3},
                    "fusion": {"choice": ["concat", "sum"], "default": "concat"}},
         "fixed": TINY_FIXED,
         "methods": {"ogm_ge": {"search": {"method_args.alpha_ogm": {"loguniform": [0.05, 1.0], "default": 0.1}},
                                "fixed": {"method_args.modulation_ends": 5}},
                     "udi": {"search": {"method_args.anchor_epochs": {"int": [1, 3], "default": 2}}}}}


def _synthetic_space():
    return load_search_space(ROOT / "search_spaces" / "synthetic.yaml")


# ---------------------------------------------------------------------------------------------
# method-specific search-space sections
def test_every_registered_method_says_which_bmlr_keys_it_reads():
    from bmlr.methods import METHODS

    assert set(METHOD_READS) == set(METHODS.names())


def test_a_method_searches_only_what_it_reads():
    space = _synthetic_space()
    assert {"alpha", "beta"} <= set(space.for_method("bmlr").params)
    baseline = space.for_method("baseline")
    assert "alpha" not in baseline.params and "beta" not in baseline.params
    assert set(baseline.dropped) == {"alpha", "beta"} and baseline.fixed["method"] == "baseline"
    assert "beta" in space.for_method("uni_reshaping").params
    assert "alpha" not in space.for_method("uni_reshaping").params
    ogm = space.for_method("ogm_ge")
    assert "method_args.alpha_ogm" in ogm.params and "beta" not in ogm.params
    assert ogm.params["method_args.alpha_ogm"].describe().startswith("loguniform [0.05, 1.0]")
    assert space.for_method("dgl").fixed["method_args.alpha_dgl"] == 4.0  # fixed, not searched (Adam)
    udi = space.for_method("udi")
    assert udi.params["method_args.anchor_epochs"].kind == "int"
    # the flat space is a search-space file a plain study reads, with the same distributions
    again = parse_search_space(yaml.safe_load(ogm.text), source="flat.yaml")
    assert again.optuna_space() == ogm.optuna_space() and again.fixed == ogm.fixed


@pytest.mark.parametrize("dataset", ("synthetic", "cremad", "ks", "ave", "avmnist", "mosi", "mosei"))
def test_shipped_spaces_have_defaults_and_method_sections(dataset):
    space = load_search_space(ROOT / "search_spaces" / f"{dataset}.yaml")
    assert {"ogm_ge", "dgl", "aug", "udi"} <= set(space.methods)
    for method in TABLE1_METHODS:
        cfg = from_dict({**space.for_method(method).untuned(), "dataset": dataset})
        assert cfg.method == method and cfg.fusion == "concat" and cfg.lr == space.params["lr"].default
    assert from_dict(space.for_method("udi").untuned()).method_args["anchor_epochs"] < space.fixed["epochs"]


def test_method_args_keys_fold_into_the_config():
    cfg = from_dict({"method": "ogm_ge", "method_args": {"ge": False, "alpha_ogm": 0.5},
                     "method_args.alpha_ogm": 0.3})
    assert cfg.method_args == {"ge": False, "alpha_ogm": 0.3}


@pytest.mark.parametrize("methods, key, words", [
    ({"nosuch": {}}, "methods.nosuch", "unknown method"),
    ({"ogm_ge": {"search": {"method_args.nope": {"uniform": [0, 1]}}}}, "methods.ogm_ge.search.method_args.nope",
     "no such argument"),
    ({"baseline": {"search": {"beta": {"uniform": [0.1, 0.9]}}}}, "methods.baseline.search.beta", "does not read"),
    ({"uni_distill": {"fixed": {"alpha": 2.0}}}, "methods.uni_distill.fixed.alpha", "does not read"),
    ({"ogm_ge": {"search": {"method_args.alpha_ogm": {"uniform": [-1.0, 1.0]}}}},
     "methods.ogm_ge.search.method_args.alpha_ogm", "alpha_ogm must be >= 0"),
    ({"ogm_ge": {"search": {"method_args.coeff_form": {"choice": ["paper", "nope"]}}}},
     "methods.ogm_ge.search.method_args.coeff_form", "nope"),
    ({"ogm_ge": {"fixed": {"method_args.modulation_ends": -1}}}, "methods.ogm_ge.fixed", "modulation_ends"),
    ({"udi": {"search": {"method_args.anchor_epochs": {"uniform": [1, 3]}}}},
     "methods.udi.search.method_args.anchor_epochs", "integer key"),
    ({"ogm_ge": {"search": {"method_args.alpha_ogm": {"loguniform": [0.05, 1.0], "default": 2.0}}}},
     "methods.ogm_ge.search.method_args.alpha_ogm", "outside"),
    ({"ogm_ge": {"bogus": {}}}, "methods.ogm_ge", "unknown key"),
    ({"ogm_ge": {"search": {"method": {"choice": ["bmlr"]}}}}, "methods.ogm_ge.search.method", "cannot"),
])
def test_malformed_method_sections_name_file_and_key(tmp_path, methods, key, words):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"search": SPACE["search"], "fixed": TINY_FIXED, "methods": methods}))
    with pytest.raises(SearchSpaceError) as err:
        load_search_space(path)
    message = str(err.value)
    assert message.startswith(str(path)) and key in message and words in message, message


def test_method_args_at_the_top_level_need_a_fixed_method():
    with pytest.raises(SearchSpaceError, match="search.method_args.alpha_ogm: method-specific keys belong under"):
        parse_search_space({"search": {"method_args.alpha_ogm": {"uniform": [0.1, 0.5]}}}, source="s.yaml")
    space = parse_search_space({"search": {"method_args.alpha_ogm": {"uniform": [0.1, 0.5]}},
                                "fixed": {"method": "ogm_ge"}}, source="s.yaml")
    assert list(space.params) == ["method_args.alpha_ogm"]
    with pytest.raises(SearchSpaceError, match="belong to method 'ogm_ge'"):
        space.for_method("bmlr")
    with pytest.raises(SearchSpaceError, match="default 'x' is not one of the choices"):
        parse_search_space({"search": {"fusion": {"choice": ["sum"], "default": "x"}}}, source="s.yaml")


# ---------------------------------------------------------------------------------------------
# recipes: rows and their configurations
def test_recipe_rows():
    t1 = get_recipe("table1")
    assert [a.method for a in t1.arms] == list(TABLE1_METHODS)
    assert {"baseline", "uniform_baseline", "bmlr", "ogm_ge", "dgl", "aug", "udi"} == {a.label for a in t1.arms}
    t2 = get_recipe("Table-II")
    assert len(t2.arms) == 8 and t2.layout == "fusions"
    assert {(a.method, a.fixed_dict["fusion"]) for a in t2.arms} == {
        (m, f) for m in ("uniform_baseline", "bmlr") for f in ("concat", "sum", "film", "gated")}
    t5 = get_recipe("tablev")
    assert [a.method for a in t5.arms] == ["baseline", "uniform_baseline", "only_reshape", "only_tpo",
                                           "uni_distill", "vanilla_reshape", "bmlr"]
    assert get_recipe("table6").name == "table6" and [a.method for a in get_recipe("table4").arms][-2:] == [
        "uni_reshaping", "bmlr"]
    for recipe in RECIPES.values():
        assert recipe.reference in {a.label for a in recipe.arms}
    with pytest.raises(KeyError, match="unknown recipe"):
        get_recipe("table9")


def test_untuned_row_configurations():
    space = _synthetic_space()
    sum_bmlr = next(a for a in get_recipe("table2").arms if a.label == "sum+bmlr")
    cfg = untuned_config(space, sum_bmlr, "synthetic", None, {"threads": 1})
    assert (cfg.method, cfg.fusion, cfg.lr, cfg.beta, cfg.alpha, cfg.threads) == ("bmlr", "sum", 1e-3, 0.5, 1.0, 1)
    overrides = {"method_args.anchor_epochs": 4, "epochs": 6}
    udi = untuned_config(space, Arm("udi", "udi"), "synthetic", None, overrides)
    assert udi.method_args["anchor_epochs"] == 4 and udi.epochs == 6
    base = untuned_config(space, Arm("baseline", "baseline"), "synthetic", None, overrides)
    assert base.method_args == {} and base.epochs == 6  # method_args.* reach only the methods that take them
    assert overrides_for("baseline", overrides) == {"epochs": 6}
    rows = [Arm("baseline", "baseline"), Arm("bmlr", "bmlr")]
    assert check_overrides(rows, {"method_args.anchor_epochs": 4, "lr": 1.0}) == ["method_args.anchor_epochs"]
    with pytest.raises(ComparisonError, match="no method accepts 'anchor_epoch'"):
        check_overrides(rows, {"method_args.anchor_epoch": 4})  # a typo
    with pytest.raises(ComparisonError, match="udi"):
        untuned_config(space, Arm("udi", "udi"), "synthetic", None, {"method_args.consistency": "nope"})
    assert run_key(cfg) == run_key(cfg.replace(threads=2, name="x", output_dir="/elsewhere"))
    assert run_key(cfg) != run_key(cfg.replace(lr=2e-3))


def test_run_identity_counts_the_methods_default_arguments():
    """A uni_distill run trained before its defaults changed (results.json without the
    effective method_args, method_args {} as given) is not the run of today's defaults; a run
    that recorded its arguments is, and so is an old run of a method without arguments."""
    from bmlr.config import from_dict

    cfg = from_dict({"method": "uni_distill"})
    old = cfg.to_dict()
    assert run_key(old, None) != run_key(cfg)
    assert run_key(old, {"label_weight": 0.5, "joint": False, "pairing": "per_sample"}) == run_key(cfg)
    assert run_key(old, {"label_weight": 0.0, "joint": False}) != run_key(cfg)
    baseline = from_dict({"method": "baseline"})
    assert run_key(baseline.to_dict(), None) == run_key(baseline)


def test_tuned_row_spaces_fix_the_row_and_set_keys():
    space = _synthetic_space()
    row = next(a for a in get_recipe("table2").arms if a.label == "film")
    flat = arm_space(space, row, {"threads": 1})
    assert "fusion" not in flat.params and flat.fixed["fusion"] == "film" and flat.fixed["threads"] == 1
    assert set(flat.params) == {"lr"}  # uniform_baseline reads neither alpha nor beta
    flat = arm_space(space, Arm("udi", "udi"), {"lr": 1e-3, "method_args.anchor_epochs": 3})
    assert set(flat.params) == {"fusion", "method_args.consistency_weight"}
    with pytest.raises(ComparisonError, match="leaves nothing to search"):
        arm_space(space, Arm("baseline", "baseline"), {"lr": 1e-3, "fusion": "sum"})
    only_bmlr_keys = parse_search_space({"search": {"beta": {"uniform": [0.1, 0.9]}}}, source="s.yaml")
    assert only_bmlr_keys.for_method("baseline").untuned()["method"] == "baseline"  # untuned rows still work
    with pytest.raises(ComparisonError, match="'baseline' has nothing to search"):
        arm_space(only_bmlr_keys, Arm("baseline", "baseline"), {})


# ---------------------------------------------------------------------------------------------
# tables from results.json contents
def _results(acc, audio, visual, ratio, seeds=3, std=0.01):
    stat = lambda m: {"mean": m, "std": std}  # noqa: E731
    return {"summary": {"test_acc": stat(acc), "test_macro_f1": stat(acc), "test_acc_audio": stat(audio),
                        "test_acc_visual": stat(visual), "test_imbalance_ratio": stat(ratio)},
            "seeds": [{"seed": s, "test": {"acc": acc + std * (s - 1)}} for s in range(seeds)]}


def test_tables():
    rows = [{"label": "baseline", "method": "baseline", "results": _results(0.80, 0.40, 0.78, 0.51),
             "trials": 4, "epochs_searched": 9, "best_val_acc": 0.83},
            {"label": "bmlr", "method": "bmlr", "results": _results(0.8512, 0.62, 0.80, 0.78),
             "trials": 4, "epochs_searched": 11, "best_val_acc": 0.86},
            {"label": "udi", "method": "udi", "results": None, "trials": 4}]
    table = accuracy_table(rows, "baseline", tuned=True).splitlines()
    assert table[0].startswith("| method | test acc % (mean ± std) | vs baseline (points ± 2 SE) | vs best (points")
    # each against the reference and the best row, paired by training seed: +5.12 on every seed
    assert table[2] == "| baseline | 80.00 ± 1.00 |  | -5.12 ± 0.00 behind | 3 | 4 | 9 | 83.00 |"
    assert table[3] == "| bmlr | **85.12 ± 1.00** | +5.12 ± 0.00 ahead |  | 3 | 4 | 11 | 86.00 |"
    assert table[4].startswith("| udi | failed | - | - |")
    table = modality_table(rows, "baseline").splitlines()
    assert table[0] == "| method | multimodal % | audio % | visual % | A/V ratio | ratio baseline → method |"
    assert table[3] == "| bmlr | 85.12 ± 1.00 | 62.00 ± 1.00 | 80.00 ± 1.00 | 0.78 ± 0.01 | 0.51 → 0.78 |"
    rows[0]["results"]["summary"]["test_imbalance_ratio"] = {"mean": float("inf"), "std": float("nan")}
    assert "| inf |" in modality_table(rows, "baseline")
    fusions = [{"label": "concat", "method": "uniform_baseline", "results": _results(0.7, 0.5, 0.4, 1.2)},
               {"label": "concat+bmlr", "method": "bmlr", "results": _results(0.75, 0.5, 0.5, 1.0)},
               {"label": "sum", "method": "uniform_baseline", "results": _results(0.7, 0.5, 0.4, 1.2)},
               {"label": "sum+bmlr", "method": "bmlr", "results": _results(0.69, 0.5, 0.5, 1.0)}]
    table = fusion_table(fusions).splitlines()
    assert table[0] == "| fusion | without BMLR (uniform_baseline) % | with BMLR % | gain (points) |"
    assert table[2] == "| concat | 70.00 ± 1.00 | 75.00 ± 1.00 | **+5.00** |"
    assert table[3] == "| sum | 70.00 ± 1.00 | 69.00 ± 1.00 | -1.00 |"


# ---------------------------------------------------------------------------------------------
# command line: errors before anything runs
def test_recipe_list_and_start_up_errors(tmp_path, capsys):
    assert cli.main(["recipe", "--list"]) == 0
    assert "table2" in capsys.readouterr().out
    storage = ["--storage", str(tmp_path / "runs")]
    assert cli.main(["compare", "--methods", "baseline", "nosuch", "--no-tune", *storage]) == 2
    assert "unknown method 'nosuch'" in capsys.readouterr().err
    assert cli.main(["compare", "--methods", "baseline", "bmlr", "--no-tune", "--set", "method_args.alpha_og=1",
                     *storage]) == 2
    assert "no method accepts 'alpha_og'" in capsys.readouterr().err
    assert cli.main(["compare", "--methods", "baseline", "--no-tune", "--data-root", str(tmp_path / "nope"),
                     *storage]) == 2
    assert "data root not found" in capsys.readouterr().err
    assert cli.main(["recipe", "table9", *storage]) == 2
    assert "unknown recipe" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "synthetic").exists()


# ---------------------------------------------------------------------------------------------
# end to end on tiny synthetic data
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from bmlr.data.synthetic import generate

    base = tmp_path_factory.mktemp("compare")
    data = generate(base / "data", seed=0, n_train_per_class=12,
        n_test_per_class=2, n_val_per_class=2, image_size=32, n_frames=2)
    space = base / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    return {"base": base, "data": data, "cache": base / "cache", "space": space}


def _argv(tiny, storage: Path, *extra: str) -> list[str]:
    return ["--data-root", str(tiny["data"]), "--search-space", str(tiny["space"]), "--storage", str(storage),
            "--set", f"cache_dir={tiny['cache']}", "--set", "threads=1", "--seeds", "0", "-v", "0", *extra]


def _table_rows(markdown: str, header_start: str) -> dict[str, list[str]]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


def _pct(stats: dict) -> str:
    return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"


@pytest.mark.slow
def test_compare_tunes_each_method_with_the_same_budget(tiny, capsys):
    from mlflow import MlflowClient

    storage = tiny["base"] / "tuned"
    rc = cli.main(["compare", "--methods", "baseline", "ogm_ge", "--samples", "2", "--max-epochs", "1",
                   "--epochs", "1", "--num-cpus", "2", "--concurrent", "1", "--name", "cmp", *_argv(tiny, storage)])
    assert rc == 0
    out = capsys.readouterr().out
    folder = storage / "synthetic" / "cmp"
    info = json.loads((folder / "comparison.json").read_text())
    markdown = (folder / "comparison.md").read_text()
    table = _table_rows(markdown, "| method | test acc %")
    modality = _table_rows(markdown, "| method | multimodal %")
    assert list(table) == ["baseline", "ogm_ge"] == list(modality)
    # the verdict (bmlr.tuning.compare.verdict): the row against the reference, paired by seed
    assert re.search(r"^- ogm_ge - baseline: [+-]\d+\.\d\d.* \(paired, over \d training seeds only\): "
                     r"(ahead|behind|within the noise|noise unknown)$", markdown, re.M), markdown
    searched = {}
    for row in info["rows"]:
        study = Path(row["study_dir"])
        with (study / "trials.csv").open() as f:
            trials = list(csv.DictReader(f))
        assert len(trials) == 2 == row["trials"]  # the same number of trials for every method
        # the row's untuned configuration (its search space's defaults) is one of its trials (the
        # first the searcher suggests: tests/test_strategies.py), and the summary says where it ranked
        defaults = load_search_space(folder / "spaces" / f"{row['label']}.yaml").defaults_point()
        untuned = [t for t in trials if all(t[f"param.{k}"] == v if isinstance(v, str) else
                                            float(t[f"param.{k}"]) == pytest.approx(v) for k, v in defaults.items())]
        assert defaults and len(untuned) == 1
        assert f"): trial {untuned[0]['trial_id']}, ranked " in out
        assert all(int(t["epochs"]) <= 1 for t in trials)
        searched[row["label"]] = {k.removeprefix("param.") for k in trials[0] if k.startswith("param.")}
        results = json.loads((Path(row["run_dir"]) / "results.json").read_text())
        assert [s["seed"] for s in results["seeds"]] == [0]
        s = results["summary"]
        cells = table[row["label"]]
        assert cells[1].strip("*") == _pct(s["test_acc"]) and cells[4] == "1"
        assert modality[row["label"]][2:4] == [_pct(s["test_acc_audio"]), _pct(s["test_acc_visual"])]
        best = yaml.safe_load((study / "best.yaml").read_text())
        assert best["method"] == row["label"]
    # no budget on alpha / beta (bmlr's: test above), nor on the fusion (concat, the paper's Table I)
    assert searched["baseline"] == {"lr"}
    assert searched["ogm_ge"] == {"lr", "method_args.alpha_ogm"}
    ogm = yaml.safe_load((Path(info["rows"][1]["study_dir"]) / "best.yaml").read_text())
    # the window end of the search space's ogm_ge section wins over the authors' (protocol) start
    assert set(ogm["method_args"]) == {"alpha_ogm", "modulation_ends", "modulation_starts"}
    assert (ogm["optimizer"], ogm["fusion"], ogm["method_args"]["modulation_ends"]) == ("sgd", "concat", 5)

    client = MlflowClient(tracking_uri=info["tracking_uri"])
    parent = client.get_run(info["parent_run_id"])
    assert parent.data.tags["bmlr.role"] == "comparison" and parent.info.status == "FINISHED"
    assert parent.data.tags["equal_trials"] == "true"
    # the verdicts on the run: the grouped ranking, each row against the reference, each search's evidence
    assert parent.data.tags["ranking"].startswith(("baseline (", "ogm_ge ("))
    assert parent.data.tags["verdict.ogm_ge"].startswith("vs baseline: ")
    for row in info["rows"]:
        assert set(row["searched"]) == searched[row["label"]] and set(row["winner"]) == searched[row["label"]]
        assert all(len(v) == 2 for v in row["drawn"].values())  # both trials' values
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"comparison.md", "comparison.json"}
    for row in info["rows"]:
        results = json.loads((Path(row["run_dir"]) / "results.json").read_text())
        assert parent.data.metrics[f"{row['label']}.acc"] == pytest.approx(results["summary"]["test_acc"]["mean"])
        study = client.get_run(row["study_run_id"])
        assert study.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert study.data.tags["comparison"] == "cmp" and study.data.tags["arm"] == row["label"]
        assert study.data.metrics["production.test_acc"] == pytest.approx(results["summary"]["test_acc"]["mean"])


@pytest.mark.slow
def test_untuned_recipes_train_every_row_and_reuse_identical_runs(tiny):
    storage = tiny["base"] / "untuned"
    argv = _argv(tiny, storage, "--no-tune", "--epochs", "1", "--jobs", "2")
    assert cli.main(["recipe", "table3", *argv, "--name", "t3"]) == 0
    folder = storage / "synthetic" / "t3"
    table = _table_rows((folder / "comparison.md").read_text(), "| method | test acc %")
    assert list(table) == ["baseline", "uniform_baseline", "bmlr"]
    for label, cells in table.items():
        results = json.loads((folder / "runs" / label / "results.json").read_text())
        assert cells[1].strip("*") == _pct(results["summary"]["test_acc"])
        cfg = results["config"]
        assert (cfg["method"], cfg["lr"], cfg["fusion"], cfg["epochs"], cfg["seeds"]) == (label, 5e-3, "concat", 1,
                                                                                        [0])
    # a resumed comparison keeps its finished runs
    mtime = (folder / "runs" / "bmlr" / "results.json").stat().st_mtime
    assert cli.main(["recipe", "table3", *argv, "--name", "t3", "--resume", "--dataset", "synthetic"]) == 0
    assert (folder / "runs" / "bmlr" / "results.json").stat().st_mtime == mtime
    # Table IV shares baseline, uniform_baseline and bmlr with Table III: only uni_reshaping trains
    assert cli.main(["recipe", "table4", *argv, "--name", "t4", "--reuse"]) == 0
    t4 = json.loads((storage / "synthetic" / "t4" / "comparison.json").read_text())
    reused = {r["label"]: r.get("reused", False) for r in t4["rows"]}
    assert reused == {"baseline": True, "uniform_baseline": True, "uni_reshaping": False, "bmlr": True}
    assert list((storage / "synthetic" / "t4" / "runs").iterdir()) == [storage / "synthetic" / "t4" / "runs" /
                                                                      "uni_reshaping"]
