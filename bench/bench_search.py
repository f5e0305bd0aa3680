"""Search efficiency on the synthetic default: Optuna TPE + ASHA vs random search (no early
stopping) vs the exhaustive grid, as best validation accuracy against cumulative training epochs.

Three phases, each reusing what the one before wrote to `--out`:

1. **grid** (real training): every point of the grid (`GRIDS`) trained for `--epochs` epochs
   with the study seed, in `--workers` processes of one torch thread each, by `Trainer.fit`
   exactly as a study's trial trains (the schedule of the production epochs). Every epoch's
   validation metrics go to `grid.jsonl` (resumable). `--dataset synthetic` (the default): alpha
   {0.5, 1, 2} x beta {0.1, 0.3, 0.5, 0.7} x lr {1e-3, 3e-3} x fusion {concat, sum} (48
   configurations) on the synthetic data of version v2 (the default before issue 14) with the
   tiny model of `search_spaces/synthetic.yaml`. With `--grid-only`, `--dataset avmnist` trains
   24 configurations (alpha {0.5, 2} x beta {0.1, 0.5} x lr {1e-3, 3e-3, 1e-2} x fusion) on the
   harder `configs/avmnist-hard.yaml` (540 training clips, 10-pixel images, 2,160 validation
   clips; `--data-root`, default ../shared/data), `--dataset synthetic-v3` the same 24 on the
   synthetic default (data v3, its own 720-clip validation split) for its 20 production epochs;
   their replays are bench_winners.py's and bench_regret.py's.
2. **replay** (no training): TPE + ASHA and random search through real Ray Tune, built by the
   product's own factories (bench/replay.py), `--concurrent` trials at once over the *same 48
   configurations*, each trial replaying the epochs the grid phase measured for it. That makes
   many searcher seeds cheap, so the numbers are medians over `--seeds` runs, and the ASHA / TPE
   defaults can be swept (`--sweep`).
3. **live** (real training, optional `--live`): the study exactly as a user runs it
   (`bmlr.tuning.study.run_study` with the CLI's defaults) on the shipped *continuous* search
   space `search_spaces/synthetic.yaml`, `--live-samples` trials of at most `--epochs` epochs;
   cumulative epochs are read back from the trials' `result.json`.

Printed for each strategy: the cumulative epochs needed until the best validation accuracy so
far is within `--tolerance` (1 point) of the grid's best, as a ratio to the grid's total epochs
(48 x epochs). The curve goes to `search_efficiency.png`, all numbers to `summary.json`.

    python bench/bench_search.py --out bench/results/search              # grid + replay
    python bench/bench_search.py --out bench/results/search --live       # + one real TPE+ASHA study
    python bench/bench_search.py --out bench/results/search --sweep      # + ASHA/TPE default sweep

Epochs, not seconds, are the unit: they are what a GPU cluster bills, and they do not depend on
the noise of a shared machine.
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
from functools import partial
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import ROOT, claim, grid_points, point_key, replay_study  # noqa: E402  (Ray's environment first)

GRID = {"alpha": [0.5, 1.0, 2.0], "beta": [0.1, 0.3, 0.5, 0.7], "lr": [1.0e-3, 3.0e-3],
        "fusion": ["concat", "sum"]}
# the grid of each data set (`--dataset`); AV-MNIST's is trained on configs/avmnist-hard.yaml,
# where lr moves validation accuracy over 35 points (clean AV-MNIST saturates at 99 %)
# 24 configurations with lr up to 1e-2, AV-MNIST's grid and the synthetic default's (data v3, issue 14)
GRID_24 = {"alpha": [0.5, 2.0], "beta": [0.1, 0.5], "lr": [1.0e-3, 3.0e-3, 1.0e-2], "fusion": ["concat", "sum"]}
# the large grid (issue 28): 360 configurations of scikit-learn's digits as two feature views (the
# top and bottom halves, bench/panel.py) with search_spaces/manifest.yaml's model; five keys, weight
# decay the one the shipped space does not search
GRID_DIGITS = {"alpha": [0.25, 1.0, 4.0], "beta": [0.05, 0.35, 0.65, 0.95],
               "lr": [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2], "fusion": ["concat", "sum"],
               "weight_decay": [0.0, 1.0e-3, 1.0e-2]}
GRIDS = {"synthetic": GRID, "avmnist": GRID_24, "synthetic-v3": GRID_24, "digits": GRID_DIGITS}
AVMNIST_CONFIG = ROOT / "configs" / "avmnist-hard.yaml"
MANIFEST_SPACE = ROOT / "search_spaces" / "manifest.yaml"
# the generator version of each synthetic grid (bmlr.data.synthetic.VERSIONS): "synthetic" is the
# recorded v2 grid (bench/data/search-grid-synthetic-v2-*), kept reproducible by name
SYNTHETIC_VERSIONS = {"synthetic": "v2", "synthetic-v3": "v3"}


def own_validation(dataset: str) -> bool:
    """Whether the synthetic data version of `dataset`'s grid writes its own validation split
    (val.csv), so that `--val-fraction` and `--val-per-class` do not apply."""
    from bmlr.data.synthetic import VERSIONS

    return dataset in SYNTHETIC_VERSIONS and VERSIONS[SYNTHETIC_VERSIONS[dataset]].n_val_per_class > 0


def data_overrides(args) -> dict[str, Any]:
    """Where the benchmark's data come from. With `--val-per-class` the synthetic generator writes
    more clips per class and the validation split takes the extra ones, so the training split keeps
    the default's size (80 clips per class) while validation is measured on many more clips: with
    the default's 20 per class (120 clips) one clip is 0.8 points and the standard error of an
    accuracy near 85 % is about 3 points, more than the 1-point target the benchmark measures."""
    version = SYNTHETIC_VERSIONS[args.dataset]
    out: dict[str, Any] = {"val_fraction": args.val_fraction, "device": "cpu", "threads": 1,
                           "data_version": version}
    if args.cache_dir:
        out["cache_dir"] = str(Path(args.cache_dir).resolve())
    if args.val_per_class:
        from bmlr.config import from_dict
        from bmlr.data.cache import cache_root
        from bmlr.data.synthetic import VERSIONS, ensure_synthetic

        train_per_class = round(VERSIONS[version].n_train_per_class * (1 - args.val_fraction))
        per_class = train_per_class + args.val_per_class
        root = ensure_synthetic(cache_root(from_dict(out)), seed=0, version=version,
                                n_train_per_class=per_class)
        out.update(data_root=str(root), val_fraction=args.val_per_class / per_class)
    return out


def base_config(args) -> dict[str, Any]:
    """The synthetic default's fixed part (search_spaces/synthetic.yaml), one seed, one thread,
    as a study's trial has it: its `epochs` the production run's (the schedule's horizon; or
    `--horizon`), stretched to `--epochs` where that budget is longer."""
    from bmlr.config import from_dict, load_config

    if args.dataset == "avmnist":
        fixed = {**load_config(AVMNIST_CONFIG).to_dict(), "seeds": [args.seed], "device": "cpu", "threads": 1,
                 "data_root": str(Path(args.data_root).resolve())}
    elif args.dataset == "digits":  # the manifest space's fixed part, the data written under --out
        from panel import build

        fixed = {**space_fixed(MANIFEST_SPACE), "dataset": "manifest", "seeds": [args.seed], "device": "cpu",
                 "threads": 1, "val_fraction": args.val_fraction, "data_root": str(build("digits", Path(args.out)))}
        if args.cache_dir:
            fixed["cache_dir"] = str(Path(args.cache_dir).resolve())
    else:
        fixed = {**space_fixed(), "seeds": [args.seed], **data_overrides(args)}
    fixed["epochs"] = max(args.horizon or int(fixed["epochs"]), args.epochs)
    return from_dict(fixed).to_dict()


def space_fixed(path: Path = ROOT / "search_spaces" / "synthetic.yaml") -> dict[str, Any]:
    """The fixed part of a shipped search space (default: the synthetic one)."""
    from bmlr.tuning.search_space import load_search_space

    return dict(load_search_space(path).fixed)


# --- phase 1: the grid, really trained ----------------------------------------------------------
_WORKER: dict[str, Any] = {}
# per-epoch validation metrics kept in the table: val_acc is what the searches see; the others
# tell whether an earlier signal would rank the configurations better (rank_agreement); each
# modality's own accuracy (val_acc_<modality>) is kept whatever the modalities are called
RECORDED = ("val_acc", "val_loss", "val_acc_audio", "val_acc_visual", "val_macro_f1")


def _init_worker(base: dict[str, Any]) -> None:
    import torch

    from bmlr.config import from_dict
    from bmlr.data import build_datasets

    torch.set_num_threads(1)
    _WORKER["base"] = base
    _WORKER["data"] = build_datasets(from_dict(base))


def _train_point(point: dict[str, Any], epochs: int) -> dict[str, Any]:
    """One grid configuration trained `epochs` epochs (`Trainer.fit`, as a trial trains)."""
    from bmlr.config import from_dict
    from bmlr.engine import Trainer

    cfg = from_dict({**_WORKER["base"], **point})
    start = time.perf_counter()
    trainer = Trainer(cfg, seed=cfg.seeds[0], data=_WORKER["data"], device=None)
    ends = [time.perf_counter()]
    history = trainer.fit(epochs, on_epoch=lambda metrics: ends.append(time.perf_counter()))
    modalities = tuple(k for k in history[-1] if k.startswith("val_acc_") and k not in RECORDED)  # e.g. val_acc_top
    curves = {name: [float(m[name]) for m in history if name in m] for name in (*RECORDED, *modalities)}
    return {"key": point_key(point), "point": point, **{k: v for k, v in curves.items() if v},
            "epoch_seconds": [b - a for a, b in zip(ends, ends[1:])], "seconds": time.perf_counter() - start}


def run_grid(args, out: Path) -> dict[str, dict[str, Any]]:
    import multiprocessing as mp

    from bmlr.config import from_dict
    from bmlr.data import build_datasets
    from bmlr.tuning.store import read_json_lines

    path = out / "grid.jsonl"
    if args.table and not path.exists():  # a grid measured before (e.g. the committed one)
        import shutil

        shutil.copyfile(args.table, path)
        shutil.copyfile(Path(args.table).with_suffix(".meta.json"), out / "grid_meta.json")
    base = base_config(args)
    grid = GRIDS[args.dataset]
    meta = grid_meta(args, grid)
    if base["epochs"] != args.epochs:  # tables without it were trained on a horizon of `epochs`
        meta["horizon"] = base["epochs"]
    if args.val_per_class:
        meta["val_per_class"] = args.val_per_class
    claim(out / "grid_meta.json", meta, "a grid of other settings")
    done = {row["key"]: row for row in read_json_lines(path)}
    todo = [p for p in grid_points(grid) if point_key(p) not in done]
    if not todo:
        return done
    build_datasets(from_dict(base))  # prepare the cache once, before the workers read it
    print(f"grid: training {len(todo)} of {len(grid_points(grid))} configurations x {args.epochs} epochs "
          f"in {args.workers} processes", flush=True)
    start = time.time()
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers, initializer=_init_worker, initargs=(base,)) as pool, path.open("a") as f:
        for i, row in enumerate(pool.imap_unordered(partial(_train_point, epochs=args.epochs), todo), 1):
            f.write(json.dumps(row) + "\n")
            f.flush()
            done[row["key"]] = row
            print(f"  [{i}/{len(todo)}] {row['key']}  best val {max(row['val_acc']):.3f}  "
                  f"{row['seconds']:.0f}s  (elapsed {time.time() - start:.0f}s)", flush=True)
    return done


def grid_meta(args, grid: dict[str, list[Any]]) -> dict[str, Any]:
    """The settings a table is trained with (its grid_meta.json; a rerun must match them)."""
    if args.dataset == "avmnist":
        return {"dataset": "avmnist", "config": str(AVMNIST_CONFIG.relative_to(ROOT)), "epochs": args.epochs,
                "seed": args.seed, "grid": grid}
    if args.dataset == "digits":
        return {"dataset": "digits", "space": str(MANIFEST_SPACE.relative_to(ROOT)), "epochs": args.epochs,
                "seed": args.seed, "val_fraction": args.val_fraction, "grid": grid}
    meta = {"epochs": args.epochs, "seed": args.seed, "val_fraction": args.val_fraction, "grid": grid,
            "synthetic_version": SYNTHETIC_VERSIONS[args.dataset]}
    if args.dataset != "synthetic":
        meta["dataset"] = args.dataset
    if own_validation(args.dataset):  # validated on its own val.csv: val_fraction is unused
        meta["val_fraction"] = None
    return meta


# --- curves -------------------------------------------------------------------------------------
def best_so_far(values: list[float]) -> list[float]:
    return list(itertools.accumulate(values, max))


def epochs_to_target(curve: list[float], target: float) -> int | None:
    """1-based cumulative epoch at which the best-so-far curve reaches `target` (None: never)."""
    return next((i for i, v in enumerate(curve, 1) if v >= target - 1e-9), None)


def grid_curve(table: dict[str, dict[str, Any]]) -> list[float]:
    """The grid in enumeration order, one configuration after the other (as run one at a time)."""
    return best_so_far([v for p in grid_points(GRID) for v in table[point_key(p)]["val_acc"]])


def epoch_noise(table: dict[str, dict[str, Any]], best_key: str) -> dict[str, float]:
    """How much a configuration's validation accuracy moves from one epoch to the next (second half
    of training, median over all configurations), and how far the best configuration's best epoch
    stands above its own last-5-epoch mean: the part of "the grid's best" that is one lucky pass."""
    steps = []
    for row in table.values():
        acc = row["val_acc"]
        half = acc[len(acc) // 2:]
        steps += [abs(b - a) for a, b in zip(half, half[1:])]
    best = table[best_key]["val_acc"]
    return {"median_step": statistics.median(steps) if steps else 0.0,
            "best_above_own_tail": max(best) - statistics.mean(best[-5:])}


def rank_agreement(table: dict[str, dict[str, Any]], epochs: int, signal: str = "val_acc") -> dict[int, float | None]:
    """How well a signal at epoch k ranks the grid's configurations as their best validation
    accuracy (over the first `epochs`) does: the product's rung check
    (`bmlr.tuning.rung_check.rank_agreement`, Spearman; None where a ranking is undefined) on each
    configuration's signal with that best appended as its end. Signals: a recorded metric (a loss
    counts negated), or "best_val_acc" (the best accuracy up to epoch k, what a trial has shown)."""
    from bmlr.tuning.rung_check import rank_agreement as rung_agreement

    curves = []
    for row in table.values():
        values = best_so_far(row["val_acc"]) if signal == "best_val_acc" else row[signal]
        sign = -1 if signal.endswith("loss") else 1
        curves.append([sign * v for v in values[:epochs]] + [max(row["val_acc"][:epochs])])
    return {a.epoch: a.rho for a in rung_agreement(curves, range(1, epochs + 1))}


def rho_text(rho: float | None) -> str:
    return "undefined" if rho is None else f"{rho:+.2f}"


# --- phase 2: replays through Ray Tune ---------------------------------------------------------
SIGNALS = ("val_acc", "best_val_acc", "val_acc_weakest", "val_acc_visual", "val_loss")


def epoch_signals(row: dict[str, Any]) -> list[dict[str, float]]:
    """Per epoch, what a replayed trial reports: the recorded metrics, the best accuracy so far and
    the weakest modality's accuracy (min over the unimodal accuracies)."""
    out = []
    for e, best in enumerate(best_so_far(row["val_acc"])):
        metrics = {m: row[m][e] for m in row if m in RECORDED or m.startswith("val_acc_")}
        metrics["best_val_acc"] = best
        unimodal = [v for k, v in metrics.items() if k.startswith("val_acc_")]
        if unimodal:
            metrics["val_acc_weakest"] = min(unimodal)
        out.append(metrics)
    return out


def run_replay(table: dict[str, dict[str, Any]], strategy: str, seed: int, args, storage: Path,
               samples: int, grace: int = 1, reduction: int = 3, startup: int = 10,
               signal: str = "val_acc", objective: str = "val_acc") -> list[float]:
    """One search over the 48 configurations (bench/replay.py's replay_study); returns the
    best-so-far curve of validation accuracy over cumulative epochs. ASHA's rungs compare
    `signal` (the trials' score; a loss negated), Optuna learns from `objective` (the product
    uses val_acc for both)."""
    from bmlr.tuning.ray_backend import METRIC, make_sampler, make_scheduler
    from bmlr.tuning.search_space import grid_space

    sign = -1 if signal.endswith("loss") else 1
    reports = {k: [{**m, METRIC: sign * m[signal]} for m in epoch_signals(row)] for k, row in table.items()}
    if strategy == "tpe_asha":
        sampler = make_sampler("tpe", seed, n_startup_trials=startup)
        scheduler = make_scheduler("asha", max_t=args.epochs, grace_period=grace, reduction_factor=reduction)
    elif strategy == "random":
        sampler, scheduler = make_sampler("random", seed), make_scheduler("none")
    else:
        raise ValueError(strategy)
    name = f"{strategy}-s{seed}-g{grace}-r{reduction}-n{startup}-{signal}-{objective}"
    trials = replay_study(reports, grid_space(GRID, {}, "bench_search's grid"), sampler, scheduler, samples,
                          args.concurrent, args.replay_sleep, storage, name, metric=objective)
    timed = sorted((t, acc) for trial in trials for t, acc in zip(trial["t"], trial["val_acc"]))
    return best_so_far([acc for _, acc in timed])  # the epochs in the order the study trained them


def summarise(curves: list[list[float]], target: float, grid_total: int) -> dict[str, Any]:
    hits = [epochs_to_target(c, target) for c in curves]
    reached = [h for h in hits if h is not None]
    return {"runs": len(curves), "reached": len(reached),
            "within_quarter": sum(1 for h in reached if h <= grid_total / 4),
            "epochs_to_target": hits,
            "median_ratio": statistics.median(reached) / grid_total if len(reached) == len(curves) else None,
            "max_ratio": max(reached) / grid_total if reached and len(reached) == len(curves) else None,
            "ratios": [None if h is None else h / grid_total for h in hits],
            "total_epochs": [len(c) for c in curves],
            "final_best": [c[-1] if c else None for c in curves],
            "curves": curves}


# --- phase 3: a real study ---------------------------------------------------------------------
def run_live(args, out: Path, seed: int, grace: int, reduction: int) -> tuple[list[float], dict[str, Any]]:
    """The real study (run_study; the CLI's defaults unless --grace-period / --reduction-factor) on
    the continuous shipped search space."""
    from bmlr.tuning.search_space import resolve_search_space
    from bmlr.tuning.store import read_json_lines
    from bmlr.tuning.study import Runtime, StudySettings, run_study

    storage = out / "live"
    name = f"live-s{seed}-g{grace}-r{reduction}-n{args.live_samples}-e{args.epochs}-v{args.val_per_class or 0}"
    settings = StudySettings(search_space=str(resolve_search_space(None, "synthetic")), samples=args.live_samples,
                             max_epochs=args.epochs, seed=seed, storage=str(storage), name=name, grace_period=grace,
                             reduction_factor=reduction, concurrent=args.concurrent, overrides=data_overrides(args))
    study_dir = storage / "synthetic" / name
    if not (study_dir / "trials.csv").is_file():
        start = time.time()
        run_study(settings, Runtime(num_cpus=args.concurrent, verbose=0, log=lambda s: None))
        print(f"live study seed {seed}: {time.time() - start:.0f}s", flush=True)
    results = [read_json_lines(path) for path in (study_dir / "ray").glob("trial_*/result.json")]
    reports = sorted((float(r["timestamp"]), int(r["epoch"]), float(r["val_acc"])) for rows in results for r in rows)
    return best_so_far([acc for _, _, acc in reports]), {
        "grace_period": grace, "reduction_factor": reduction, "samples": args.live_samples, "trials": len(results)}


# --- plot ------------------------------------------------------------------------------------------
def plot(path: Path, grid_total: int, grid_best: float, tolerance: float, series: dict[str, list[list[float]]],
         title: str, tpe_label: str = "TPE + ASHA") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"grid": "black", "random": "tab:blue", "tpe_asha": "tab:red", "tpe_asha_live": "tab:orange"}
    labels = {"grid": "exhaustive grid (48 configs)", "random": "random search, no early stopping",
              "tpe_asha": tpe_label, "tpe_asha_live": "TPE + ASHA, real study, continuous space"}
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, curves in series.items():
        for i, curve in enumerate(curves):
            xs = [x / grid_total for x in range(1, len(curve) + 1)]
            ax.step(xs, curve, where="post", color=colours.get(name, None), alpha=0.9 if len(curves) == 1 else 0.35,
                    lw=1.8 if len(curves) == 1 else 1.0, label=labels.get(name, name) if i == 0 else None)
    ax.axhline(grid_best - tolerance, color="grey", ls="--", lw=1, label=f"grid best - {tolerance * 100:.0f} point")
    ax.axvline(0.25, color="grey", ls=":", lw=1, label="a quarter of the grid's epochs")
    ax.set_xscale("log")
    ax.set_xlabel(f"cumulative training epochs / grid total ({grid_total})")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title(title, fontsize=8)
    ax.set_ylim(max(0.0, round(grid_best - 0.4, 1)), min(1.005, grid_best + 0.08))
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fmt_ratio(s: dict[str, Any]) -> str:
    ratios = sorted(r for r in s["ratios"] if r is not None)
    text = (f"reached in {s['reached']} of {s['runs']} runs, within a quarter of the grid's epochs in "
            f"{s['within_quarter']} of {s['runs']}")
    if ratios:
        text += f"; ratios where reached: {', '.join(f'{r:.3f}' for r in ratios)}"
    if s["median_ratio"] is not None:
        text += f"; median {s['median_ratio']:.3f}"
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with the study's defaults where an option is left out."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results/search", help="folder for the grid table, curves and plot")
    p.add_argument("--dataset", choices=tuple(GRIDS), default="synthetic",
                   help="the grid's data: the synthetic data of version v2 (the recorded grids), the "
                   "synthetic default (synthetic-v3), or AV-MNIST as configs/avmnist-hard.yaml trains it "
                   "(the last two: grid phase only; their replays are bench_winners.py's and bench_regret.py's)")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"),
                   help="AV-MNIST's data (fsdd/ and mnist/; docs/data.md)")
    p.add_argument("--epochs", type=int, help="epochs per grid configuration (= ASHA's max_t; default: the "
                   "search space's fixed epochs, as tune.py's --max-epochs)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="validation share of the synthetic train split (the default's 0.2 = 120 clips)")
    p.add_argument("--val-per-class", type=int,
                   help="validate on this many clips per class, generated in addition to the default's "
                   "training clips (the training split keeps its size); e.g. 220 = 1320 clips")
    p.add_argument("--seed", type=int, default=0, help="training seed of every configuration (the study seed)")
    p.add_argument("--workers", type=int, default=2, help="processes training the grid (one thread each)")
    p.add_argument("--cache-dir", help="data cache (default: $BMLR_CACHE or ~/.cache/bmlr)")
    p.add_argument("--tolerance", type=float, default=0.01, help="'within 1 point' of the grid's best")
    p.add_argument("--seeds", type=int, default=10, help="searcher seeds of each replayed strategy")
    p.add_argument("--samples", type=int, help="TPE + ASHA trials (default: the CLI's --samples default)")
    p.add_argument("--random-samples", type=int, default=48, help="random-search trials")
    p.add_argument("--concurrent", type=int, default=2, help="trials at once (replay and live)")
    p.add_argument("--replay-sleep", type=float, default=0.05, help="seconds a replayed epoch takes")
    p.add_argument("--grace-period", type=int, help="ASHA grace (default: the study's default)")
    p.add_argument("--reduction-factor", type=int, help="ASHA reduction (default: the study's default)")
    p.add_argument("--startup", type=int, default=10, help="TPE's random startup trials")
    p.add_argument("--signal", choices=SIGNALS, default="val_acc",
                   help="what ASHA's rungs compare in the replayed TPE + ASHA studies (the product: val_acc; "
                   "best_val_acc = best so far, val_acc_weakest = the weakest modality's accuracy)")
    p.add_argument("--objective", choices=("val_acc", "best_val_acc"), default="val_acc",
                   help="what Optuna learns from in the replays (the product: val_acc)")
    p.add_argument("--sweep", action="store_true", help="also sweep grace period, reduction factor, startup trials")
    p.add_argument("--live", action="store_true", help="also run the real study (continuous space) once per --live-seeds")
    p.add_argument("--live-seeds", type=int, default=1)
    p.add_argument("--live-samples", type=int, help="trials of the real study (default: the CLI's --samples default)")
    p.add_argument("--grid-only", action="store_true", help="stop after the grid phase")
    p.add_argument("--horizon", type=int, help="the schedule's epochs (cfg.epochs) the grid is trained on, at "
                   "least --epochs (default: the search space's fixed epochs, as a study's trials)")
    p.add_argument("--table", help="start from this grid table (a grid.jsonl with its .meta.json beside it), "
                   "e.g. bench/data/search-grid-synthetic-v2-e20-v220.jsonl with --val-per-class 220, or "
                   "...-e12.jsonl with --epochs 12 --horizon 12: the replays then need no training")
    args = p.parse_args(argv)

    from bmlr.tuning.plan import DEFAULT_GRACE_PERIOD
    from bmlr.tuning.study import StudySettings

    defaults = StudySettings()
    if args.dataset != "synthetic" and not args.grid_only:
        p.error(f"--dataset {args.dataset} trains the grid only (--grid-only); replay it with bench/bench_winners.py "
                "or bench/bench_regret.py")
    if args.val_per_class and own_validation(args.dataset):
        p.error(f"--val-per-class: data version {SYNTHETIC_VERSIONS[args.dataset]} generates its own "
                "validation split (val.csv)")
    if args.dataset == "avmnist":
        from bmlr.config import load_config

        args.epochs = args.epochs or int(load_config(AVMNIST_CONFIG).epochs)
    if args.dataset == "digits":
        args.epochs = args.epochs or int(space_fixed(MANIFEST_SPACE)["epochs"])
    args.epochs = args.epochs or int(space_fixed()["epochs"])
    args.samples = args.samples or defaults.samples
    args.live_samples = args.live_samples or defaults.samples
    args.grace_period = args.grace_period or DEFAULT_GRACE_PERIOD
    args.reduction_factor = args.reduction_factor or defaults.reduction_factor
    return args


def machine_description() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return (f"{platform.node()}: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"torch {torch.__version__}, no GPU")


def describe_grid(table: dict[str, dict[str, Any]], args, machine: str) -> dict[str, Any]:
    """The grid's own numbers, printed: its best and how many configurations come near it, the
    epoch-to-epoch noise, how well an early epoch predicts a configuration's best. Returns the
    summary's first part (the grid in enumeration order under `grid_in_order`)."""
    n_points = len(grid_points(GRID))
    grid_total = n_points * args.epochs
    grid_best = max(max(row["val_acc"]) for row in table.values())
    final_best = max(row["val_acc"][-1] for row in table.values())
    target = grid_best - args.tolerance
    winners = sorted((max(r["val_acc"]), k) for k, r in table.items())[::-1]
    within = sum(1 for b, _ in winners if b >= target - 1e-9)
    print(f"\nmachine: {machine}")
    print(f"grid: {n_points} configurations x {args.epochs} epochs = {grid_total} epochs; best validation "
          f"accuracy {grid_best:.4f} ({winners[0][1]}); {within} of {n_points} configurations come within "
          f"{args.tolerance * 100:.0f} point of it; best final-epoch accuracy {final_best:.4f}; "
          f"grid training took {sum(r['seconds'] for r in table.values()) / 60:.1f} process-minutes")
    noise = epoch_noise(table, winners[0][1])
    print(f"epoch-to-epoch noise: median |change| between consecutive epochs over the second half of training "
          f"{noise['median_step'] * 100:.1f} points; the best configuration's best epoch is "
          f"{noise['best_above_own_tail'] * 100:.1f} points above its own mean over the last 5 epochs; the "
          f"runner-up configuration is {(winners[0][0] - winners[1][0]) * 100:.1f} points below the best")
    predictive = rank_agreement(table, args.epochs)
    print("how well a configuration's accuracy at epoch k predicts its best (Spearman over the grid; what an "
          "ASHA rung at epoch k relies on): " + ", ".join(f"{k}: {rho_text(c)}" for k, c in predictive.items()))
    signals = ["best_val_acc"] + [m for m in RECORDED[1:] if all(m in row for row in table.values())]
    other_signals = {m: rank_agreement(table, args.epochs, m) for m in signals}
    for m, agreement in other_signals.items():
        print(f"  the same for {m} at epoch k: " + ", ".join(rho_text(c) for c in agreement.values()))
    return {"machine": machine, "epoch_noise": noise, "rank_agreement": predictive,
            "rank_agreement_other_signals": other_signals, "grid": GRID, "epochs": args.epochs,
            "val_fraction": args.val_fraction, "val_per_class": args.val_per_class,
            "grid_total": grid_total, "grid_best": grid_best, "target": target, "configs_within_target": within,
            "grid_in_order": summarise([grid_curve(table)], target, grid_total)}


def run_searches(table: dict[str, dict[str, Any]], args, out: Path,
                 summary: dict[str, Any]) -> dict[str, list[list[float]]]:
    """TPE + ASHA and random search, each replayed with `--seeds` searcher seeds in one local Ray
    instance (and the `--sweep`), then the `--live` study. Adds their numbers to `summary`;
    returns their best-so-far curves by strategy."""
    from bmlr.tuning.ray_backend import ray_session

    target, grid_total = summary["target"], summary["grid_total"]
    with ray_session(None, args.concurrent, 0), tempfile.TemporaryDirectory(prefix="bench-search-", dir=out) as tmp:
        t0 = time.time()
        tpe = [run_replay(table, "tpe_asha", s, args, Path(tmp), args.samples, args.grace_period,
                          args.reduction_factor, args.startup, args.signal, args.objective) for s in range(args.seeds)]
        rnd = [run_replay(table, "random", s, args, Path(tmp), args.random_samples) for s in range(args.seeds)]
        summary["tpe_asha"] = {**summarise(tpe, target, grid_total), "samples": args.samples,
                               "grace_period": args.grace_period, "reduction_factor": args.reduction_factor,
                               "startup": args.startup, "signal": args.signal, "objective": args.objective}
        summary["random"] = {**summarise(rnd, target, grid_total), "samples": args.random_samples}
        print(f"replays: {time.time() - t0:.0f}s")
        if args.sweep:
            summary["sweep"] = sweep(table, args, Path(tmp), tpe, target, grid_total)
    series = {"random": rnd, "tpe_asha": tpe}
    if args.live:
        live = [run_live(args, out, s, args.grace_period, args.reduction_factor) for s in range(args.live_seeds)]
        series["tpe_asha_live"] = [curve for curve, _ in live]
        summary["tpe_asha_live"] = {**summarise(series["tpe_asha_live"], target, grid_total), **live[-1][1]}
    return series


def sweep(table: dict[str, dict[str, Any]], args, storage: Path, tpe: list[list[float]], target: float,
          grid_total: int) -> list[dict[str, Any]]:
    """TPE + ASHA replayed with other grace periods, reduction factors and startup trials (one
    changed at a time; `tpe`, the runs with the chosen settings, is reused)."""
    grace, reduction = args.grace_period, args.reduction_factor
    rows = []
    combos = sorted({(g, r, n) for g, r, n in
                     [(g, reduction, args.startup) for g in (1, 2, 3, 4, 6, 8, 10, 12) if g < args.epochs]
                     + [(grace, r, args.startup) for r in (2, 3, 4)]
                     + [(grace, reduction, n) for n in (6, 10)]})
    for g, r, n in combos:
        curves = tpe if (g, r, n) == (grace, reduction, args.startup) else [
            run_replay(table, "tpe_asha", s, args, storage, args.samples, g, r, n, args.signal,
                       args.objective) for s in range(args.seeds)]
        s = summarise(curves, target, grid_total)
        mean_epochs = statistics.mean(s["total_epochs"])
        row = {"grace_period": g, "reduction_factor": r, "startup": n, "mean_total_epochs": mean_epochs,
               **{k: s[k] for k in ("reached", "within_quarter", "runs", "median_ratio", "max_ratio", "ratios")},
               "median_final_best": statistics.median(s["final_best"])}
        rows.append(row)
        print(f"  sweep grace {g} reduction {r} startup {n:2d}: within 1 point in {s['reached']}/{s['runs']} "
              f"runs, within a quarter of the grid's epochs in {s['within_quarter']}/{s['runs']}, "
              f"a study costs {mean_epochs / grid_total:.3f} of the grid, median final best "
              f"{row['median_final_best']:.4f}", flush=True)
    return rows


def print_comparison(summary: dict[str, Any], args) -> None:
    """Epochs each strategy needed to come within the tolerance of the grid's best (and within 2
    and 3 points, added to `summary`), as ratios to the grid's epochs."""
    grid_best, grid_total = summary["grid_best"], summary["grid_total"]
    print(f"\nepochs to come within {args.tolerance * 100:.0f} point of the grid's best ({grid_best:.4f}), "
          f"as a ratio to the grid's {grid_total} epochs:")
    print(f"  exhaustive grid (in order)      {summary['grid_in_order']['ratios'][0]:.3f} (total 1.000)")
    print(f"  random search, no early stop    {fmt_ratio(summary['random'])}")
    print(f"  TPE + ASHA (grace {args.grace_period}, reduction {args.reduction_factor}, {args.startup} startup, "
          f"{args.samples} trials)  {fmt_ratio(summary['tpe_asha'])}")
    if "tpe_asha_live" in summary:
        print(f"  TPE + ASHA real study (continuous shipped space, {args.live_samples} trials)  "
              f"{fmt_ratio(summary['tpe_asha_live'])}")
    for tol in (0.02, 0.03):  # the same runs against looser targets (epoch-to-epoch noise is 2-3 points)
        looser = {name: summarise(summary[name]["curves"], grid_best - tol, grid_total)
                  for name in ("random", "tpe_asha")}
        summary[f"within_{round(tol * 100)}_points"] = {k: {kk: v[kk] for kk in ("reached", "within_quarter", "ratios")}
                                                        for k, v in looser.items()}
        print(f"  within {tol * 100:.0f} points instead: random search {fmt_ratio(looser['random'])}; "
              f"TPE + ASHA {fmt_ratio(looser['tpe_asha'])}")
    t = summary["tpe_asha"]
    print(f"TPE + ASHA came within {args.tolerance * 100:.0f} point of the grid's best within a quarter of the "
          f"grid's epochs in {t['within_quarter']} of {t['runs']} searcher seeds "
          f"({'every run' if t['within_quarter'] == t['runs'] else 'NOT every run'})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_description()
    table = run_grid(args, out)
    if args.grid_only:
        return 0
    summary = describe_grid(table, args, machine)
    series = {"grid": summary["grid_in_order"]["curves"], **run_searches(table, args, out, summary)}
    validation = (f"validation {args.val_per_class} clips per class" if args.val_per_class
                  else f"validation {args.val_fraction:.0%} of train")
    options = ("" if args.signal == "val_acc" else f", rungs on {args.signal}") + (
        "" if args.objective == "val_acc" else f", TPE on {args.objective}")
    plot(out / "search_efficiency.png", summary["grid_total"], summary["grid_best"], args.tolerance, series,
         f"synthetic default, tiny model, {args.epochs} epochs max, {validation}, grid of {len(grid_points(GRID))}\n"
         f"{machine}", tpe_label=f"TPE + ASHA (grace {args.grace_period}, reduction {args.reduction_factor}, "
         f"{args.startup} startup, {args.samples} trials{options})")
    print_comparison(summary, args)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"plot: {out / 'search_efficiency.png'}; numbers: {out / 'summary.json'}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
