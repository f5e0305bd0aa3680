"""Search efficiency as HPO benchmarks measure it (issue 15): the anytime normalised regret of a
study's incumbent against cumulative training epochs, per searcher x scheduler, over replayed
studies on a seed-averaged grid (HPOBench's average incumbent; Syne Tune's and Kegl 2023's
regret-over-budget curves).

Ground truth: `--tables T0 T1 ...`, one grid table per training seed (bench_winners.load_grid:
only the configurations every table holds; `--only` a complete sub-grid). A configuration's true
quality q(c) is the mean over the tables of its best validation accuracy (Grid.quality);
q* = max q, q- = min q over the grid's configurations.

Replays: each strategy (`--strategies`, SAMPLER+SCHEDULER[/gGRACE]: tpe | random x asha |
hyperband | none, grace period GRACE; plus tpe+asha with each of `--graces`) is replayed with
`--seeds` searcher seeds and `--samples` trials through real Ray Tune by bench_winners.run_replay,
whose searcher and scheduler come from the product's factories (make_sampler, make_searcher,
make_scheduler, exactly as `tune.py --scheduler` builds them). The study trains with one seed:
table r % n (r the searcher seed). Replays are cached in `--out`/replays/ (shared with
bench_winners: its TPE + ASHA replays have the same names) and run in `--workers` processes.

The anytime regret of one replay: its trials in Ray's creation order (the record's order, which
is the ResultGrid's: Ray's trial list; the random sampler's draws come in that order, a test checks);
after trial i the incumbent is what the study would export with trials 1..i (the product's rule:
bench_winners.trial_rows, i.e. bmlr.tuning.results.best_epoch with `--rule`, then
bmlr.tuning.selection.choose_best), its regret (q* - q(incumbent)) / (q* - q-), plotted at the
epochs trials 1..i trained together. Approximation: with `--concurrent` trials at once a later
trial may start before an earlier one has finished (and ASHA may stop an earlier trial because
of a later one), so "after trial i" counts every epoch trial i and its predecessors ever trained;
the last point is exact (the whole study). Before the first trial, or while every trial so far
has failed, there is no incumbent: regret 1.

Per strategy over the searcher seeds, on a common integer epoch axis (each replay's curve a step
function, held at its final value after its study ended): the median curve and its interquartile
band; `median_final_regret` (the median of the studies' final regrets, i.e. the median curve at
the end of the budget); `speedup_vs_random`: the epochs random search (random+none, the
reference: `--reference-samples` trials) needs for its median curve to reach the strategy's
median final regret, divided by the strategy's median total epochs. Where random's median curve
never reaches it within its own budget, the speed-up is None (JSON null, "> x" in the table) and
`speedup_lower_bound` is random's budget divided by the strategy's epochs.

    # the synthetic grid, three training seeds (the seed-2 table still being written: --only)
    python bench/bench_regret.py --name synthetic --out bench/results/regret-synthetic --workers 2 \\
        --tables bench/data/search-grid-synthetic-v2-e20-v220.jsonl \\
        bench/data/search-grid-synthetic-v2-e20-v220-s1.jsonl /work/grids/syn-s2/grid.jsonl \\
        --graces 3 5 --docs

Outputs: `--out`/regret-<name>.png (median + IQR band per strategy), `--out`/summary.json and
a markdown table (terminal and `--out`/results.md); with `--docs` the figure is copied to
docs/img/search_regret_<name>.png and the summary merged into
docs/img/search_regret_summary.json under <name> (other data sets' entries kept).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import bench_winners as bw  # noqa: E402  (sets Ray's environment before Ray is imported)

STRATEGIES = ("tpe+asha", "tpe+hyperband", "tpe+none", "random+asha", "random+hyperband", "random+none")
REFERENCE = "random+none"
SUMMARY = ROOT / "docs" / "img" / "search_regret_summary.json"


# --- strategies -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Strategy:
    """A searcher x scheduler (and grace period: None is the study's default)."""

    sampler: str
    scheduler: str
    grace_period: int | None = None

    @property
    def label(self) -> str:
        grace = "" if self.grace_period is None else f"/g{self.grace_period}"
        return f"{self.sampler}+{self.scheduler}{grace}"

    def replay(self, rule: str, samples: int, seed: int) -> bw.Replay:
        return bw.Replay(rule, samples, seed, self.sampler, self.scheduler, self.grace_period)


def parse_strategy(text: str, default_grace: int) -> Strategy:
    """`SAMPLER+SCHEDULER[/gGRACE]`, checked against the product's names; a grace period equal
    to the study's default is the default (the same replays)."""
    from bmlr.tuning.search_space_types import SCHEDULERS

    body, _, grace = text.partition("/g")
    sampler, _, scheduler = body.partition("+")
    if sampler not in ("tpe", "random") or scheduler not in SCHEDULERS:
        raise SystemExit(f"strategy {text!r}: expected SAMPLER+SCHEDULER[/gGRACE], sampler tpe or random, "
                         f"scheduler one of {', '.join(SCHEDULERS)}")
    g = int(grace) if grace else None
    if g is not None and scheduler == "none":
        raise SystemExit(f"strategy {text!r}: without a scheduler there is no grace period")
    return Strategy(sampler, scheduler, None if g == default_grace else g)


def strategies(names: Sequence[str], graces: Sequence[int], default_grace: int) -> list[Strategy]:
    """The strategies measured (each once), the reference random+none among them."""
    found = [parse_strategy(n, default_grace) for n in [*names, *(f"tpe+asha/g{g}" for g in graces), REFERENCE]]
    return list(dict.fromkeys(found))


# --- the anytime regret of one replay ------------------------------------------------------------------
def normalised_regret(grid: bw.Grid, key: str | None) -> float:
    """(q* - q(key)) / (q* - q-); 1 where there is no incumbent (key None)."""
    qualities = [grid.quality(k) for k in grid.points]
    best, worst = max(qualities), min(qualities)
    if best == worst:
        raise SystemExit("every configuration has the same true quality: the regret is not defined")
    return 1.0 if key is None else (best - grid.quality(key)) / (best - worst)


def anytime_regret(record: dict[str, Any], grid: bw.Grid, rule: str, max_epochs: int) -> list[tuple[int, float]]:
    """(cumulative epochs, normalised regret of the incumbent) after each trial, in creation order:
    the incumbent is the product's export from the trials so far (trial_rows + choose_best)."""
    from bmlr.tuning.selection import choose_best

    rows = bw.trial_rows(record, rule, max_epochs)  # the record's order: Ray's (ResultGrid's) creation order
    points, epochs = [], 0
    for i, row in enumerate(rows, 1):
        epochs += row["epochs"]
        winner = choose_best(rows[:i])
        points.append((epochs, normalised_regret(grid, None if winner is None else bw.row_key(winner, grid))))
    return points


def value_at(curve: list[tuple[int, float]], epochs: int) -> float:
    """A step curve's value after `epochs` epochs: the last point at or before it (1 before the first)."""
    i = bisect_right([e for e, _ in curve], epochs)
    return 1.0 if i == 0 else curve[i - 1][1]


# --- per strategy: the band over seeds, the final regret, the speed-up ---------------------------------
def band(curves: list[list[tuple[int, float]]], axis: Sequence[int]) -> dict[str, list[float]]:
    """Median and 25 / 75 % quantiles over the curves at every epoch of `axis`."""
    import numpy as np

    values = np.array([[value_at(c, x) for x in axis] for c in curves])
    q25, median, q75 = np.percentile(values, [25, 50, 75], axis=0)
    return {"median": median.tolist(), "q25": q25.tolist(), "q75": q75.tolist()}


def epochs_to_reach(axis: Sequence[int], median: Sequence[float], target: float) -> int | None:
    """The first epoch of `axis` where the median curve is at or below `target` (None: never)."""
    return next((x for x, m in zip(axis, median) if m <= target + 1e-12), None)


def speedup(reference_axis: Sequence[int], reference_median: Sequence[float], target: float,
            strategy_epochs: float, reference_budget: float) -> dict[str, float | int | None]:
    """Random search's epochs to reach `target` over the strategy's epochs; where it never does,
    None and the lower bound random's budget / the strategy's epochs."""
    reached = epochs_to_reach(reference_axis, reference_median, target)
    return {"speedup_vs_random": None if reached is None else reached / strategy_epochs,
            "random_epochs_to_reach": reached,
            "speedup_lower_bound": reference_budget / strategy_epochs if reached is None else None}


def summarise(curves: list[list[tuple[int, float]]], axis: Sequence[int]) -> dict[str, Any]:
    """One strategy over its seeds: band, final regrets and their median / IQR, total epochs."""
    finals = [c[-1][1] for c in curves]
    totals = [c[-1][0] for c in curves]
    q = statistics.quantiles(finals, n=4, method="inclusive") if len(finals) > 1 else finals * 3
    return {"median_final_regret": statistics.median(finals), "iqr_final_regret": [q[0], q[2]],
            "median_total_epochs": statistics.median(totals), "mean_total_epochs": statistics.fmean(totals),
            "final_regrets": finals, "total_epochs": totals, "band": band(curves, axis)}


def measure(grid: bw.Grid, chosen: list[Strategy], records: dict[Strategy, list[dict[str, Any]]],
            reference: list[dict[str, Any]], rule: str, max_epochs: int) -> dict[str, Any]:
    """Every strategy's summary and speed-up against the reference's (random+none) median curve."""
    curves = {s: [anytime_regret(r, grid, rule, max_epochs) for r in records[s]] for s in chosen}
    ref_curves = [anytime_regret(r, grid, rule, max_epochs) for r in reference]
    axis = list(range(max(c[-1][0] for c in [*ref_curves, *(c for cs in curves.values() for c in cs)]) + 1))
    ref = summarise(ref_curves, axis)
    budget = max(c[-1][0] for c in ref_curves)
    out = {}
    for s in chosen:
        summary = summarise(curves[s], axis)
        summary.update(speedup(axis, ref["band"]["median"], summary["median_final_regret"],
                               summary["median_total_epochs"], budget))
        out[s.label] = summary
    return {"axis": axis, "strategies": out, "reference": {"label": REFERENCE, "budget": budget, **ref}}


# --- outputs --------------------------------------------------------------------------------------------
def plot(results: dict[str, Any], title: str, path: Path, logx: bool) -> None:
    """Two panels (TPE's strategies, random sampling's), each with random+none for reference:
    per strategy the median regret (a step line, up to the longest of its studies; the dot is
    the median final regret at the median total epochs) and the interquartile band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results["strategies"])
    colours = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    fig, panels = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, sampler in zip(panels, ("tpe", "random")):
        for label in [la for la in labels if la.startswith(sampler + "+") or la == REFERENCE]:
            draw_strategy(ax, results["axis"], results["strategies"][label], label, colours[label])
        if logx:
            ax.set_xscale("log")
            ax.set_xlim(left=1)
        ax.set_xlabel("cumulative training epochs")
        ax.set_title(f"{sampler} sampler (random+none: the reference)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    panels[0].set_ylabel("normalised regret of the incumbent")
    panels[0].set_ylim(-0.02, 1.02)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_strategy(ax, axis: Sequence[int], s: dict[str, Any], label: str, colour) -> None:
    """One strategy's median step line and IQR band, cut where its longest study ended."""
    end = max(s["total_epochs"]) + 1
    b, style = s["band"], "--" if label.startswith("random") else "-"
    width = 2.2 if label == REFERENCE else 1.4
    ax.step(axis[:end], b["median"][:end], where="post", color=colour, linestyle=style, linewidth=width,
            label=label)
    ax.fill_between(axis[:end], b["q25"][:end], b["q75"][:end], step="post", color=colour, alpha=0.15, linewidth=0)
    ax.plot([s["median_total_epochs"]], [s["median_final_regret"]], "o", color=colour, markersize=5)


def merge_summary(path: Path, name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """`path`'s JSON with `name` set to `entry` (every other data set's entry kept); written
    atomically and returned."""
    from bmlr.fileio import atomic_write_text

    data = json.loads(path.read_text()) if path.is_file() else {}
    if not isinstance(data, dict):
        raise SystemExit(f"{path} is not a JSON object: not merged")
    data[name] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return data


def docs_entry(results: dict[str, Any], truth: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The summary JSON's entry of one data set: per strategy the numbers, no curves."""
    keep = ("median_final_regret", "iqr_final_regret", "speedup_vs_random", "speedup_lower_bound",
            "random_epochs_to_reach", "median_total_epochs", "mean_total_epochs")
    return {"grid": {k: truth[k] for k in ("configurations", "grid_size", "seeds", "epochs", "q_star", "best")},
            "q_worst": min(truth["quality"].values()), "samples": args.samples, "searcher_seeds": args.seeds,
            "reference": REFERENCE, "reference_samples": args.reference_samples, "rule": args.rule,
            "strategies": {label: {k: s[k] for k in keep} for label, s in results["strategies"].items()}}


def markdown(results: dict[str, Any]) -> str:
    lines = ["| strategy | median final regret [25 %, 75 %] | speed-up vs random | median total epochs "
             "| mean total epochs |", "|---|---|---|---|---|"]
    for label, s in results["strategies"].items():
        lo, hi = s["iqr_final_regret"]
        up = (f"{s['speedup_vs_random']:.2f}" if s["speedup_vs_random"] is not None
              else f"> {s['speedup_lower_bound']:.2f} (random never reaches it)")
        lines.append(f"| {label} | {s['median_final_regret']:.3f} [{lo:.3f}, {hi:.3f}] | {up} | "
                     f"{s['median_total_epochs']:.0f} | {s['mean_total_epochs']:.0f} |")
    return "\n".join(lines)


# --- the command ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", nargs="+", required=True, help="grid tables of one grid, one per training seed")
    p.add_argument("--name", required=True, help="the data set's label (synthetic, avmnist): file names, JSON key")
    p.add_argument("--out", help="replay cache and results (default bench/results/regret-<name>)")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), help="SAMPLER+SCHEDULER[/gGRACE]")
    p.add_argument("--graces", type=int, nargs="*", default=[], help="tpe+asha with these grace periods too")
    p.add_argument("--seeds", type=int, default=10, help="searcher seeds per strategy")
    p.add_argument("--samples", type=int, default=48, help="trials per study (--samples)")
    p.add_argument("--reference-samples", type=int, help="trials of the random+none reference (default --samples)")
    p.add_argument("--rule", help="the trial score rule (default: the product's, bmlr.tuning.scores)")
    bw.add_replay_arguments(p)
    p.add_argument("--logx", action="store_true", help="log-scaled epoch axis")
    p.add_argument("--docs", action="store_true", help="copy the figure to docs/img and merge the summary JSON")
    args = bw.parse_replay_arguments(p, argv)
    from bmlr.tuning.scores import DEFAULT_SCORE, parse_score

    args.rule = args.rule or DEFAULT_SCORE
    parse_score(args.rule)  # an unknown rule: ScoreError before any replay
    args.reference_samples = args.reference_samples or args.samples
    args.out = args.out or str(ROOT / "bench" / "results" / f"regret-{args.name}")
    return args


def main(argv: list[str] | None = None) -> int:
    from bmlr.tuning.plan import StudySettings

    args = parse_args(argv)
    out = Path(args.out).resolve()
    grid = bw.load_grid([Path(t) for t in args.tables], args.only)
    args.tables = [str(Path(t).resolve()) for t in args.tables]
    args.max_epochs = args.max_epochs or grid.epochs
    truth = bw.describe(grid, args.tables)
    chosen = strategies(args.strategies, args.graces, StudySettings().grace_period)
    bw.check_settings(out, {"tables": args.tables, "only": args.only, "configurations": sorted(grid.points),
                            "max_epochs": args.max_epochs, "grace_period": None,
                            "reduction_factor": args.reduction_factor, "startup": args.startup,
                            "concurrent": args.concurrent})  # bench_winners' keys: its cache is shared
    settings = bw.ReplaySettings(args.max_epochs, None, args.reduction_factor, args.startup, args.concurrent,
                                 args.replay_sleep)
    seeds = range(args.seeds)
    reference = Strategy("random", "none")
    wanted = {s: [s.replay(args.rule, args.samples, r) for r in seeds] for s in chosen}
    ref_replays = [reference.replay(args.rule, args.reference_samples, r) for r in seeds]
    start = time.time()
    bw.run_all([r for rs in wanted.values() for r in rs] + ref_replays, args, settings, out)
    records = {s: [bw.load_record(out, r) for r in rs] for s, rs in wanted.items()}
    results = measure(grid, chosen, records, [bw.load_record(out, r) for r in ref_replays], args.rule,
                      args.max_epochs)
    table = markdown(results)
    secs = [rec["seconds"] for recs in records.values() for rec in recs]
    print(f"\n{args.name}: {len(grid.points)} configurations, {grid.n} training seeds, {args.samples} trials, "
          f"{args.seeds} searcher seeds\n\n{table}\n\nreplays: median {statistics.median(secs):.1f}s each; "
          f"this run {time.time() - start:.0f}s")
    title = (f"{args.name}: {len(grid.points)} configurations x {grid.n} seeds, {args.samples} trials, "
             f"median and IQR over {args.seeds} searcher seeds")
    figure = out / f"regret-{args.name}.png"
    plot(results, title, figure, args.logx)
    entry = docs_entry(results, truth, args)
    (out / "summary.json").write_text(json.dumps({**entry, "curves": results, "truth": truth}, indent=2))
    (out / "results.md").write_text(table + "\n")
    print(f"figure: {figure}; numbers: {out / 'summary.json'}")
    if args.docs:
        shutil.copyfile(figure, ROOT / "docs" / "img" / f"search_regret_{args.name}.png")
        merge_summary(SUMMARY, args.name, entry)
        print(f"docs: docs/img/search_regret_{args.name}.png, {SUMMARY.relative_to(ROOT)} [{args.name}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
