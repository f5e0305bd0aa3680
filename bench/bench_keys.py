"""Trials per searched key (issue 29, `compare --samples-per-key`): how many trials a study needs,
by the number of keys it searches, before its export is as good as a larger search's.

Each space is a sub-grid of the `--tables` (bench/replay.py: one table per training seed, the
ground truth their mean): `--space NAME KEY=VALUE ...` searches the grid's keys not fixed by its
KEY=VALUE items. Every space is searched as a comparison's row searches it, the study's default
strategy (TPE + ASHA with the measured grace period) replayed through real Ray Tune with
`--seeds` searcher seeds and `--samples` trials; after each trial the export's normalised regret
(bench_regret.anytime_regret: (q* - q(export)) / (q* - q-) on that sub-grid). A study selects
on one training seed's validation, so its regret has a floor above 0 that more trials do not
lower; the measure is therefore where the search *settles*: the first n from which the median
regret stays within `--slack` of its value after all `--samples` trials. Printed per space: the
median regret after n trials, where it settles, and that n per searched key.

    python bench/bench_keys.py --out /tmp/keys --workers 2 --tables bench/data/search-grid-digits-e30*.jsonl \\
        --space lr alpha=1.0 beta=0.65 fusion=concat weight_decay=0.0 \\
        --space alpha,beta,lr fusion=concat weight_decay=0.0 --space all
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import yaml

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_regret import DEFAULT, REFERENCE, anytime_regret, parse_strategy  # noqa: E402
from replay import add_replay_arguments, load_record, open_replays, run_all  # noqa: E402

SHOWN = (4, 8, 12, 16, 24, 32, 48, 64, 96)


def regret_after_trials(curves: list[list[tuple[int, float]]], samples: int) -> list[float]:
    """The median over searcher seeds of the export's regret after 1..samples trials."""
    return [statistics.median(c[min(n, len(c)) - 1][1] for c in curves) for n in range(1, samples + 1)]


def settles_at(median: list[float], slack: float) -> int:
    """The first trial count from which the median regret stays within `slack` of its last value."""
    for n in range(len(median), 0, -1):
        if median[n - 1] > median[-1] + slack + 1e-12:
            return n + 1
    return 1


def measure_space(args: argparse.Namespace, name: str, only: list[str]) -> dict:
    """Replay the default strategy on one sub-grid; its regret after each trial."""
    from bmlr.tuning.plan import DEFAULT_GRACE_PERIOD
    from bmlr.tuning.scores import DEFAULT_SCORE

    sub = copy.copy(args)
    sub.only = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in only)}
    sub.out = str(Path(args.out) / name)
    grid, truth, settings = open_replays(sub, None)
    strategy = parse_strategy(args.strategy, DEFAULT_GRACE_PERIOD)
    replays = [strategy.replay(DEFAULT_SCORE, args.samples, r) for r in range(args.seeds)]
    run_all(replays, sub, settings, Path(sub.out).resolve())
    curves = [anytime_regret(load_record(Path(sub.out).resolve(), r), grid, DEFAULT_SCORE, sub.max_epochs)
              for r in replays]
    searched = [k for k, values in grid.values().items() if len(values) > 1]
    median = regret_after_trials(curves, args.samples)
    settled = settles_at(median, args.slack)
    return {"space": name, "searched": searched, "configurations": len(grid.points), "q_star": truth["q_star"],
            "median_regret": median, "settles_at": settled, "trials_per_key": settled / max(1, len(searched))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_replay_arguments(p, None)
    p.add_argument("--space", nargs="+", action="append", required=True, metavar="NAME [KEY=VALUE ...]",
                   help="a sub-grid: its name and the values it fixes (none: the whole grid)")
    p.add_argument("--samples", type=int, default=48, help="trials per replayed study")
    p.add_argument("--slack", type=float, default=0.02, help="'settled': within this normalised regret of the "
                   "median regret after all --samples trials")
    p.add_argument("--strategy", default=DEFAULT.label, help=f"SAMPLER+SCHEDULER[/gGRACE] (bench_regret; "
                   f"default the study's; the reference there is {REFERENCE})")
    args = p.parse_args(argv)
    args.out = str(Path(args.out or "bench/results/keys").resolve())
    results = [measure_space(args, space[0], space[1:]) for space in args.space]
    shown = [n for n in SHOWN if n <= args.samples]
    print(f"\nmedian normalised regret of the export after n trials ({args.seeds} searcher seeds, {args.strategy}); "
          f"settled: within {args.slack} of its value after {args.samples}\n")
    print("| space | keys searched | configurations | " + " | ".join(f"n={n}" for n in shown)
          + " | settles at | per key |")
    print("|---|---|---|" + "---|" * len(shown) + "---|---|")
    for r in results:
        print(f"| {r['space']} | {', '.join(r['searched'])} | {r['configurations']} | "
              + " | ".join(f"{r['median_regret'][n - 1]:.3f}" for n in shown)
              + f" | {r['settles_at']} | {r['trials_per_key']:.1f} |")
    (Path(args.out) / "summary.json").write_text(json.dumps(results, indent=2))
    print(f"\nnumbers: {Path(args.out) / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
