"""The regret of a study's exported winner, as tabular HPO benchmarks measure it (HPOBench's
average incumbent): replayed TPE + ASHA studies over a grid trained with several seeds, for each
trial score rule, with and without the confirmation stage (issue 13, "Measure and report").

`--tables T0 T1 ...` are grid tables of one grid, one per training seed, whose mean is the
ground truth; a replayed study (searcher seed r) runs `--samples` trials of at most the grid's
epochs through the product's TPE + ASHA (grace period / reduction factor / TPE start-up from the
study's defaults unless given) and trains with ONE seed: table r % n. Each trial reports every
epoch `score` = the rule's value over the epochs so far, so the rule steers Optuna and ASHA and
each rule has its own replays (bench/replay.py: the tables, the ground truth, the replays and
their cache). Afterwards:

* without confirmation the exported winner is the product's: rows built by
  `bmlr.tuning.results.best_epoch` (score = the rule's final value, best_epoch its epoch), the
  winner `bmlr.tuning.selection.choose_best`;
* with confirmation (K, S) the candidates are `bmlr.tuning.confirm.pick_candidates` (the top K
  distinct configurations of that ranking), each confirmed by the best validation accuracy of
  the next S tables after the study's (seeds the study never used; S at most n - 1), the winner
  `bmlr.tuning.selection.choose_confirmed` (best mean; ties: the search's order); its cost is
  K x S x epochs. The confirmation is post hoc on the same replay (no replay of its own).

Reported for each budget (`--budgets`, default 16 and 48 trials), rule and confirmation setting
over `--seeds` searcher seeds: the median regret with its 25 / 75 % quantiles and the mean total
epochs (search + confirmation). The equal-cost comparison: today's default (`best`, no
confirmation) replayed with M = N + round(K x S x epochs / e) trials, where e is the mean epochs
per trial of today's default at N trials (its own replays), i.e. the extra trials the
confirmation's epochs buy at today's average trial length; where the realised mean total epochs
at M miss the target (today's default at N + K x S x epochs) by more than one trial's, M is
corrected once more by the gap over M's own epochs per trial (`--match-rounds`), and the M
closest to the target is reported. The realised mean epochs of both sides are printed. A
markdown table goes to the terminal and `--out`/results.md, every number to `--out`/summary.json.
Each replay is cached in `--out`/replays/ (a rerun skips it; a rerun with other tables or
settings is refused: choose another --out).

    # the seed-1 and seed-2 tables: bench_search.py's grid with the seed-0 table's settings
    python bench/bench_search.py --val-per-class 220 --out bench/results/grid-s1 --seed 1 --grid-only
    python bench/bench_search.py --val-per-class 220 --out bench/results/grid-s2 --seed 2 --grid-only
    # the measurement (synthetic default, 3 training seeds)
    python bench/bench_winners.py --out bench/results/winners --seeds 10 \\
        --tables bench/data/search-grid-synthetic-v2-e20-v220.jsonl bench/results/grid-s1/grid.jsonl \\
        bench/results/grid-s2/grid.jsonl
    # a quick look on the complete alpha=0.5 sub-grid of tables still being written
    python bench/bench_winners.py --out /tmp/winners --seeds 2 --only alpha=0.5 --tables ...

Replays are not bit-reproducible: with `--concurrent` 2 ASHA sees the trials' reports in the
order their processes deliver them, as in a real study; the cache keeps each replay once run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import (Grid, Replay, ReplaySettings, add_replay_arguments, load_record, open_replays,  # noqa: E402
                    parse_replay_arguments, row_key, run_all, trial_rows)

RULES = ("best", "last", "last-3", "smooth-3")
BUDGETS = (16, 48)
DEFAULT_RULE = "best"  # today's default: the rule the equal-cost comparison replays


# --- what the study exports ---------------------------------------------------------------------------
def confirmation_tables(grid: Grid, study_table: int, seeds: int) -> list[int]:
    """The `seeds` tables after the study's (in rotation): training seeds the study never used."""
    if not 1 <= seeds <= grid.n - 1:
        raise ValueError(f"a confirmation needs 1 to {grid.n - 1} other tables, got {seeds}")
    return [(study_table + 1 + i) % grid.n for i in range(seeds)]


def confirm(rows: list[dict[str, Any]], grid: Grid, study_table: int, k: int, seeds: int):
    """The confirmation stage on `rows`: the top `k` distinct configurations, each trained again
    with `seeds` new seeds (read from the other tables: the best validation accuracy over all
    epochs); returns (winner's row or None, the candidates, the confirmation's epochs)."""
    from bmlr.tuning.confirm import pick_candidates
    from bmlr.tuning.selection import choose_confirmed

    candidates = pick_candidates(rows, grid.space(), k)
    tables = confirmation_tables(grid, study_table, seeds)
    results = [{"candidate": c.trial_id, "seed": grid.seeds[t], "status": "completed",
                "best_val_acc": max(grid.curves[t][row_key(c.row, grid)])} for c in candidates for t in tables]
    winner = choose_confirmed(candidates, results)
    return (winner.row if winner else None), candidates, len(candidates) * seeds * grid.epochs


def outcome(record: dict[str, Any], grid: Grid, max_epochs: int, k: int = 0, seeds: int = 0) -> dict[str, Any]:
    """The exported winner of a replayed study (confirmed by `k` candidates x `seeds` tables
    where k > 0), its regret in points and the study's total epochs (search + confirmation)."""
    from bmlr.tuning.selection import choose_best

    rows = trial_rows(record, record["rule"], max_epochs)
    search = sum(r["epochs"] for r in rows)
    if k:
        winner, _, cost = confirm(rows, grid, record["table"], k, seeds)
    else:
        winner, cost = choose_best(rows), 0
    if winner is None:
        return {"winner": None, "regret": None, "epochs": search + cost, "search_epochs": search}
    key = row_key(winner, grid)
    return {"winner": key, "regret": grid.regret(key), "epochs": search + cost, "search_epochs": search,
            "confirmation_epochs": cost}


def summarise(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and 25 / 75 % quantiles of the regret (points) and the mean total epochs."""
    regrets = [o["regret"] for o in outcomes if o["regret"] is not None]
    q = statistics.quantiles(regrets, n=4, method="inclusive") if len(regrets) > 1 else regrets * 3
    return {"runs": len(outcomes), "no_winner": len(outcomes) - len(regrets),
            "median": q[1] if q else None, "q25": q[0] if q else None, "q75": q[2] if q else None,
            "mean_regret": statistics.fmean(regrets) if regrets else None,
            "mean_epochs": statistics.fmean(o["epochs"] for o in outcomes), "regrets": regrets,
            "winners": [o["winner"] for o in outcomes], "epochs": [o["epochs"] for o in outcomes]}


def matched_samples(samples: int, default_outcomes: list[dict[str, Any]], extra_epochs: float) -> int:
    """Today's default at equal cost: `samples` plus the trials `extra_epochs` buy at its mean
    epochs per trial (measured by its own replays at `samples`)."""
    per_trial = statistics.fmean(o["search_epochs"] for o in default_outcomes) / samples
    return samples + round(extra_epochs / per_trial)


# --- the measurement ---------------------------------------------------------------------------------
def measure(grid: Grid, args, settings: ReplaySettings, out: Path) -> dict[str, Any]:
    """Every rule x budget x searcher seed replayed, the outcomes with and without confirmation,
    then today's default at the matched budgets; returns the summary's results part."""
    seeds = range(args.seeds)
    replays = [Replay(rule, n, r) for n in args.budgets for rule in args.rules for r in seeds]
    replays += [Replay(DEFAULT_RULE, n, r) for n in args.budgets for r in seeds]
    run_all(replays, args, settings, out)
    extra = args.confirm * args.confirm_seeds * args.max_epochs
    settings_list = [("none", 0, 0), (f"K={args.confirm}, S={args.confirm_seeds}", args.confirm, args.confirm_seeds)]
    results: dict[str, Any] = {"budgets": {}}
    for n in args.budgets:
        default = [outcome(load_record(out, Replay(DEFAULT_RULE, n, r)), grid, args.max_epochs) for r in seeds]
        m, tried = match_default(grid, n, default, extra, args, settings, out, replays)
        matched = summarise([outcome(load_record(out, Replay(DEFAULT_RULE, m, r)), grid, args.max_epochs)
                             for r in seeds])
        rows = {}
        for rule in args.rules:
            records = [load_record(out, Replay(rule, n, r)) for r in seeds]
            rows[rule] = {label: summarise([outcome(rec, grid, args.max_epochs, k, s) for rec in records])
                          for label, k, s in settings_list}
        results["budgets"][str(n)] = {"rules": rows, "matched_samples": m, "matched_default": matched,
                                      "matching": tried, "target_epochs": statistics.fmean(
                                          o["epochs"] for o in default) + extra,
                                      "default_epochs_per_trial": statistics.fmean(
                                          o["search_epochs"] for o in default) / n,
                                      "confirmation_epochs": extra}
    results["replay_seconds"] = {r.name: load_record(out, r)["seconds"] for r in dict.fromkeys(replays)}
    return results


def match_default(grid: Grid, n: int, default: list[dict[str, Any]], extra: int, args, settings: ReplaySettings,
                  out: Path, replays: list[Replay]) -> tuple[int, list[dict[str, float]]]:
    """Today's default's trials M at the cost of N trials plus a confirmation's `extra` epochs:
    first N + the trials `extra` buys at its mean epochs per trial at N; then, up to
    `--match-rounds` times, M moved by the trials the remaining gap buys at M's own mean epochs
    per trial, until the realised mean total epochs lie within one trial's of the target.
    Returns M (`--matched-samples` where given) and every M tried with its mean epochs; the
    replays run are appended to `replays`."""
    target = statistics.fmean(o["epochs"] for o in default) + extra
    m = args.matched_samples or matched_samples(n, default, extra)
    tried: list[dict[str, float]] = []
    for _ in range(1 if args.matched_samples else max(args.match_rounds, 1)):
        replays += [Replay(DEFAULT_RULE, m, r) for r in range(args.seeds)]
        run_all(replays, args, settings, out)
        mean = statistics.fmean(outcome(load_record(out, Replay(DEFAULT_RULE, m, r)), grid, args.max_epochs)["epochs"]
                                for r in range(args.seeds))
        tried.append({"samples": m, "mean_epochs": mean})
        per_trial = mean / m
        if abs(mean - target) <= per_trial:
            break
        m = max(1, m + round((target - mean) / per_trial))
    best = min(tried, key=lambda t: abs(t["mean_epochs"] - target))
    return int(best["samples"]), tried


def _fmt(s: dict[str, Any]) -> str:
    if s["median"] is None:
        return "no winner"
    return f"{s['median']:.2f} [{s['q25']:.2f}, {s['q75']:.2f}]"


def markdown(results: dict[str, Any]) -> str:
    """One table: per budget, rule and confirmation, the regret and epochs, beside today's default
    at the matched budget."""
    lines = ["| trials | score | confirmation | median regret, points [25 %, 75 %] | mean total epochs | "
             "today's default at equal cost: trials, median regret [25 %, 75 %], mean epochs |",
             "|---|---|---|---|---|---|"]
    for n, b in results["budgets"].items():
        d = b["matched_default"]
        for rule, by_setting in b["rules"].items():
            for label, s in by_setting.items():
                equal = (f"{b['matched_samples']}, {_fmt(d)}, {d['mean_epochs']:.0f}" if label != "none"
                         else "(the same study)")
                lines.append(f"| {n} | {rule} | {label} | {_fmt(s)} | {s['mean_epochs']:.0f} | {equal} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_replay_arguments(p, "bench/results/winners")
    p.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS), help="--samples of the studies")
    p.add_argument("--rules", nargs="+", default=list(RULES), help="trial score rules (bmlr.tuning.scores)")
    p.add_argument("--confirm", type=int, default=3, help="K: configurations the confirmation trains again")
    p.add_argument("--confirm-seeds", type=int, help="S: their new seeds (default: every other table)")
    p.add_argument("--matched-samples", type=int, help="today's default's trials at equal cost (default: "
                   "N + the trials the confirmation's epochs buy)")
    p.add_argument("--match-rounds", type=int, default=2, help="replays of today's default to match the "
                   "confirmation's cost: the first M, then corrections (see match_default)")
    p.add_argument("--grace-period", type=int, help="ASHA's grace period (default: the study's)")
    args = parse_replay_arguments(p, argv)
    from bmlr.tuning.scores import parse_score

    for rule in args.rules:
        parse_score(rule)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    grid, truth, settings = open_replays(args, args.grace_period)
    args.confirm_seeds = args.confirm_seeds or grid.n - 1
    confirmation_tables(grid, 0, args.confirm_seeds)  # checks S against the tables
    start = time.time()
    results = measure(grid, args, settings, out)
    table = markdown(results)
    print("\n" + table)
    secs = list(results["replay_seconds"].values())
    print(f"\n{len(secs)} replays, median {statistics.median(secs):.1f}s each; this run {time.time() - start:.0f}s")
    summary = {"truth": truth, **results, "settings": dict(vars(args))}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "results.md").write_text(table + "\n")
    print(f"numbers: {out / 'summary.json'}; table: {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
