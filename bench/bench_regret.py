"""Search efficiency as HPO benchmarks measure it (issue 15): the anytime normalised regret of a
study's incumbent against cumulative training epochs, per searcher x scheduler, over replayed
studies on a seed-averaged grid (HPOBench's average incumbent; Syne Tune's and Kegl 2023's
regret-over-budget curves).

`--tables T0 T1 ...`, one grid table per training seed, are the ground truth (bench/replay.py:
q(c), q* = max q; here also q- = min q). Each strategy (`--strategies`, SAMPLER+SCHEDULER[/gGRACE]:
tpe | random x asha | hyperband | none, grace period GRACE (epochs, or auto: measured by the study,
the default); plus tpe+asha with each of `--graces`)
is replayed with `--seeds` searcher seeds and `--samples` trials through real Ray Tune with the
product's sampler and scheduler (as `tune.py --scheduler` builds them); a study trains with one
seed, table r % n (r the searcher seed). Replays are cached in `--out`/replays/ (shared with
bench_winners: its TPE + ASHA replays have the same names).

A replay's anytime regret (`anytime_regret`) is (q* - q(incumbent)) / (q* - q-) after each of its
trials, the incumbent being what the study would export with the trials so far. Per strategy, on a
common epoch axis: the median curve over the searcher seeds and its interquartile band
(`band`), the median final regret, and the speed-up over random search (`speedup`; random+none
with `--reference-samples` trials is the reference).

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

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from bmlr.tuning.options import grace_period  # noqa: E402
from replay import (ROOT, Grid, Replay, add_replay_arguments, load_record, open_replays,  # noqa: E402
                    parse_replay_arguments, row_key, run_all, trial_rows)

STRATEGIES = ("tpe+asha", "tpe+hyperband", "tpe+none", "random+asha", "random+hyperband", "random+none")
REFERENCE = "random+none"
SUMMARY = ROOT / "docs" / "img" / "search_regret_summary.json"


# --- strategies -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Strategy:
    """A searcher x scheduler (and grace period: None is the study's default)."""

    sampler: str
    scheduler: str
    grace_period: int | str | None = None

    @property
    def label(self) -> str:
        grace = "" if self.grace_period is None else f"/g{self.grace_period}"
        return f"{self.sampler}+{self.scheduler}{grace}"

    def replay(self, rule: str, samples: int, seed: int) -> Replay:
        return Replay(rule, samples, seed, self.sampler, self.scheduler, self.grace_period)


DEFAULT = Strategy("tpe", "asha")  # what a study runs by default (grace None: the study's, measured)


def parse_strategy(text: str, default_grace: int | str) -> Strategy:
    """`SAMPLER+SCHEDULER[/gGRACE]`, checked against the product's names; a grace period equal
    to the study's default is the default (the same replays)."""
    from bmlr.tuning.ray_backend import SCHEDULERS

    body, _, grace = text.partition("/g")
    sampler, _, scheduler = body.partition("+")
    if sampler not in ("tpe", "random") or scheduler not in SCHEDULERS:
        raise SystemExit(f"strategy {text!r}: expected SAMPLER+SCHEDULER[/gGRACE], sampler tpe or random, "
                         f"scheduler one of {', '.join(SCHEDULERS)}")
    try:
        g = grace_period(grace) if grace else None
    except argparse.ArgumentTypeError as err:
        raise SystemExit(f"strategy {text!r}: grace period: {err}") from None
    if g is not None and scheduler == "none":
        raise SystemExit(f"strategy {text!r}: without a scheduler there is no grace period")
    return Strategy(sampler, scheduler, None if g == default_grace else g)


def strategies(names: Sequence[str], graces: Sequence[int | str], default_grace: int | str) -> list[Strategy]:
    """The strategies measured (each once), the reference random+none among them."""
    found = [parse_strategy(n, default_grace) for n in [*names, *(f"tpe+asha/g{g}" for g in graces), REFERENCE]]
    return list(dict.fromkeys(found))


# --- the anytime regret of one replay ------------------------------------------------------------------
def normalised_regret(grid: Grid, key: str | None) -> float:
    """(q* - q(key)) / (q* - q-); 1 where there is no incumbent (key None)."""
    qualities = [grid.quality(k) for k in grid.points]
    best, worst = max(qualities), min(qualities)
    if best == worst:
        raise SystemExit("every configuration has the same true quality: the regret is not defined")
    return 1.0 if key is None else (best - grid.quality(key)) / (best - worst)


def anytime_regret(record: dict[str, Any], grid: Grid, rule: str, max_epochs: int) -> list[tuple[int, float]]:
    """(cumulative epochs, normalised regret of the incumbent) after each trial, in Ray's creation
    order (the record's: the ResultGrid's; the random sampler's draws come in that order, a test
    checks): the incumbent is the product's export from trials 1..i (trial_rows with `rule`, then
    choose_best), at the epochs they trained together. Approximation: with `--concurrent` trials
    at once a later trial may start before an earlier one has finished (and ASHA may stop an
    earlier trial because of a later one), so "after trial i" counts every epoch trial i and its
    predecessors ever trained; the last point is exact (the whole study). Without an incumbent
    (before the first trial, or while every trial so far failed) the regret is 1."""
    from bmlr.tuning.selection import choose_best

    rows = trial_rows(record, rule, max_epochs)  # the record's order: Ray's (ResultGrid's) creation order
    points, epochs = [], 0
    for i, row in enumerate(rows, 1):
        epochs += row["epochs"]
        winner = choose_best(rows[:i])
        points.append((epochs, normalised_regret(grid, None if winner is None else row_key(winner, grid))))
    return points


def value_at(curve: list[tuple[int, float]], epochs: int) -> float:
    """A step curve's value after `epochs` epochs: the last point at or before it (1 before the first)."""
    i = bisect_right([e for e, _ in curve], epochs)
    return 1.0 if i == 0 else curve[i - 1][1]


# --- per strategy: the band over seeds, the final regret, the speed-up ---------------------------------
def band(curves: list[list[tuple[int, float]]], axis: Sequence[int]) -> dict[str, list[float]]:
    """Median and 25 / 75 % quantiles over the curves at every epoch of `axis` (each curve a step
    function, held at its final value after its study ended)."""
    import numpy as np

    values = np.array([[value_at(c, x) for x in axis] for c in curves])
    q25, median, q75 = np.percentile(values, [25, 50, 75], axis=0)
    return {"median": median.tolist(), "q25": q25.tolist(), "q75": q75.tolist()}


def epochs_to_reach(axis: Sequence[int], median: Sequence[float], target: float) -> int | None:
    """The first epoch of `axis` where the median curve is at or below `target` (None: never)."""
    return next((x for x, m in zip(axis, median) if m <= target + 1e-12), None)


def speedup(reference_axis: Sequence[int], reference_median: Sequence[float], target: float,
            strategy_epochs: float, reference_budget: float) -> dict[str, float | int | None]:
    """The epochs random search's median curve needs to reach `target` (the strategy's median
    final regret) over the strategy's median total epochs; where it never does within its own
    budget, None (JSON null, "> x" in the table) and the lower bound random's budget / the
    strategy's epochs."""
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


def measure(grid: Grid, chosen: list[Strategy], records: dict[Strategy, list[dict[str, Any]]],
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
            "default": DEFAULT.label,  # the study's own: TPE + ASHA with the measured grace period
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
    add_replay_arguments(p, None)  # --out's default: bench/results/regret-<name>
    p.add_argument("--name", required=True, help="the data set's label (synthetic, avmnist): file names, JSON key")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), help="SAMPLER+SCHEDULER[/gGRACE]")
    p.add_argument("--graces", type=grace_period, nargs="*", default=[],
                   help="tpe+asha with these grace periods (epochs or auto) too")
    p.add_argument("--samples", type=int, default=48, help="trials per study (--samples)")
    p.add_argument("--reference-samples", type=int, help="trials of the random+none reference (default --samples)")
    p.add_argument("--rule", help="the trial score rule (default: the product's, bmlr.tuning.scores)")
    p.add_argument("--logx", action="store_true", help="log-scaled epoch axis")
    p.add_argument("--docs", action="store_true", help="copy the figure to docs/img and merge the summary JSON")
    args = parse_replay_arguments(p, argv)
    from bmlr.tuning.scores import DEFAULT_SCORE, parse_score

    args.rule = args.rule or DEFAULT_SCORE
    parse_score(args.rule)  # an unknown rule: ScoreError before any replay
    args.reference_samples = args.reference_samples or args.samples
    args.out = args.out or str(ROOT / "bench" / "results" / f"regret-{args.name}")
    return args


def main(argv: list[str] | None = None) -> int:
    from bmlr.tuning.plan import DEFAULT_GRACE_PERIOD

    args = parse_args(argv)
    out = Path(args.out).resolve()
    grid, truth, settings = open_replays(args, None)  # bench_winners' settings: its cache is shared
    chosen = strategies(args.strategies, args.graces, DEFAULT_GRACE_PERIOD)
    wanted = {s: [s.replay(args.rule, args.samples, r) for r in range(args.seeds)] for s in chosen}
    ref_replays = [Strategy("random", "none").replay(args.rule, args.reference_samples, r) for r in range(args.seeds)]
    start = time.time()
    run_all([r for rs in wanted.values() for r in rs] + ref_replays, args, settings, out)
    records = {s: [load_record(out, r) for r in rs] for s, rs in wanted.items()}
    results = measure(grid, chosen, records, [load_record(out, r) for r in ref_replays], args.rule,
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
