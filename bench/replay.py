"""The grid tables and the replay harness of the search benchmarks (bench_search.py,
bench_winners.py, bench_regret.py).

Grid tables: `bench_search.py` trains every configuration of a grid and writes one JSON line per
configuration (its `point`, the validation metrics of every epoch) to `grid.jsonl`, its settings
to `grid_meta.json` (a committed table: `<table>.meta.json` beside it). Tables of one grid, one per
training seed, are the ground truth (:class:`Grid`): a configuration's true quality q(c) is its
best validation accuracy over all epochs (the production protocol), averaged over the tables;
q* = max_c q(c); the regret of a configuration is q* - q(c), in points.

A replayed study runs through real Ray Tune, built by the product's own factories
(`bmlr.tuning.ray_backend`: `make_sampler`, `make_searcher`, `make_scheduler`, `with_resources`,
`build_tuner`) over the grid as the product's `grid_space`: each trial reports, epoch by epoch,
what a table recorded for its configuration, with `score` by default the trial score rule's value
over the epochs so far (as `bmlr.tuning.trainable` reports it). A configuration some table lacks
fails, as a diverged trial does. The study exports what the product would: rows built by
`bmlr.tuning.results.best_epoch`, the winner `bmlr.tuning.selection.choose_best`. Replays of a
`Grid` are cached in `--out`/replays/ and run in `--workers` processes, each with its own local Ray
instance of `--concurrent` CPUs.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
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
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# --- grid tables ----------------------------------------------------------------------------------
def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every configuration of a grid (key -> values), in the grid's order."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def point_key(point: dict[str, Any], keys: Sequence[str] | None = None) -> str:
    """A configuration's name over the grid's `keys` (default: the point's own, in order)."""
    return "|".join(f"{k}={point[k]!r}" for k in (keys or point))


def table_meta(path: Path) -> dict[str, Any]:
    """The settings a grid table was trained with: `<table>.meta.json` beside a committed table,
    else `grid_meta.json` in its folder (bench_search.py's --out)."""
    path = Path(path)
    for meta in (path.with_suffix(".meta.json"), path.parent / "grid_meta.json"):
        if meta.is_file():
            return json.loads(meta.read_text())
    raise SystemExit(f"{path}: no {path.with_suffix('.meta.json').name} or grid_meta.json beside it")


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
        """The searched space as the product builds a grid's (`grid_space`: a choice per key)."""
        from bmlr.tuning.search_space import grid_space

        return grid_space(self.values(), {}, "grid tables")


def load_grid(paths: Sequence[Path], only: dict[str, Any] | None = None) -> Grid:
    """The tables, checked to be one grid (settings equal except the training seed, seeds
    distinct), restricted to the configurations all of them hold (at least one) and, with
    `only`, to those with these values (a sub-grid, e.g. of tables still being written). A line
    still being written (or cut off) is left out."""
    from bmlr.tuning.store import read_json_lines

    metas = [table_meta(p) for p in paths]
    rest = [{k: v for k, v in m.items() if k != "seed"} for m in metas]
    for path, r in zip(paths[1:], rest[1:]):
        if r != rest[0]:
            diff = sorted(k for k in set(r) | set(rest[0]) if r.get(k) != rest[0].get(k))
            raise SystemExit(f"{path} is not the grid of {paths[0]}: its {', '.join(diff)} differ")
    seeds = [int(m["seed"]) for m in metas]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"the tables' training seeds repeat: {seeds}")
    values, epochs = metas[0]["grid"], int(metas[0]["epochs"])
    keys = tuple(values)
    rows = [read_json_lines(Path(p)) for p in paths]
    curves = [{point_key(r["point"], keys): [float(a) for a in r["val_acc"]] for r in t} for t in rows]
    points = {point_key(r["point"], keys): dict(r["point"]) for t in rows for r in t}
    order = {point_key(p, keys): i for i, p in enumerate(grid_points(values))}
    common = sorted((k for k in points if all(k in c for c in curves)
                     and all(points[k].get(name) == value for name, value in (only or {}).items())), key=order.get)
    if not common:
        raise SystemExit(f"no configuration is in every table ({[len(c) for c in curves]} rows)")
    short = [k for k in common if any(len(c[k]) < epochs for c in curves)]
    if short:
        raise SystemExit(f"{len(short)} configurations have fewer than {epochs} epochs in some table, e.g. {short[0]}")
    # a trial on any other configuration fails, in every table
    grid = Grid(keys, seeds, [{k: c[k] for k in common} for c in curves], {k: points[k] for k in common}, epochs,
                [], len(order))
    grid.holes = [k for k in map(point_key, grid_points(grid.values())) if k not in grid.points]
    return grid


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


# --- one replayed study ---------------------------------------------------------------------------
def replay_trial(config: dict[str, Any], reports: dict[str, list[dict[str, float]]], keys: Sequence[str],
                 sleep_s: float) -> None:
    """A trial that reports what the table recorded for its configuration (`reports`: per epoch
    the metrics), one epoch at a time, with the time of each report (`t`)."""
    from ray import tune

    key = point_key(config, keys)
    if key not in reports:
        raise LookupError(f"{key} is not in every table (a partial grid): nothing to replay")
    for epoch, metrics in enumerate(reports[key], 1):
        time.sleep(sleep_s)
        tune.report({**metrics, "epoch": epoch, "t": time.time()})


def replay_study(reports: dict[str, list[dict[str, float]]], space, sampler, scheduler, samples: int,
                 concurrent: int, sleep_s: float, storage: Path, name: str, metric: str | None = None):
    """One study through Ray Tune (Ray must be running) over `space` (a grid's `SearchSpace`),
    Optuna learning from `metric` (default the product's, "score"); returns per trial, in the
    order Ray created them, its configuration, the validation accuracies it reported, their
    times and its error."""
    from ray import cloudpickle

    from bmlr.tuning.ray_backend import METRIC, build_tuner, make_searcher, with_resources

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers do not import bench/
    keys = tuple(space.params)
    trainable = with_resources(replay_trial, cpus=1, gpus=0, reports=reports, keys=keys, sleep_s=sleep_s)
    searcher = make_searcher(space.optuna_space(), sampler, metric=metric or METRIC)
    ray_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=str(storage)))
    try:
        results = build_tuner(trainable, ray_dir, searcher=searcher, scheduler=scheduler, num_samples=samples,
                              concurrent=concurrent, verbose=0).fit()
        return [trial_record(result, keys) for result in results]  # in the order Ray created them
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)


def trial_record(result, keys: Sequence[str]) -> dict[str, Any]:
    from bmlr.tuning.scores import VAL_ACC

    df = result.metrics_dataframe
    df = None if df is None or not len(df) else df.sort_values("epoch")
    return {"trial_id": Path(result.path).name.removeprefix("trial_"), "config": {k: result.config[k] for k in keys},
            "val_acc": [] if df is None else [float(a) for a in df[VAL_ACC]],
            "t": [] if df is None else [float(t) for t in df["t"]],
            "error": None if result.error is None else str(result.error).strip().splitlines()[-1][:300]}


@dataclass(frozen=True)
class Replay:
    """What defines a replayed study of a `Grid` (and names its cache file): the searcher and
    scheduler the product's factories build (`make_sampler(sampler)`, `make_scheduler(scheduler)`,
    as a study builds them for `--scheduler`); the defaults, TPE + ASHA with the settings' grace
    period, keep the name they always had: since 2026-12-07 that default is "auto" (measured,
    bmlr.tuning.calibrated_asha), so replays cached before it under a name without `-g` (grace 1)
    must be deleted."""

    rule: str  # the trial score rule (bmlr.tuning.scores): the score each trial reports
    samples: int
    seed: int  # the searcher's seed; the study trains with table seed % n
    sampler: str = "tpe"  # tpe | random
    scheduler: str = "asha"  # asha | hyperband | none (bmlr.tuning.ray_backend.SCHEDULERS)
    grace_period: int | str | None = None  # ASHA's / Hyperband's grace period (or "auto"); None: ReplaySettings'

    @property
    def name(self) -> str:
        strategy = "" if (self.sampler, self.scheduler) == ("tpe", "asha") else f"{self.sampler}-{self.scheduler}-"
        grace = "" if self.grace_period is None else f"-g{self.grace_period}"
        return f"{strategy}{self.rule}-n{self.samples}-s{self.seed}{grace}"


@dataclass
class ReplaySettings:
    """How every study is replayed: ASHA's and TPE's settings (None: the study's defaults)."""

    max_epochs: int
    grace_period: int | str | None = None
    reduction_factor: int | None = None
    startup: int | None = None  # TPE's random start-up trials (None: the product's, Optuna's default)
    concurrent: int = 2
    sleep_s: float = 0.01

    def resolved(self) -> "ReplaySettings":
        from bmlr.tuning.plan import DEFAULT_GRACE_PERIOD, StudySettings

        d = StudySettings()  # grace: the code's default (a search space may say another: --grace-period)
        return ReplaySettings(self.max_epochs, self.grace_period or DEFAULT_GRACE_PERIOD,
                              self.reduction_factor or d.reduction_factor, self.startup, self.concurrent, self.sleep_s)


def score_reports(curves: dict[str, list[float]], rule: str, max_epochs: int) -> dict[str, list[dict[str, float]]]:
    """Per configuration and epoch (at most `max_epochs`) what a trial reports: its validation
    accuracy and `score`, the rule's value over the epochs so far (as bmlr.tuning.trainable)."""
    from bmlr.tuning.ray_backend import METRIC
    from bmlr.tuning.scores import VAL_ACC, parse_score

    value = parse_score(rule).value
    return {k: [{VAL_ACC: a, METRIC: value(c[:e])} for e, a in enumerate(c[:max_epochs], 1)] for k, c in curves.items()}


def run_replay(grid: Grid, replay: Replay, settings: ReplaySettings, storage: Path) -> dict[str, Any]:
    """One study of `grid` (Ray must be running); returns its record: the study's table and its
    trials. RuntimeError where Ray lost a trial (a replay is all or nothing: only whole ones are
    cached)."""
    from bmlr.tuning.ray_backend import make_sampler, make_scheduler

    s = settings.resolved()
    table, grace = replay.seed % grid.n, replay.grace_period or s.grace_period
    start = time.perf_counter()
    trials = replay_study(score_reports(grid.curves[table], replay.rule, s.max_epochs), grid.space(),
                          make_sampler(replay.sampler, replay.seed, s.startup),
                          make_scheduler(replay.scheduler, max_t=s.max_epochs, grace_period=grace,
                                         reduction_factor=s.reduction_factor),
                          replay.samples, s.concurrent, s.sleep_s, storage, replay.name)
    failed = [t for t in trials if t["error"] and point_key(t["config"], grid.keys) not in grid.holes]
    if failed or len(trials) != replay.samples:  # Ray itself failed (a replayed trial cannot): never cached
        raise RuntimeError(f"replay {replay.name}: {len(trials)} of {replay.samples} trials, {len(failed)} failed"
                           + (f" ({failed[0]['error']})" if failed else ""))
    return {"rule": replay.rule, "samples": replay.samples, "seed": replay.seed, "sampler": replay.sampler,
            "scheduler": replay.scheduler, "grace_period": grace, "table": table,
            "table_seed": grid.seeds[table], "seconds": time.perf_counter() - start, "trials": trials}


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
    return point_key({k: row[f"param.{k}"] for k in grid.keys}, grid.keys)


# --- running the replays: cached, in one or more processes ------------------------------------------
_WORKER: dict[str, Any] = {}


def _start_worker(paths: list[str], only: dict[str, Any], settings: ReplaySettings, out: str) -> None:
    from bmlr.tuning.ray_backend import init_ray, quiet_ray

    quiet_ray(0)
    init_ray(None, settings.concurrent, 0)
    _WORKER.update(grid=load_grid([Path(p) for p in paths], only), settings=settings, out=Path(out))


def _run_cached(replay: Replay) -> tuple[Replay, float]:
    """Run one replay in this worker and write its record to the cache; returns its seconds."""
    from bmlr.fileio import atomic_write_text

    out = _WORKER["out"]
    (out / "ray").mkdir(exist_ok=True)
    record = run_replay(_WORKER["grid"], replay, _WORKER["settings"], out / "ray")
    atomic_write_text(cache_path(out, replay), json.dumps(record))
    return replay, record["seconds"]


def cache_path(out: Path, replay: Replay) -> Path:
    return out / "replays" / f"{replay.name}.json"


def load_record(out: Path, replay: Replay) -> dict[str, Any]:
    return json.loads(cache_path(out, replay).read_text())


def run_all(replays: list[Replay], args, settings: ReplaySettings, out: Path) -> None:
    """Every replay not in the cache, in `--workers` processes, printing each one's time."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    unique = list(dict.fromkeys(replays))
    todo = [r for r in unique if not cache_path(out, r).is_file()]
    if not todo:
        return
    (out / "replays").mkdir(parents=True, exist_ok=True)
    print(f"replaying {len(todo)} studies ({len(unique) - len(todo)} cached) in {args.workers} process(es)", flush=True)
    start = time.time()
    with ProcessPoolExecutor(max(args.workers, 1), mp_context=mp.get_context("spawn"), initializer=_start_worker,
                             initargs=(args.tables, args.only, settings, str(out))) as pool:
        futures = [pool.submit(_run_cached, r) for r in todo]
        for i, future in enumerate(as_completed(futures), 1):
            replay, seconds = future.result()
            print(f"  [{i}/{len(todo)}] {replay.name}: {seconds:.1f}s (elapsed {time.time() - start:.0f}s)", flush=True)


# --- the command line of bench_winners.py and bench_regret.py -----------------------------------------
def add_replay_arguments(p: argparse.ArgumentParser, out: str | None) -> None:
    """The tables, how studies are replayed and over which configurations (`out`: --out's default)."""
    p.add_argument("--tables", nargs="+", required=True, help="grid tables of one grid, one per training seed")
    p.add_argument("--out", default=out, help="folder for the replay cache and the results")
    p.add_argument("--seeds", type=int, default=10, help="searcher seeds per setting")
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


def open_replays(args: argparse.Namespace, grace_period: int | None) -> tuple[Grid, dict[str, Any], ReplaySettings]:
    """The grid of `--tables` (printed), `--max-epochs` resolved, the tables' paths made
    absolute, and the cache in `--out` checked to belong to these tables and settings (another
    set needs another --out). Returns the grid, its ground truth and the replay settings."""
    grid = load_grid([Path(t) for t in args.tables], args.only)
    args.tables = [str(Path(t).resolve()) for t in args.tables]
    args.max_epochs = args.max_epochs or grid.epochs
    truth = describe(grid, args.tables)
    settings = ReplaySettings(args.max_epochs, grace_period, args.reduction_factor, args.startup, args.concurrent,
                              args.replay_sleep)
    recorded = {"tables": args.tables, "only": args.only, "configurations": sorted(grid.points),
                "max_epochs": args.max_epochs, "grace_period": grace_period,
                "reduction_factor": args.reduction_factor, "startup": args.startup, "concurrent": args.concurrent}
    claim(Path(args.out).resolve() / "settings.json", recorded, "replays of other tables or settings")
    return grid, truth, settings


def claim(path: Path, settings: dict[str, Any], other: str) -> None:
    """Record in `path` the settings its folder's results belong to; SystemExit where it holds
    `other` (results of other settings): those need another --out."""
    if path.is_file() and json.loads(path.read_text()) != json.loads(json.dumps(settings)):
        raise SystemExit(f"{path.parent} holds {other} ({path}); choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2))
