"""The regret-curve benchmark (bench/bench_regret.py): the anytime regret of the incumbent on a
hand-made grid, the band and the speed-up by hand, the summary JSON's merge, and real replays of
every new searcher x scheduler through Ray Tune with the product's factories. No timing is
asserted: the machine is shared."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GRID = {"alpha": [0.5, 1.0], "fusion": ["concat", "sum"]}
# configuration -> validation accuracy per epoch, one list per training seed (tables 0, 1)
CURVES = {
    (0.5, "concat"): [[0.5, 0.6, 0.7], [0.6, 0.7, 0.7]],  # best 0.7, 0.7: q = 0.7
    (0.5, "sum"): [[0.9, 0.4, 0.4], [0.3, 0.3, 0.3]],  # 0.9, 0.3: q = 0.6
    (1.0, "concat"): [[0.6, 0.7, 0.75], [0.7, 0.8, 0.85]],  # 0.75, 0.85: q = 0.8 (q*)
    (1.0, "sum"): [[0.3, 0.3, 0.3], [0.2, 0.2, 0.2]],  # 0.3, 0.2: q = 0.25 (q-)
}
A, B = "alpha=0.5|fusion='concat'", "alpha=0.5|fusion='sum'"
C, D = "alpha=1.0|fusion='concat'", "alpha=1.0|fusion='sum'"
SPAN = 0.8 - 0.25


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def br():
    return load_bench("bench_regret")


@pytest.fixture(scope="module")
def rp(br):
    """bench/replay.py, the tables and replays bench_regret.py imports (bench/ is on the path)."""
    return importlib.import_module("replay")


@pytest.fixture(scope="module")
def bw():
    return load_bench("bench_winners")


def write_table(folder: Path, seed: int) -> Path:
    """A bench_search.py --out folder: grid.jsonl and grid_meta.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "grid_meta.json").write_text(json.dumps({"epochs": 3, "seed": seed, "grid": GRID}))
    lines = [json.dumps({"point": {"alpha": a, "fusion": f}, "val_acc": c[seed]}) for (a, f), c in CURVES.items()]
    (folder / "grid.jsonl").write_text("".join(line + "\n" for line in lines))
    return folder / "grid.jsonl"


@pytest.fixture
def grid(rp, tmp_path):
    return rp.load_grid([write_table(tmp_path / f"s{s}", s) for s in range(2)])


def record(trials, table: int = 0):
    """A replay's record: (trial id, configuration or None for a failed trial, epochs trained)."""
    out = []
    for trial_id, point, epochs in trials:
        config = {"alpha": 1.0, "fusion": "sum"} if point is None else {"alpha": point[0], "fusion": point[1]}
        accs = [] if point is None else CURVES[point][table][:epochs]
        out.append({"trial_id": trial_id, "config": config, "val_acc": accs, "error": "boom" if point is None else None})
    return {"rule": "best", "samples": len(out), "seed": table, "table": table, "trials": out}


def test_anytime_regret_follows_the_incumbent_in_creation_order(br, bw, grid):
    # in the record's (Ray's creation) order, whatever the ids; the second trial failed
    rec = record([("x_00004", (1.0, "sum"), 1), ("x_00001", None, 0), ("x_00000", (0.5, "sum"), 3),
                  ("x_00003", (1.0, "concat"), 3), ("x_00002", (0.5, "concat"), 2)])
    got = br.anytime_regret(rec, grid, "best", max_epochs=3)
    # best rule on table 0: D 0.3 (1 epoch), failed, B 0.9 (a lucky first epoch), C 0.75, A 0.6 (2 epochs)
    assert [e for e, _ in got] == [1, 1, 4, 7, 9]
    assert [r for _, r in got] == pytest.approx([1.0, 1.0, 0.2 / SPAN, 0.2 / SPAN, 0.2 / SPAN])
    last = br.anytime_regret(rec, grid, "last", max_epochs=3)  # last rule: C (0.75) overtakes B (0.4)
    assert [r for _, r in last] == pytest.approx([1.0, 1.0, 0.2 / SPAN, 0.0, 0.0])
    assert bw.outcome({**rec, "rule": "last"}, grid, 3)["winner"] == C  # the last point is the export
    only_failed = record([("x_00000", None, 0)])
    assert br.anytime_regret(only_failed, grid, "best", 3) == [(0, 1.0)]


def test_step_values_band_and_speedup_by_hand(br):
    curve = [(10, 0.5), (20, 0.2), (30, 0.1)]
    assert [br.value_at(curve, x) for x in (0, 9, 10, 19, 20, 35)] == [1.0, 1.0, 0.5, 0.5, 0.2, 0.1]
    ref = [curve, [(5, 0.8), (25, 0.0)], [(15, 0.4), (40, 0.3)]]
    axis = list(range(41))
    b = br.band(ref, axis)
    # epoch 20: values 0.2, 0.8, 0.4 -> median 0.4, quartiles 0.3, 0.6
    assert (b["median"][20], b["q25"][20], b["q75"][20]) == pytest.approx((0.4, 0.3, 0.6))
    assert b["median"][25] == pytest.approx(0.2) and b["median"][40] == pytest.approx(0.1)
    assert br.epochs_to_reach(axis, b["median"], 0.4) == 20  # medians 0.8 from 10, 0.5 from 15, 0.4 from 20
    assert br.epochs_to_reach(axis, b["median"], 0.2) == 25
    s = br.speedup(axis, b["median"], 0.2, strategy_epochs=10, reference_budget=40)
    assert s == {"speedup_vs_random": 2.5, "random_epochs_to_reach": 25, "speedup_lower_bound": None}
    never = br.speedup(axis, b["median"], 0.05, strategy_epochs=10, reference_budget=40)
    assert never == {"speedup_vs_random": None, "random_epochs_to_reach": None, "speedup_lower_bound": 4.0}


def test_measure_compares_each_strategy_with_random(br, grid):
    fast = br.Strategy("tpe", "asha")
    ref = br.Strategy("random", "none")
    # the strategy finds C after 4 epochs (D stopped after 1); random finds B at 3, C only at 9
    strat = [record([("x_00000", (1.0, "sum"), 1), ("x_00001", (1.0, "concat"), 3)])] * 2
    rand = [record([("x_00000", (0.5, "sum"), 3), ("x_00001", (1.0, "sum"), 3), ("x_00002", (1.0, "concat"), 3)])]
    got = br.measure(grid, [fast, ref], {fast: strat, ref: rand}, rand, "last", 3)
    s, r = got["strategies"]["tpe+asha"], got["strategies"]["random+none"]
    assert s["median_final_regret"] == 0.0 and s["median_total_epochs"] == 4 and s["mean_total_epochs"] == 4
    assert s["random_epochs_to_reach"] == 9 and s["speedup_vs_random"] == pytest.approx(9 / 4)
    assert r["speedup_vs_random"] == pytest.approx(1.0)  # the reference against itself
    assert got["axis"] == list(range(10)) and got["reference"]["budget"] == 9
    assert br.markdown(got).splitlines()[2].startswith("| tpe+asha | 0.000 [0.000, 0.000] | 2.25 | 4 | 4 |")


def test_where_a_search_settles_by_trials(br):
    """bench_keys: the median regret after n trials over searcher seeds (a study with fewer trials
    holds its last value), and the first n from which it stays within the slack of its last."""
    bk = load_bench("bench_keys")
    curves = [[(10, 1.0), (20, 0.5), (30, 0.2), (40, 0.1)], [(10, 0.8), (20, 0.8), (30, 0.1)],
              [(10, 0.6), (20, 0.3), (30, 0.3), (40, 0.0)]]
    median = bk.regret_after_trials(curves, 4)
    assert median == [0.8, 0.5, 0.2, 0.1]
    assert bk.settles_at(median, slack=0.1) == 3 and bk.settles_at(median, slack=0.0) == 4
    assert bk.settles_at([0.3, 0.3, 0.3], slack=0.0) == 1
    assert bk.settles_at([0.0, 0.5, 0.1], slack=0.05) == 3  # a later rise counts: it must stay


def test_strategy_names(br):
    assert br.parse_strategy("tpe+asha/g1", default_grace=1) == br.Strategy("tpe", "asha")
    assert br.parse_strategy("random+hyperband/g3", 1).label == "random+hyperband/g3"
    assert br.Strategy("tpe", "asha", 3).replay("best", 48, 2).name == "best-n48-s2-g3"
    assert br.Strategy("tpe", "asha").replay("best", 48, 2).name == "best-n48-s2"  # bench_winners' cache name
    for bad in ("tpe+fifo", "grid+asha", "random+none/g3"):
        with pytest.raises(SystemExit):
            br.parse_strategy(bad, 1)
    chosen = br.strategies(["tpe+asha", "random+asha"], [1, 3], default_grace=1)
    assert [s.label for s in chosen] == ["tpe+asha", "random+asha", "tpe+asha/g3", "random+none"]


def test_summary_json_is_merged_per_data_set(br, tmp_path):
    path = tmp_path / "img" / "search_regret_summary.json"
    br.merge_summary(path, "avmnist", {"strategies": {"tpe+asha": {"median_final_regret": 0.1}}})
    br.merge_summary(path, "synthetic", {"strategies": {"tpe+asha": {"median_final_regret": 0.2}}})
    br.merge_summary(path, "synthetic", {"strategies": {"tpe+none": {"median_final_regret": 0.3}}})
    data = json.loads(path.read_text())
    assert data == {"avmnist": {"strategies": {"tpe+asha": {"median_final_regret": 0.1}}},
                    "synthetic": {"strategies": {"tpe+none": {"median_final_regret": 0.3}}}}
    path.write_text("[]")
    with pytest.raises(SystemExit, match="not a JSON object"):
        br.merge_summary(path, "synthetic", {})


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from bmlr.tuning.ray_backend import init_ray

    init_ray(None, 2, 0)
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("sampler, scheduler", [("tpe", "hyperband"), ("tpe", "none"), ("random", "asha"),
                                                ("random", "hyperband"), ("random", "none")])
def test_real_replay_of_each_new_strategy(br, bw, rp, grid, tmp_path, ray_local, sampler, scheduler):
    """The replay runs through Ray with the product's sampler and scheduler: without a
    scheduler every trial trains every epoch; the random sampler draws exactly what the
    product's make_sampler("random", seed) draws; every trial replays its table's curve."""
    import optuna

    from bmlr.tuning.ray_backend import make_sampler

    settings = rp.ReplaySettings(max_epochs=3, concurrent=2, sleep_s=0.0)
    replay = br.Strategy(sampler, scheduler).replay("best", 5, seed=1)
    rec = rp.run_replay(grid, replay, settings, tmp_path)
    assert (rec["sampler"], rec["scheduler"], rec["table"], len(rec["trials"])) == (sampler, scheduler, 1, 5)
    trials = rec["trials"]  # in Ray's creation order
    for t in trials:
        key = rp.point_key(t["config"], grid.keys)
        assert t["error"] is None and 1 <= len(t["val_acc"]) <= 3
        assert t["val_acc"] == grid.curves[1][key][:len(t["val_acc"])]
        if scheduler == "none":
            assert len(t["val_acc"]) == 3
    if sampler == "random":  # random draws do not depend on results: the product's sampler's sequence, in order
        study = optuna.create_study(sampler=make_sampler("random", 1))
        space = grid.space().optuna_space()
        drawn = [study.ask(fixed_distributions=space).params for _ in trials]
        assert [t["config"] for t in trials] == drawn
    curve = br.anytime_regret(rec, grid, "best", 3)
    assert curve[-1][0] == sum(len(t["val_acc"]) for t in trials)
    assert curve[-1][1] == pytest.approx(br.normalised_regret(grid, bw.outcome(rec, grid, 3)["winner"]))
