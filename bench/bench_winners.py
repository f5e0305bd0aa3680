"""The regret of a study's exported winner, as tabular HPO benchmarks measure it (HPOBench's
average incumbent): replayed TPE + ASHA studies over a grid trained with several seeds, for each
trial score rule, with and without the confirmation stage (issue 13, "Measure and report").

Ground truth. `--tables T0 T1 ...` are grid tables of one grid (`bench/bench_search.py`'s
`grid.jsonl`, or a committed `bench/data/*.jsonl`), one per training seed; their settings must
agree except the seed. Only the configurations present in every table are used (the count is
printed). A configuration's true quality q(c) is the mean over the tables of its best validation
accuracy over all epochs (the production protocol: train every epoch, keep the best validation
epoch); q* = max_c q(c); the regret of a configuration is q* - q(c), in points.

A replayed study (searcher seed r): Optuna TPE + Ray's ASHA through real Ray Tune (here; a
`Replay` may name another sampler and scheduler: bench/bench_regret.py), built by the
product's own factories as `bmlr.tuning.study` builds them (`make_sampler("tpe", r)`,
`make_searcher`, `make_scheduler("asha")`, `with_resources`, `build_tuner`: metric "score", mode
max, grace period / reduction factor / TPE start-up from the study's defaults unless given),
`--samples` trials of at most the grid's epochs. The study trains with ONE seed: table r % n.
Each trial replays its configuration's validation accuracies from that table, reporting every
epoch `score` = the rule's value over the epochs so far (as `bmlr.tuning.trainable` does), so the
rule steers Optuna and ASHA and each rule has its own replays. Afterwards:

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
`--workers` runs replays in that many processes, each with its own local Ray instance of
`--concurrent` CPUs.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import yaml

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment banner per replayed study
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RULES = ("best", "last", "last-3", "smooth-3")
BUDGETS = (16, 48)
DEFAULT_RULE = "best"  # today's default: the rule the equal-cost comparison replays


# --- the tables: ground truth ---------------------------------------------------------------------
def table_meta(path: Path) -> dict[str, Any]:
    """The settings a grid table was trained with: `<table>.meta.json` beside a committed table,
    else `grid_meta.json` in its folder (bench_search.py's --out)."""
    path = Path(path)
    for meta in (path.with_suffix(".meta.json"), path.parent / "grid_meta.json"):
        if meta.is_file():
            return json.loads(meta.read_text())
    raise SystemExit(f"{path}: no {path.with_suffix('.meta.json').name} or grid_meta.json beside it")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A table's rows. A table still being written may end in a half-written line (no newline
    yet): that line is left out; any other line that is not JSON is an error."""
    text = Path(path).read_text()
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # the line being written
    return [json.loads(line) for line in lines if line.strip()]


def config_key(point: dict[str, Any], keys: Sequence[str]) -> str:
    """A configuration's name (as bench_search.point_key writes it, over the grid's keys)."""
    return "|".join(f"{k}={point[k]!r}" for k in keys)


@dataclass
class Grid:
    """Grid tables of one grid, one per training seed, over the configurations all of them hold."""

    keys: tuple[str, ...]  # the grid's keys, in the tables' order
    seeds: list[int]  # each table's training seed
    curves: list[dict[str, list[float]]]  # each table: configuration -> validation accuracy per epoch
    points: dict[str, dict[str, Any]]  # configuration -> its values
    epochs: int  # epochs per configuration (the production epochs of the grid)
    holes: list[str]  # configurations of the values' product that some table lacks (never scored)
    grid_size: int  # configurations of the grid its meta describes

    @property
    def n(self) -> int:
        return len(self.curves)

    def quality(self, key: str, tables: Sequence[int] | None = None) -> float:
        """The mean over `tables` (all by default) of the configuration's best validation accuracy."""
        chosen = range(self.n) if tables is None else tables
        return statistics.fmean(max(self.curves[t][key]) for t in chosen)

    @cached_property
    def best(self) -> tuple[str, float]:
        """The configuration with the best true quality (ties: the grid's order) and that quality."""
        key = max(self.points, key=lambda k: (self.quality(k), -list(self.points).index(k)))
        return key, self.quality(key)

    def regret(self, key: str) -> float:
        """q* - q(key), in points."""
        return 100 * (self.best[1] - self.quality(key))

    def values(self) -> dict[str, list[Any]]:
        """Each key's values among the configurations used, in the grid's order (the space searched)."""
        return {k: list(dict.fromkeys(p[k] for p in self.points.values())) for k in self.keys}

    def space(self):
        """The searched space as the product's SearchSpace (one choice entry per grid key)."""
        from bmlr.tuning.search_space_types import Param, SearchSpace

        return SearchSpace(params={k: Param(k, "choice", choices=tuple(v)) for k, v in self.values().items()},
                           fixed={}, source="grid tables")


def load_grid(paths: Sequence[Path], only: dict[str, Any] | None = None) -> Grid:
    """The tables, checked to be one grid (settings equal except the training seed, seeds
    distinct), restricted to the configurations all of them hold (at least one) and, with
    `only`, to those with these values (a sub-grid, e.g. of tables still being written)."""
    metas = [table_meta(p) for p in paths]
    rest = [{k: v for k, v in m.items() if k != "seed"} for m in metas]
    for path, r in zip(paths[1:], rest[1:]):
        if r != rest[0]:
            diff = sorted(k for k in set(r) | set(rest[0]) if r.get(k) != rest[0].get(k))
            raise SystemExit(f"{path} is not the grid of {paths[0]}: its {', '.join(diff)} differ")
    seeds = [int(m["seed"]) for m in metas]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"the tables' training seeds repeat: {seeds}")
    keys = tuple(metas[0]["grid"])
    rows = [read_rows(p) for p in paths]
    curves = [{config_key(r["point"], keys): [float(a) for a in r["val_acc"]] for r in t} for t in rows]
    points = {config_key(r["point"], keys): dict(r["point"]) for t in rows for r in t}
    common = [k for k in points if all(k in c for c in curves)
              and all(points[k].get(name) == value for name, value in (only or {}).items())]
    if not common:
        raise SystemExit(f"no configuration is in every table ({[len(c) for c in curves]} rows)")
    points = {k: points[k] for k in sorted(common, key=lambda k: _grid_order(points[k], metas[0]["grid"]))}
    epochs = int(metas[0]["epochs"])
    short = [k for k in points if any(len(c[k]) < epochs for c in curves)]
    if short:
        raise SystemExit(f"{len(short)} configurations have fewer than {epochs} epochs in some table, e.g. {short[0]}")
    curves = [{k: c[k] for k in points} for c in curves]  # a trial on any other fails, in every table
    grid = Grid(keys, seeds, curves, points, epochs, [], len(list(itertools.product(*metas[0]["grid"].values()))))
    product = [dict(zip(keys, v)) for v in itertools.product(*grid.values().values())]
    grid.holes = [config_key(p, keys) for p in product if config_key(p, keys) not in points]
    return grid


def _grid_order(point: dict[str, Any], grid: dict[str, list[Any]]) -> tuple[int, ...]:
    return tuple(grid[k].index(point[k]) for k in grid)


# --- one replayed study ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Replay:
    """What defines a replayed study (and names its cache file). The searcher and scheduler are
    built by the product's factories (`make_sampler(sampler)`, `make_scheduler(scheduler)`, as
    `bmlr.tuning.study` builds them for `--scheduler`); the defaults, TPE + ASHA with the
    settings' grace period, keep the name they always had (caches of before stay valid)."""

    rule: str
    samples: int
    seed: int  # the searcher's seed; the study trains with table seed % n
    sampler: str = "tpe"  # tpe | random (bmlr.tuning.ray_backend.make_sampler)
    scheduler: str = "asha"  # asha | hyperband | none (bmlr.tuning.search_space_types.SCHEDULERS)
    grace_period: int | None = None  # ASHA's / Hyperband's grace period; None: ReplaySettings'

    @property
    def name(self) -> str:
        strategy = "" if (self.sampler, self.scheduler) == ("tpe", "asha") else f"{self.sampler}-{self.scheduler}-"
        grace = "" if self.grace_period is None else f"-g{self.grace_period}"
        return f"{strategy}{self.rule}-n{self.samples}-s{self.seed}{grace}"


def replay_trial(config: dict[str, Any], curves: dict[str, list[float]], keys: Sequence[str], max_epochs: int,
                 score: str, sleep_s: float) -> None:
    """A trial that reports its configuration's measured validation accuracies one epoch at a time,
    with `score` = the rule over the epochs so far (as bmlr.tuning.trainable reports it). A
    configuration some table lacks (a partial grid) fails, as a diverged trial does: it never wins."""
    from ray import tune

    from bmlr.tuning.ray_backend import METRIC
    from bmlr.tuning.scores import VAL_ACC, parse_score

    rule = parse_score(score)
    key = config_key(config, keys)
    if key not in curves:
        raise LookupError(f"{key} is not in every table (a partial grid): nothing to replay")
    accs: list[float] = []
    for epoch, acc in enumerate(curves[key][:max_epochs], 1):
        accs.append(acc)
        time.sleep(sleep_s)
        tune.report({VAL_ACC: acc, "epoch": epoch, METRIC: rule.value(accs)})


@dataclass
class ReplaySettings:
    """How every study is replayed: ASHA's and TPE's settings (None: the study's defaults)."""

    max_epochs: int
    grace_period: int | None = None
    reduction_factor: int | None = None
    startup: int | None = None  # TPE's random start-up trials (None: the product's, Optuna's default)
    concurrent: int = 2
    sleep_s: float = 0.01

    def resolved(self) -> "ReplaySettings":
        from bmlr.tuning.plan import DEFAULT_GRACE_PERIOD, StudySettings

        d = StudySettings()  # grace: the code's default (a search space may say another: --grace-period)
        return ReplaySettings(self.max_epochs, self.grace_period or DEFAULT_GRACE_PERIOD,
                              self.reduction_factor or d.reduction_factor, self.startup, self.concurrent, self.sleep_s)


def run_replay(grid: Grid, replay: Replay, settings: ReplaySettings, storage: Path) -> dict[str, Any]:
    """One study through Ray Tune (Ray must be running); returns its record: the study's table
    and, per trial (in Ray's trial order), its configuration and the accuracies it reported.
    RuntimeError where Ray lost a trial (a replay is all or nothing: only whole ones are cached)."""
    import shutil

    from ray import cloudpickle

    from bmlr.tuning.ray_backend import build_tuner, make_sampler, make_scheduler, make_searcher, with_resources

    module = sys.modules[replay_trial.__module__]
    if module.__name__ != "__main__":  # imported from a file (tests, worker processes): ship by value
        cloudpickle.register_pickle_by_value(module)
    s = settings.resolved()
    table = replay.seed % grid.n
    start = time.perf_counter()
    trainable = with_resources(replay_trial, cpus=1, gpus=0, curves=grid.curves[table], keys=grid.keys,
                               max_epochs=s.max_epochs, score=replay.rule, sleep_s=s.sleep_s)
    searcher = make_searcher(grid.space().optuna_space(), make_sampler(replay.sampler, replay.seed, s.startup),
                             seed=replay.seed)
    scheduler = make_scheduler(replay.scheduler, max_t=s.max_epochs,
                               grace_period=replay.grace_period or s.grace_period, reduction_factor=s.reduction_factor)
    ray_dir = Path(tempfile.mkdtemp(prefix=f"{replay.name}-", dir=str(storage)))
    try:
        result_grid = build_tuner(trainable, ray_dir, searcher=searcher, scheduler=scheduler,
                                  num_samples=replay.samples, concurrent=s.concurrent, verbose=0).fit()
        trials = [_trial_record(result, grid.keys) for result in result_grid]  # in the order Ray created them
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    failed = [t for t in trials if t["error"] and config_key(t["config"], grid.keys) not in grid.holes]
    if failed or len(trials) != replay.samples:  # Ray itself failed (a replayed trial cannot): never cached
        raise RuntimeError(f"replay {replay.name}: {len(trials)} of {replay.samples} trials, {len(failed)} failed"
                           + (f" ({failed[0]['error']})" if failed else ""))
    return {"rule": replay.rule, "samples": replay.samples, "seed": replay.seed, "sampler": replay.sampler,
            "scheduler": replay.scheduler, "grace_period": replay.grace_period or s.grace_period, "table": table,
            "table_seed": grid.seeds[table], "seconds": time.perf_counter() - start, "trials": trials}


def _trial_record(result, keys: Sequence[str]) -> dict[str, Any]:
    from bmlr.tuning.scores import VAL_ACC

    df = result.metrics_dataframe
    accs = [] if df is None or not len(df) else [float(a) for a in df.sort_values("epoch")[VAL_ACC]]
    trial_id = Path(result.path).name.removeprefix("trial_")
    return {"trial_id": trial_id, "config": {k: result.config[k] for k in keys}, "val_acc": accs,
            "error": None if result.error is None else str(result.error).strip().splitlines()[-1][:300]}


# --- what the study exports: the product's rules on the replay's rows --------------------------------
def trial_rows(record: dict[str, Any], rule: str, max_epochs: int) -> list[dict[str, Any]]:
    """The replay's trials as trials.csv rows (`best_epoch` builds the score columns as the
    product does); a trial that reported nothing is a failed one (it never wins)."""
    from bmlr.tuning.results import best_epoch
    from bmlr.tuning.scores import VAL_ACC, parse_score

    rows = []
    for t in record["trials"]:
        n = len(t["val_acc"])
        status = "failed" if not n else "completed" if n >= max_epochs else "stopped_early"
        history = [{"epoch": e, VAL_ACC: a} for e, a in enumerate(t["val_acc"], 1)]
        row = {"trial_id": t["trial_id"], "status": status, "epochs": n, **best_epoch(history, parse_score(rule))}
        row.update({f"param.{k}": v for k, v in t["config"].items()})
        rows.append(row)
    return rows


def row_key(row: dict[str, Any], grid: Grid) -> str:
    return config_key({k: row[f"param.{k}"] for k in grid.keys}, grid.keys)


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


# --- running the replays: cached, in one or more processes ------------------------------------------
_WORKER: dict[str, Any] = {}


def _start_worker(paths: list[str], only: dict[str, Any], settings: ReplaySettings, out: str) -> None:
    from bmlr.tuning.ray_backend import init_ray, quiet_ray

    quiet_ray(0)
    init_ray(None, settings.concurrent, 0)
    _WORKER.update(grid=load_grid([Path(p) for p in paths], only), settings=settings, out=Path(out))


def _run_cached(replay: Replay) -> tuple[Replay, float]:
    """Run one replay in this worker and write its record to the cache; returns its seconds."""
    out = _WORKER["out"]
    storage = out / "ray"
    storage.mkdir(exist_ok=True)
    record = run_replay(_WORKER["grid"], replay, _WORKER["settings"], storage)
    path = cache_path(out, replay)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)
    return replay, record["seconds"]


def cache_path(out: Path, replay: Replay) -> Path:
    return out / "replays" / f"{replay.name}.json"


def run_all(replays: list[Replay], args, settings: ReplaySettings, out: Path) -> None:
    """Every replay not in the cache, in `--workers` processes (1: here), printing each one's time."""
    import ray

    workers = args.workers
    unique = list(dict.fromkeys(replays))
    todo = [r for r in unique if not cache_path(out, r).is_file()]
    if not todo:
        return
    (out / "replays").mkdir(parents=True, exist_ok=True)
    print(f"replaying {len(todo)} studies ({len(unique) - len(todo)} cached) in {workers} process(es)", flush=True)
    start = time.time()

    def done(i: int, replay: Replay, seconds: float) -> None:
        print(f"  [{i}/{len(todo)}] {replay.name}: {seconds:.1f}s (elapsed {time.time() - start:.0f}s)", flush=True)

    if workers <= 1:
        _start_worker(args.tables, args.only, settings, str(out))
        try:
            for i, replay in enumerate(todo, 1):
                done(i, *_run_cached(replay))
        finally:
            ray.shutdown()
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_start_worker,
                             initargs=(args.tables, args.only, settings, str(out))) as pool:
        futures = [pool.submit(_run_cached, r) for r in todo]
        for i, future in enumerate(as_completed(futures), 1):
            done(i, *future.result())


def load_record(out: Path, replay: Replay) -> dict[str, Any]:
    return json.loads(cache_path(out, replay).read_text())


def check_settings(out: Path, recorded: dict[str, Any]) -> None:
    """The cache belongs to one set of tables and replay settings; another set needs another --out."""
    path = out / "settings.json"
    if path.is_file() and json.loads(path.read_text()) != json.loads(json.dumps(recorded)):
        raise SystemExit(f"{out} holds replays of other tables or settings ({path}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recorded, indent=2))


# --- the measurement ---------------------------------------------------------------------------------
def measure(grid: Grid, args, out: Path) -> dict[str, Any]:
    """Every rule x budget x searcher seed replayed, the outcomes with and without confirmation,
    then today's default at the matched budgets; returns the summary's results part."""
    seeds = range(args.seeds)
    settings = ReplaySettings(args.max_epochs, args.grace_period, args.reduction_factor, args.startup,
                              args.concurrent, args.replay_sleep)
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


def describe(grid: Grid, paths: Sequence[str]) -> dict[str, Any]:
    """The grid's ground truth, printed: tables, configurations used, q* and the spread."""
    best_key, q_star = grid.best
    qualities = sorted((grid.quality(k) for k in grid.points), reverse=True)
    print(f"tables: {', '.join(f'{p} (seed {s})' for p, s in zip(paths, grid.seeds))}")
    print(f"configurations in every table: {len(grid.points)} of the grid's {grid.grid_size}"
          + (f"; {len(grid.holes)} of the searched values' product are missing from some table (a trial there fails)"
             if grid.holes else ""))
    print(f"q* = {q_star:.4f} ({best_key}); runner-up {100 * (q_star - qualities[1]):.2f} points below; "
          f"median configuration {100 * (q_star - statistics.median(qualities)):.2f} points below"
          if len(qualities) > 1 else f"q* = {q_star:.4f} ({best_key})")
    return {"tables": list(paths), "seeds": grid.seeds, "configurations": len(grid.points),
            "grid_size": grid.grid_size, "holes": grid.holes, "q_star": q_star, "best": best_key,
            "quality": {k: grid.quality(k) for k in grid.points}, "epochs": grid.epochs}


def add_replay_arguments(p: argparse.ArgumentParser) -> None:
    """How studies are replayed and over which configurations (this script's and bench_regret's)."""
    p.add_argument("--max-epochs", type=int, help="a trial's epochs at most (default: the grid's)")
    p.add_argument("--reduction-factor", type=int, help="ASHA's reduction factor (default: the study's)")
    p.add_argument("--startup", type=int, help="TPE's random start-up trials (default: the product's)")
    p.add_argument("--concurrent", type=int, default=2, help="trials at once in a study")
    p.add_argument("--replay-sleep", type=float, default=0.01, help="seconds a replayed epoch takes")
    p.add_argument("--workers", type=int, default=1, help="processes replaying studies (a Ray instance each)")
    p.add_argument("--only", nargs="+", default=[], metavar="KEY=VALUE",
                   help="use only the configurations with these values (a complete sub-grid of tables still "
                   "being written, e.g. alpha=0.5)")


def parse_replay_arguments(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The command line, `--only`'s KEY=VALUE items as a mapping (values parsed as YAML)."""
    args = p.parse_args(argv)
    args.only = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.only)}
    return args


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", nargs="+", required=True, help="grid tables of one grid, one per training seed")
    p.add_argument("--out", default="bench/results/winners", help="folder for the replay cache and the results")
    p.add_argument("--seeds", type=int, default=10, help="searcher seeds per rule and budget")
    p.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS), help="--samples of the studies")
    p.add_argument("--rules", nargs="+", default=list(RULES), help="trial score rules (bmlr.tuning.scores)")
    p.add_argument("--confirm", type=int, default=3, help="K: configurations the confirmation trains again")
    p.add_argument("--confirm-seeds", type=int, help="S: their new seeds (default: every other table)")
    p.add_argument("--matched-samples", type=int, help="today's default's trials at equal cost (default: "
                   "N + the trials the confirmation's epochs buy)")
    p.add_argument("--match-rounds", type=int, default=2, help="replays of today's default to match the "
                   "confirmation's cost: the first M, then corrections (see match_default)")
    p.add_argument("--grace-period", type=int, help="ASHA's grace period (default: the study's)")
    add_replay_arguments(p)
    args = parse_replay_arguments(p, argv)
    from bmlr.tuning.scores import parse_score

    for rule in args.rules:
        parse_score(rule)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    grid = load_grid([Path(t) for t in args.tables], args.only)
    args.tables = [str(Path(t).resolve()) for t in args.tables]
    args.max_epochs = args.max_epochs or grid.epochs
    args.confirm_seeds = args.confirm_seeds or grid.n - 1
    confirmation_tables(grid, 0, args.confirm_seeds)  # checks S against the tables
    truth = describe(grid, args.tables)
    check_settings(out, {"tables": args.tables, "only": args.only, "configurations": sorted(grid.points),
                         "max_epochs": args.max_epochs, "grace_period": args.grace_period,
                         "reduction_factor": args.reduction_factor,
                         "startup": args.startup, "concurrent": args.concurrent})
    start = time.time()
    results = measure(grid, args, out)
    table = markdown(results)
    print("\n" + table)
    secs = list(results["replay_seconds"].values())
    print(f"\n{len(secs)} replays, median {statistics.median(secs):.1f}s each; this run {time.time() - start:.0f}s")
    summary = {"truth": truth, **results, "settings": {k: v for k, v in vars(args).items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "results.md").write_text(table + "\n")
    print(f"numbers: {out / 'summary.json'}; table: {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
