"""The winner-regret benchmark (bench/bench_winners.py) on hand-made grid tables: the ground
truth, the product's rules on a replay's rows, the confirmation, the summary, and one real
replay through Ray Tune. No timing is asserted: the machine is shared."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GRID = {"alpha": [0.5, 1.0], "fusion": ["concat", "sum"]}
# configuration -> validation accuracy per epoch, one list per training seed (tables 0, 1, 2)
CURVES = {
    (0.5, "concat"): [[0.5, 0.6, 0.7], [0.6, 0.6, 0.6], [0.8, 0.5, 0.5]],  # best 0.7 0.6 0.8: q = 0.7
    (0.5, "sum"): [[0.9, 0.4, 0.4], [0.5, 0.5, 0.5], [0.4, 0.4, 0.4]],  # 0.9 0.5 0.4: q = 0.6
    (1.0, "concat"): [[0.6, 0.7, 0.75], [0.7, 0.8, 0.8], [0.7, 0.75, 0.8]],  # 0.75 0.8 0.8: q = 0.78333 (q*)
    (1.0, "sum"): [[0.3, 0.3, 0.3], [0.3, 0.3, 0.3], [0.3, 0.3, 0.3]],  # q = 0.3
}
A, B = "alpha=0.5|fusion='concat'", "alpha=0.5|fusion='sum'"
C, D = "alpha=1.0|fusion='concat'", "alpha=1.0|fusion='sum'"


@pytest.fixture(scope="module")
def bw():
    spec = importlib.util.spec_from_file_location("bench_bench_winners", ROOT / "bench" / "bench_winners.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rp(bw):
    """bench/replay.py, the tables and replays bench_winners.py imports (bench/ is on the path)."""
    return importlib.import_module("replay")


def write_table(folder: Path, seed: int, keep=None, grid=GRID, epochs: int = 3) -> Path:
    """A bench_search.py --out folder: grid.jsonl (the configurations in `keep`, all by default)
    and grid_meta.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "grid_meta.json").write_text(json.dumps({"epochs": epochs, "seed": seed, "grid": grid}))
    lines = []
    for (alpha, fusion), per_seed in CURVES.items():
        if keep is None or (alpha, fusion) in keep:
            point = {"alpha": alpha, "fusion": fusion}
            lines.append(json.dumps({"key": "ignored", "point": point, "val_acc": per_seed[seed]}))
    (folder / "grid.jsonl").write_text("".join(line + "\n" for line in lines))
    return folder / "grid.jsonl"


@pytest.fixture
def grid(rp, tmp_path):
    return rp.load_grid([write_table(tmp_path / f"s{s}", s) for s in range(3)])


def record(trials, table: int = 0, rule: str = "best"):
    """A replay's record: (trial id, configuration, epochs trained) replayed from `table`."""
    out = []
    for trial_id, (alpha, fusion), epochs in trials:
        out.append({"trial_id": trial_id, "config": {"alpha": alpha, "fusion": fusion},
                    "val_acc": CURVES[(alpha, fusion)][table][:epochs], "error": None})
    return {"rule": rule, "samples": len(out), "seed": table, "table": table, "trials": out}


# B twice (the same configuration sampled again), D stopped by ASHA after one epoch
TRIALS = [("t_00000", (0.5, "sum"), 3), ("t_00001", (0.5, "sum"), 3), ("t_00002", (0.5, "concat"), 3),
          ("t_00003", (1.0, "concat"), 3), ("t_00004", (1.0, "sum"), 1)]


def test_true_quality_and_regret_by_hand(grid):
    assert grid.seeds == [0, 1, 2] and len(grid.points) == 4 and grid.holes == [] and grid.epochs == 3
    assert grid.quality(A) == pytest.approx(0.7)
    assert grid.quality(B) == pytest.approx(0.6)
    assert grid.quality(C, tables=[1, 2]) == pytest.approx(0.8)
    assert grid.best == (C, pytest.approx(0.783333, abs=1e-6))
    assert grid.regret(C) == 0
    assert grid.regret(A) == pytest.approx(8.3333, abs=1e-4)  # points
    assert grid.regret(D) == pytest.approx(48.3333, abs=1e-4)


@pytest.mark.parametrize("rule, winner, score", [
    ("best", B, 0.9),  # one lucky first epoch
    ("last", C, 0.75),
    ("last-3", C, (0.6 + 0.7 + 0.75) / 3),
    ("smooth-2", C, (0.7 + 0.75) / 2),
])
def test_exported_winner_by_each_rule(bw, rp, grid, rule, winner, score):
    rows = rp.trial_rows(record(TRIALS), rule, max_epochs=3)
    assert [r["status"] for r in rows] == ["completed"] * 4 + ["stopped_early"]
    got = bw.outcome(record(TRIALS, rule=rule), grid, max_epochs=3)
    assert got["winner"] == winner
    assert got["regret"] == pytest.approx(grid.regret(winner))
    assert got["epochs"] == got["search_epochs"] == 3 * 4 + 1
    best_row = max(rows, key=lambda r: r["score"])
    assert best_row["score"] == pytest.approx(score)


def test_best_rule_ties_go_to_the_earlier_epoch_then_trial(rp):
    rows = rp.trial_rows(record(TRIALS), "best", max_epochs=3)
    b_rows = [r for r in rows if r["param.fusion"] == "sum" and r["param.alpha"] == 0.5]
    assert [r["best_epoch"] for r in b_rows] == [1, 1]
    from bmlr.tuning.selection import choose_best

    assert choose_best(rows)["trial_id"] == "t_00000"


def test_confirmation_winner_and_cost(bw, rp, grid):
    rows = rp.trial_rows(record(TRIALS), "best", max_epochs=3)
    winner, candidates, cost = bw.confirm(rows, grid, study_table=0, k=3, seeds=2)
    # the top 3 distinct configurations by the search (B's second trial is not a new one)
    assert [rp.row_key(c.row, grid) for c in candidates] == [B, C, A]
    means = {rp.row_key(c.row, grid): c.mean for c in candidates}
    assert means == {B: pytest.approx(0.45), A: pytest.approx(0.7), C: pytest.approx(0.8)}
    assert rp.row_key(winner, grid) == C
    assert cost == 3 * 2 * 3
    got = bw.outcome(record(TRIALS), grid, max_epochs=3, k=3, seeds=2)
    assert got == {"winner": C, "regret": 0.0, "epochs": 13 + 18, "search_epochs": 13, "confirmation_epochs": 18}


def test_confirmation_uses_only_the_tables_after_the_studys(bw, rp, grid):
    assert bw.confirmation_tables(grid, 0, 2) == [1, 2]
    assert bw.confirmation_tables(grid, 2, 1) == [0]
    with pytest.raises(ValueError):
        bw.confirmation_tables(grid, 0, 3)  # the study's own table is never a new seed
    # study on table 2, confirmed on table 0 only: A (0.7 there) ranked first by the search, C (0.75) wins
    trials = [("t_00000", (0.5, "concat"), 3), ("t_00001", (0.5, "sum"), 3), ("t_00002", (1.0, "concat"), 3)]
    rows = rp.trial_rows(record(trials, table=2), "best", max_epochs=3)
    winner, candidates, cost = bw.confirm(rows, grid, study_table=2, k=2, seeds=1)
    # 0.8 and 0.8 on table 2: A reached it at an earlier epoch
    assert [rp.row_key(c.row, grid) for c in candidates] == [A, C]
    assert rp.row_key(winner, grid) == C and cost == 2 * 1 * 3


def test_summary_quantiles_and_matched_budget(bw):
    outs = [{"winner": "x", "regret": r, "epochs": e, "search_epochs": e} for r, e in
            [(0.0, 30), (10.0, 34), (20.0, 30), (30.0, 34)]]
    s = bw.summarise(outs)
    assert (s["q25"], s["median"], s["q75"]) == (7.5, 15.0, 22.5)
    assert s["mean_epochs"] == 32 and s["runs"] == 4 and s["no_winner"] == 0
    # 8 epochs per trial at 4 trials: 18 more epochs buy round(2.25) = 2 more trials
    assert bw.matched_samples(4, outs, 18) == 6


def test_tables_must_be_one_grid(rp, tmp_path):
    t0 = write_table(tmp_path / "a", 0)
    t1 = write_table(tmp_path / "b", 1, grid={"alpha": [0.5, 1.0], "fusion": ["concat", "sum", "gated"]})
    with pytest.raises(SystemExit, match="grid differ"):
        rp.load_grid([t0, t1])
    with pytest.raises(SystemExit, match="seeds repeat"):
        rp.load_grid([t0, write_table(tmp_path / "c", 0)])


def test_a_partial_table_is_intersected_and_a_half_written_line_skipped(rp, tmp_path):
    t0 = write_table(tmp_path / "a", 0)
    t1 = write_table(tmp_path / "b", 1, keep={(0.5, "concat"), (0.5, "sum"), (1.0, "concat")})
    with t1.open("a") as f:
        f.write('{"key": "x", "point": {"alpha": 1.0, "fus')  # the writer is mid-line
    grid = rp.load_grid([t0, t1])
    assert list(grid.points) == [A, B, C]
    assert grid.holes == [D]  # in the searched values' product, not in every table
    assert all(list(c) == [A, B, C] for c in grid.curves)  # not replayed from the table that has it
    assert grid.quality(C) == pytest.approx((0.75 + 0.8) / 2)
    sub = rp.load_grid([t0, t1], only={"alpha": 0.5})  # a complete sub-grid: nothing missing
    assert list(sub.points) == [A, B] and sub.holes == []
    assert sub.values() == {"alpha": [0.5], "fusion": ["concat", "sum"]}


@pytest.mark.slow
def test_one_real_replay_through_ray(bw, rp, tmp_path):
    """TPE + ASHA through Ray over a grid with a hole (D is missing from tables 1 and 2): each
    trial replays its configuration's curve from the study's table; a trial on the hole fails
    (as a diverged trial does) and never wins."""
    from bmlr.tuning.ray_backend import init_ray
    import ray

    partial = {(0.5, "concat"), (0.5, "sum"), (1.0, "concat")}
    grid = rp.load_grid([write_table(tmp_path / "s0", 0)] +
                        [write_table(tmp_path / f"s{s}", s, keep=partial) for s in (1, 2)])
    settings = rp.ReplaySettings(max_epochs=3, concurrent=2, sleep_s=0.0)
    init_ray(None, 2, 0)
    try:
        rec = rp.run_replay(grid, rp.Replay("last-3", 4, seed=1), settings, tmp_path)
    finally:
        ray.shutdown()
    assert rec["table"] == 1 and rec["table_seed"] == 1 and len(rec["trials"]) == 4
    for t in rec["trials"]:  # each trial replayed its configuration's table-1 curve (ASHA may stop it)
        key = rp.point_key(t["config"], grid.keys)
        n = len(t["val_acc"])
        if key in grid.holes:
            assert n == 0 and "not in every table" in t["error"]
        else:
            assert t["error"] is None
            assert 1 <= n <= 3 and t["val_acc"] == grid.curves[1][key][:n]
    got = bw.outcome(rec, grid, max_epochs=3)
    assert got["winner"] in grid.points and got["regret"] >= 0 and math.isfinite(got["regret"])
    assert got["search_epochs"] == sum(len(t["val_acc"]) for t in rec["trials"])
