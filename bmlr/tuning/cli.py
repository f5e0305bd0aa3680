"""`bmlr-tune` / `python tune.py`: tune BMLR with Ray Tune (Optuna TPE + ASHA), log to MLflow.

    python tune.py --dataset ave --samples 64 --data-root /data/AVE
    python tune.py --samples 8 --max-epochs 6 --set model_width=8      # synthetic default
    python tune.py --dataset ave --name bmlr-20250101-120000 --resume   # continue a study
    python tune.py export --run-id <MLflow run id> -o chosen.yaml       # any trial -> YAML
    python tune.py --strategy staged --samples 16                        # beta first, then alpha
    python tune.py surface --dataset synthetic --seeds 0 1               # the alpha x beta surface
    python tune.py report --study tune_runs/synthetic/<study>           # the study report

See docs/tuning.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bmlr.config import ConfigError

EXIT_ERROR = 2
EXIT_NO_RESULT = 1
EXIT_INTERRUPTED = 130


def _parse_overrides(items: list[str]) -> dict:
    import yaml

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


class _Formatter(argparse.HelpFormatter):
    """Shows a default only where the help text does not already explain it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" not in text and action.default not in (None, [], False, argparse.SUPPRESS):
            text += f" (default: {action.default})"
        return text


def study_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bmlr-tune", description="Tune BMLR hyperparameters with Ray Tune (Optuna TPE search, ASHA "
        "early stopping), one MLflow parent run per study and a nested run per trial. "
        "`bmlr-tune export --help` exports a trial chosen in MLflow.",
        formatter_class=_Formatter)
    g = p.add_argument_group("what to tune")
    g.add_argument("--dataset", default="synthetic",
                   help="data set (synthetic, cremad, ks, ave, avmnist, mosi, mosei)")
    g.add_argument("--data-root", help="the data set's folder (default: the generated synthetic data set)")
    g.add_argument("--method", help="training method (default: the search space's fixed method, else bmlr)")
    g.add_argument("--search-space", help="search-space YAML (default: search_spaces/<dataset>.yaml, looked up "
                   "in the current folder, then in the project)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fix one more configuration key for every trial and the export (repeatable), "
                   "e.g. --set model_width=8 --set epochs=10")
    g = p.add_argument_group("search and early stopping")
    g.add_argument("--samples", type=int, default=16, help="number of trials")
    g.add_argument("--max-epochs", type=int, help="epochs a trial trains at most (ASHA's max_t; default: the "
                   "search space's fixed epochs). The exported YAML keeps the full fixed epochs")
    g.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial can be stopped (on small data sets, where "
                   "an epoch is a few dozen optimizer steps, 2-4 measured better; docs/performance.md)")
    g.add_argument("--reduction-factor", type=int, default=3, help="ASHA: keep 1/factor of trials per rung")
    g.add_argument("--seed", type=int, default=0, help="the training seed of every trial and the TPE seed")
    g.add_argument("--max-failures", type=int, default=0,
                   help="retries of a failed trial (from its last finished epoch) before it counts as failed")
    g = p.add_argument_group("resources")
    g.add_argument("--concurrent", type=int, help="trials at once (default: as many as the resources allow)")
    g.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs (and torch threads) per trial")
    g.add_argument("--gpus-per-trial", type=float,
                   help="GPUs per trial; fractional values share a GPU, e.g. 0.25 (default: 1 where the "
                   "cluster has GPUs, else 0)")
    g.add_argument("--address", help="an existing Ray cluster (e.g. 127.0.0.1:6379 or auto); default: start a "
                   "local one")
    g.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    g = p.add_argument_group("where results go")
    g.add_argument("--storage", default="tune_runs", help="results folder; a study lives in "
                   "<storage>/<dataset>/<name>/")
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:////<abs storage>/mlflow.db)")
    g.add_argument("--experiment", help="MLflow experiment (default: bmlr-tune-<dataset>)")
    g.add_argument("--name", help="study name (default: <method>-<timestamp>)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted study (--name, default: the "
                   "latest study of --dataset in --storage); finished trials are not rerun")
    g.add_argument("--top", type=int, default=5, help="rows of the summary table")
    g.add_argument("-v", "--verbose", type=int, default=1, choices=(0, 1, 2),
                   help="0: summary only, 1: Ray Tune's progress table, 2: also Ray's logs and trial output")
    g = p.add_argument_group("strategy and report")
    g.add_argument("--strategy", choices=("joint", "staged"), default="joint",
                   help="joint: search every key at once; staged: stage 1 searches beta (and lr, fusion, ...) at "
                   "a fixed alpha, stage 2 alpha alone with the stage-1 winner fixed (--samples is the total)")
    g.add_argument("--stage2-samples", type=int, help="staged: trials of stage 2 (default: a quarter of --samples, "
                   "at least 2)")
    g.add_argument("--stage1-alpha", type=float, help="staged: alpha of stage 1 (default: the search space's alpha "
                   "default, else 1.0)")
    _report_options(g)
    return p


def _report_options(g, study: bool = True) -> None:
    if study:
        g.add_argument("--report", choices=("full", "fast", "none"), default="full",
                       help="the study report written at the end (report/report.md and .html): full also trains "
                       "the baseline counterpart of the best trial for the learning curves, fast does not")
    g.add_argument("--baseline-study", help="learning curves: compare with the best trial of this (baseline) "
                   "study instead of training the baseline counterpart")


def surface_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bmlr-tune surface", formatter_class=_Formatter,
        description="Train an alpha x beta grid (the paper's Figure 5) with everything else fixed, through Ray Tune "
        "and MLflow like any study, and draw it (surface.csv, surface_3d.png, surface_heatmap.png in the study "
        "folder); or, with --from-trials, draw the surface of an existing study's scattered trials.")
    g = p.add_argument_group("what to train")
    g.add_argument("--dataset", default="synthetic", help="data set")
    g.add_argument("--data-root", help="the data set's folder (default: the base configuration's, else the "
                   "generated synthetic data set)")
    g.add_argument("--search-space", help="search space whose alpha and beta ranges give the grid (default: "
                   "search_spaces/<dataset>.yaml)")
    g.add_argument("--base", help="configuration YAML fixing everything but alpha and beta (default: best.yaml of "
                   "the last study on --dataset in --storage, else the search space's untuned configuration)")
    g.add_argument("--alphas", type=float, nargs="+", help="alpha values (default: --grid-size spread over the "
                   "search space's alpha range, geometrically)")
    g.add_argument("--betas", type=float, nargs="+", help="beta values (default: spread evenly over its beta range)")
    g.add_argument("--grid-size", type=int, nargs=2, default=[3, 5], metavar=("N_ALPHA", "N_BETA"),
                   help="grid points per axis where --alphas / --betas are not given")
    g.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of every cell")
    g.add_argument("--epochs", type=int, help="epochs every cell trains (default: the base study's trial epochs, "
                   "else the base configuration's epochs)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fix one more configuration key (repeatable), e.g. --set threads=1")
    g = p.add_argument_group("drawing an existing study instead")
    g.add_argument("--from-trials", metavar="STUDY_DIR", help="bin this study's trials by alpha and beta and draw "
                   "them (no training)")
    g.add_argument("--bins", type=int, nargs=2, metavar=("N_ALPHA", "N_BETA"), help="with --from-trials: bins per "
                   "axis (default: 3 5, or 2 3 under 12 trials)")
    g = p.add_argument_group("resources and results")
    g.add_argument("--concurrent", type=int, help="trials at once (default: as many as the resources allow)")
    g.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs (and torch threads) per trial")
    g.add_argument("--gpus-per-trial", type=float,
                   help="fractional values share a GPU (default: 1 where the cluster has GPUs, else 0)")
    g.add_argument("--address", help="an existing Ray cluster (default: start a local one)")
    g.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    g.add_argument("--max-failures", type=int, default=0, help="retries of a failed trial")
    g.add_argument("--storage", default="tune_runs", help="results folder")
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:////<abs storage>/mlflow.db)")
    g.add_argument("--experiment", help="MLflow experiment (default: bmlr-tune-<dataset>)")
    g.add_argument("--name", help="study name (default: surface-<timestamp>)")
    g.add_argument("--resume", action="store_true", help="continue the interrupted surface --name")
    g.add_argument("--report", choices=("full", "fast", "none"), default="fast",
                   help="the study report at the end (full: also train the baseline counterpart)")
    g.add_argument("-v", "--verbose", type=int, default=1, choices=(0, 1, 2), help="0: summary only, 1: Ray "
                   "Tune's progress table, 2: also Ray's logs")
    return p


def report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bmlr-tune report", formatter_class=_Formatter,
        description="Write a finished study's report (report/report.md and a self-contained report/report.html, "
        "logged to the study's MLflow run): best trials, hyperparameter importances, the alpha x beta surface, "
        "learning curves against a baseline (Figure 6), reshaped samples per epoch (Figure 3a) and the top-3 "
        "predicted classes per class (Figure 4). Validation only.")
    p.add_argument("--study", required=True, help="the study folder, e.g. tune_runs/synthetic/<study>")
    _report_options(p, study=False)
    p.add_argument("--fast", action="store_true", help="do not train the baseline counterpart of the best trial")
    p.add_argument("--top", type=int, default=10, help="rows of the best trials table")
    p.add_argument("--no-mlflow", action="store_true", help="write the files only")
    return p


def report_main(argv: list[str]) -> int:
    from bmlr.tuning.report import ReportError, write_report

    args = report_parser().parse_args(argv)
    try:
        write_report(args.study, baseline_study=args.baseline_study, train_baseline=not args.fast,
                     mlflow=not args.no_mlflow, top=args.top)
    except (ReportError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def surface_main(argv: list[str]) -> int:
    from bmlr.tuning import surface
    from bmlr.tuning.search_space import SearchSpaceError
    from bmlr.tuning.study import StudyError, StudySettings, run_study

    args = surface_parser().parse_args(argv)
    if args.from_trials:
        try:
            n_alpha, n_beta = args.bins or (None, None)
            paths = surface.surface_from_study(Path(args.from_trials), n_alpha=n_alpha, n_beta=n_beta)
        except (surface.SurfaceError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_ERROR
        print("wrote " + ", ".join(str(p) for p in paths))
        return 0
    study_dir = None
    try:
        if args.resume:
            if not args.name:
                raise StudyError("surface --resume needs the --name of the surface")
            settings = StudySettings(dataset=args.dataset, storage=args.storage, name=args.name)
        else:
            overrides = _parse_overrides(args.overrides)
            settings, study_dir = surface.plan_surface(
                args.dataset, args.storage, args.search_space, args.base, args.alphas, args.betas,
                tuple(args.grid_size), args.seeds, args.epochs, args.name, overrides, data_root=args.data_root,
                concurrent=args.concurrent, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                tracking_uri=args.tracking_uri, experiment=args.experiment, max_failures=args.max_failures)
        outcome = run_study(settings, resume=args.resume, address=args.address, num_cpus=args.num_cpus,
                            verbose=args.verbose, top=5, report=args.report)
    except (SearchSpaceError, ConfigError, StudyError, surface.SurfaceError) as err:
        if study_dir is not None:
            surface.cleanup_failed_plan(study_dir)
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return 0 if outcome.best is not None else EXIT_NO_RESULT


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bmlr-tune export", description="Write a trial's configuration (an MLflow run id from the UI) as a "
        "production YAML for `python -m bmlr.train --config`. A study's parent run id exports its best trial.")
    p.add_argument("--run-id", required=True, help="MLflow run id of a trial (or of a study)")
    p.add_argument("-o", "--output", required=True, help="YAML file to write")
    p.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite in --storage")
    p.add_argument("--storage", default="tune_runs", help="where the default SQLite store lives")
    p.add_argument("--epochs", type=int, help="production epochs (default: the study's fixed epochs)")
    p.add_argument("--seeds", type=int, nargs="+", help="production seeds (default: the study's fixed seeds)")
    return p


def export_main(argv: list[str]) -> int:
    from bmlr.tuning import tracking
    from bmlr.tuning.export import ExportError, export_run

    args = export_parser().parse_args(argv)
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_tracking_uri(
        Path(args.storage).expanduser())
    try:
        tracking.check_reachable(uri)
        path, cfg = export_run(args.run_id, args.output, uri, epochs=args.epochs, seeds=args.seeds)
    except (ExportError, tracking.TrackingError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    print(f"wrote {path} ({cfg.dataset}, method {cfg.method}, {cfg.epochs} epochs, seeds {cfg.seeds})\n"
          f"train it: python -m bmlr.train --config {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        return export_main(argv[1:])
    if argv and argv[0] == "surface":
        return surface_main(argv[1:])
    if argv and argv[0] == "report":
        return report_main(argv[1:])
    if argv and argv[0] in ("compare", "recipe"):  # equal-budget comparisons and the paper's tables
        from bmlr.tuning.compare import main as compare_main; return compare_main(argv)  # noqa: E702
    args = study_parser().parse_args(argv)

    from bmlr.tuning.search_space import SearchSpaceError, resolve_search_space
    from bmlr.tuning.study import StudyError, StudySettings, run_study

    try:
        overrides = _parse_overrides(args.overrides)
        search_space = "" if args.resume else str(resolve_search_space(args.search_space, args.dataset))
        settings = StudySettings(
            dataset=args.dataset, search_space=search_space, data_root=args.data_root, method=args.method,
            samples=args.samples, max_epochs=args.max_epochs, grace_period=args.grace_period,
            reduction_factor=args.reduction_factor, concurrent=args.concurrent, cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial, storage=args.storage, tracking_uri=args.tracking_uri,
            experiment=args.experiment, name=args.name, seed=args.seed, max_failures=args.max_failures,
            overrides=overrides)
        run_kwargs = dict(resume=args.resume, address=args.address, num_cpus=args.num_cpus, verbose=args.verbose,
                          top=args.top, report=args.report, baseline_study=args.baseline_study)
        if args.strategy == "staged" or (args.resume and _resumes_staged(settings)):
            from bmlr.tuning.staged import run_staged

            outcome = run_staged(settings, stage2_samples=args.stage2_samples, stage1_alpha=args.stage1_alpha,
                                 **run_kwargs)
        else:
            outcome = run_study(settings, **run_kwargs)
    except (SearchSpaceError, ConfigError, StudyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return 0 if outcome.best is not None else EXIT_NO_RESULT


def _resumes_staged(settings) -> bool:
    """Whether `--resume` points at a staged study (its study.json says kind: staged)."""
    import json

    from bmlr.tuning.study import StudyError, _abs, find_study

    try:
        folder = find_study(_abs(settings.storage), settings.dataset, settings.name)
        return json.loads((folder / "study.json").read_text()).get("kind") == "staged"
    except (StudyError, OSError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())
