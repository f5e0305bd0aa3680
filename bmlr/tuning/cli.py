"""`bmlr-tune` / `python tune.py`: tune BMLR with Ray Tune (Optuna TPE + ASHA), log to MLflow.

    python tune.py --dataset ave --samples 64 --data-root /data/AVE
    python tune.py --samples 8 --max-epochs 6 --set model_width=8      # synthetic default
    python tune.py --dataset ave --name bmlr-20250101-120000 --resume   # continue a study
    python tune.py export --run-id <MLflow run id> -o chosen.yaml       # any trial -> YAML
    python tune.py --strategy staged --samples 16                        # beta first, then alpha
    python tune.py surface --dataset synthetic --seeds 0 1               # the alpha x beta surface
    python tune.py report --study tune_runs/synthetic/<study>           # the study report
    python tune.py compare --methods baseline bmlr --samples 16          # equal-budget comparison
    python tune.py recipe table3 --no-tune                               # one of the paper's tables

One parser (:func:`build_parser`), a subcommand per entry of :data:`COMMANDS`: `run` (a study, the
default: `tune.py --samples 8` is `tune.py run --samples 8`), `export`, `compare`, `report`,
`surface`, `recipe`. Each handler imports the modules it runs (torch, Ray, MLflow) when it is
called, so `--help` is quick. The top of the tuning layer: nothing in `bmlr` imports this module
(`tune.py` and the `bmlr-tune` console script call :func:`main`). The options the commands share
are declared once in `bmlr.tuning.options`. See docs/tuning.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bmlr.tuning.compare.cli import add_compare_options, add_recipe_options, compare_main, recipe_main
from bmlr.tuning.options import (add_asha_options, add_data_options, add_max_failures_option, add_ray_options,
                                 add_result_options, add_set_option, add_verbose_option, check_dataset,
                                 check_ray_options, check_storage, command_parser, settings_from)

if TYPE_CHECKING:
    from bmlr.tuning.study import StudyOutcome, StudySettings

__all__ = ["EXIT_ERROR", "EXIT_NO_RESULT", "EXIT_INTERRUPTED", "COMMANDS", "build_parser", "main"]

EXIT_ERROR = 2
EXIT_NO_RESULT = 1
EXIT_INTERRUPTED = 130


def start_errors() -> tuple[type[Exception], ...]:
    """A study that cannot start: EXIT_ERROR (RayStartError: includes a resource request the cluster cannot meet)."""
    from bmlr.config import ConfigError
    from bmlr.tuning.ray_backend import RayStartError
    from bmlr.tuning.search_space import SearchSpaceError
    from bmlr.tuning.store import StoreError
    from bmlr.tuning.study import StudyError

    return SearchSpaceError, ConfigError, StudyError, StoreError, RayStartError


def check_study_options(args: argparse.Namespace) -> None:
    """Options that would be ignored are errors: the staged ones on a joint study or on
    `--resume` (a resumed study keeps its own), `--search-space` on `--resume` (a resumed study
    searches its own copy)."""
    from bmlr.tuning.study import StudyError

    staged = [f"--{k.replace('_', '-')} {getattr(args, k)}" for k in ("stage2_samples", "stage1_alpha")
              if getattr(args, k) is not None]
    if args.resume and (staged or args.search_space):
        given = ", ".join(staged + ([f"--search-space {args.search_space}"] if args.search_space else []))
        raise StudyError(f"--resume continues the study with its own search space and stages; {given} would be "
                         f"ignored: drop it (or start a new study with another --name)")
    if staged and args.strategy != "staged":
        raise StudyError(f"{', '.join(staged)}: only a staged study (--strategy staged) has stages; "
                         f"drop it or add --strategy staged")
    if args.widen and args.strategy == "staged":
        raise StudyError("--widen: a staged study's stages search different keys; widen a joint study")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """`bmlr-tune run` (and `bmlr-tune` with no command): a study."""
    p.description = ("Tune BMLR hyperparameters with Ray Tune (Optuna TPE search, ASHA early stopping), one MLflow "
                     "parent run per study and a nested run per trial. `bmlr-tune export --help` exports a trial "
                     "chosen in MLflow.")
    g = p.add_argument_group("what to tune")
    add_data_options(g)
    g.add_argument("--method", help="training method (default: the search space's fixed method, else bmlr)")
    add_set_option(g, "fix one more configuration key for every trial and the export (repeatable), "
                   "e.g. --set model_width=8 --set epochs=10")
    g = p.add_argument_group("search and early stopping")
    g.add_argument("--samples", type=int, default=16, help="number of trials")
    add_asha_options(g)
    g = p.add_argument_group("resources")
    add_ray_options(g)
    g = p.add_argument_group("where results go")
    add_result_options(g, storage_help="results folder, or object storage (s3://bucket/prefix, gs://...); a "
                       "study lives in <storage>/<dataset>/<name>/",
                       name_help="study name (default: <method>-<timestamp>)",
                       resume_help="continue an interrupted study (--name, default: the latest study of --dataset "
                       "in --storage); finished trials are not rerun")
    g.add_argument("--top", type=int, default=5, help="rows of the summary table")
    add_verbose_option(g)
    g = p.add_argument_group("strategy and report")
    g.add_argument("--strategy", choices=("joint", "staged"), default="joint",
                   help="joint: search every key at once; staged: stage 1 searches beta (and lr, fusion, ...) at "
                   "a fixed alpha, stage 2 alpha alone with the stage-1 winner fixed (--samples is the total)")
    g.add_argument("--stage2-samples", type=int, help="staged: trials of stage 2 (default: a quarter of --samples, "
                   "at least 2)")
    g.add_argument("--stage1-alpha", type=float, help="staged: alpha of stage 1 (default: the search space's alpha "
                   "default, else 1.0)")
    g.add_argument("--widen", action="store_true",
                   help="where the winner lies in the outer tenth of a numeric range, search again in a second "
                   "study (<name>-widened, --samples more trials) with that range widened by half its width, told "
                   "every trial of the first")
    g.add_argument("--references", action=argparse.BooleanOptionalAction, default=None,
                   help="after the search, train the method untuned (the search space's defaults) and the baseline "
                   "at the winner's configuration once each, with a trial's seed and budget, and print the winner "
                   "against them on the validation split (default: on for the embedded synthetic data, else off)")
    g.add_argument("--report", choices=("full", "fast", "none"), default="full",
                   help="the study report written at the end (report/report.md and .html), or none; full and fast "
                   "are the same (the report trains nothing: its baseline is the study's baseline reference)")
    add_baseline_study_option(g)


def add_baseline_study_option(group) -> None:
    group.add_argument("--baseline-study", help="learning curves: compare with the best trial of this (baseline) "
                       "study instead of the study's baseline reference (--references)")


def add_report_options(p: argparse.ArgumentParser) -> None:
    """`bmlr-tune report`: a finished study's report."""
    p.description = (
        "Write a finished study's report (report/report.md and a self-contained report/report.html, logged to the "
        "study's MLflow run): best trials, hyperparameter importances, the alpha x beta surface, learning curves "
        "against a baseline (Figure 6), reshaped samples per epoch (Figure 3a) and the top-3 predicted classes per "
        "class (Figure 4). Validation only.")
    p.add_argument("--study", required=True, help="the study folder, e.g. tune_runs/synthetic/<study>")
    add_baseline_study_option(p)
    p.add_argument("--fast", action="store_true", help="kept for older scripts: the report trains nothing either way")
    p.add_argument("--top", type=int, default=10, help="rows of the best trials table")
    p.add_argument("--no-mlflow", action="store_true", help="write the files only")


def add_surface_options(p: argparse.ArgumentParser) -> None:
    """`bmlr-tune surface`: an alpha x beta grid trained as a study, or an existing study's trials drawn."""
    p.description = (
        "Train an alpha x beta grid (the paper's Figure 5) with everything else fixed, through Ray Tune and MLflow "
        "like any study, and draw it (surface.csv, surface_3d.png, surface_heatmap.png in the study folder); or, "
        "with --from-trials, draw the surface of an existing study's scattered trials.")
    g = p.add_argument_group("what to train")
    add_data_options(g, data_root_help="the data set's folder (default: the base configuration's, else the "
                     "generated synthetic data set)", search_space_help="search space whose alpha and beta ranges "
                     "give the grid (default: search_spaces/<dataset>.yaml)")
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
    add_set_option(g, "fix one more configuration key (repeatable), e.g. --set threads=1")
    g = p.add_argument_group("drawing an existing study instead")
    g.add_argument("--from-trials", metavar="STUDY_DIR", help="bin this study's trials by alpha and beta and draw "
                   "them (no training)")
    g.add_argument("--bins", type=int, nargs=2, metavar=("N_ALPHA", "N_BETA"), help="with --from-trials: bins per "
                   "axis (default: 3 5, or 2 3 under 12 trials)")
    g = p.add_argument_group("resources and results")
    add_ray_options(g)
    add_max_failures_option(g)
    add_result_options(g, storage_help="results folder", name_help="study name (default: surface-<timestamp>)",
                       resume_help="continue the interrupted surface --name")
    g.add_argument("--report", choices=("full", "fast", "none"), default="fast",
                   help="the study report at the end, or none (full and fast are the same)")
    add_verbose_option(g)


def add_export_options(p: argparse.ArgumentParser) -> None:
    """`bmlr-tune export`: a trial's configuration as a production YAML."""
    p.description = ("Write a trial's configuration (an MLflow run id from the UI) as a production YAML for "
                     "`python -m bmlr.train --config`. A study's parent run id exports its best trial.")
    p.add_argument("--run-id", required=True, help="MLflow run id of a trial (or of a study)")
    p.add_argument("-o", "--output", required=True, help="YAML file to write")
    p.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite in --storage")
    p.add_argument("--storage", default="tune_runs", help="the study's --storage folder: its mlflow.db is the store "
                   "when neither --tracking-uri nor $MLFLOW_TRACKING_URI is given (never created here)")
    p.add_argument("--epochs", type=int, help="production epochs (default: the study's fixed epochs)")
    p.add_argument("--seeds", type=int, nargs="+", help="production seeds (default: the study's fixed seeds)")
    p.add_argument("--as-trained", action="store_true", help="the trial's own seed and epochs instead of the "
                   "production ones: training the file repeats the trial's validation history exactly")


def report_main(args: argparse.Namespace, argv: list[str]) -> int:
    from bmlr.config import ConfigError
    from bmlr.tuning.report import ReportError, write_report

    try:
        write_report(args.study, baseline_study=args.baseline_study, mlflow=not args.no_mlflow, top=args.top)
    except (ReportError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def from_trials(args: argparse.Namespace) -> int:
    """`surface --from-trials`: draw an existing study's trials (no training)."""
    from bmlr.tuning.surface import SurfaceError, surface_from_study

    try:
        n_alpha, n_beta = args.bins or (None, None)
        paths = surface_from_study(Path(args.from_trials), n_alpha=n_alpha, n_beta=n_beta)
    except (SurfaceError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def surface_main(args: argparse.Namespace, argv: list[str]) -> int:
    if args.from_trials:
        return from_trials(args)
    from bmlr.train import parse_overrides
    from bmlr.tuning.study import Runtime, StudyError, StudySettings
    from bmlr.tuning.surface import SurfaceError
    from bmlr.tuning.surface_study import plan_surface, run_surface

    try:
        check_dataset(args.dataset)
        check_storage(args.storage, "surface")
        check_ray_options(args)
        if args.resume:
            if not args.name:
                raise StudyError("surface --resume needs the --name of the surface")
            settings, space = StudySettings(dataset=args.dataset, storage=args.storage, name=args.name), None
        else:
            settings, space = plan_surface(
                args.dataset, args.storage, args.search_space, args.base, args.alphas, args.betas,
                tuple(args.grid_size), args.seeds, args.epochs, args.name, parse_overrides(args.overrides),
                data_root=args.data_root, concurrent=args.concurrent, cpus_per_trial=args.cpus_per_trial,
                gpus_per_trial=args.gpus_per_trial, tracking_uri=args.tracking_uri, experiment=args.experiment,
                max_failures=args.max_failures)
        runtime = Runtime(address=args.address, num_cpus=args.num_cpus, verbose=args.verbose, report=args.report)
        outcome = run_surface(settings, runtime, space, resume=args.resume)
    except (*start_errors(), SurfaceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return exit_code(outcome)


def exit_code(outcome: StudyOutcome) -> int:
    """0 when a winner was exported; the interrupted and no-result codes otherwise."""
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return 0 if outcome.best is not None else EXIT_NO_RESULT


def export_main(args: argparse.Namespace, argv: list[str]) -> int:
    from bmlr.config import ConfigError
    from bmlr.mlflow_store import TrackingError, store_of
    from bmlr.tuning.export import ExportError, check_store, export_run, train_command

    try:
        uri, source = store_of(args.tracking_uri, export_storage(args))
        if Path(args.output).is_dir():
            raise ExportError(f"-o {args.output} is a folder; give the YAML file to write, e.g. "
                              f"{Path(args.output) / 'best.yaml'}")
        check_store(uri, source)  # never opens (so never creates) a SQLite file that is not there
        if args.as_trained and (args.epochs is not None or args.seeds):
            raise ExportError("--as-trained takes the trial's own epochs and seeds; drop --epochs / --seeds")
        path, cfg = export_run(args.run_id, args.output, uri, epochs=args.epochs, seeds=args.seeds,
                               as_trained=args.as_trained)
    except (ExportError, TrackingError, ConfigError, *start_errors()) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    print(f"wrote {path} ({cfg.dataset}, method {cfg.method}, {cfg.epochs} epochs, seeds {cfg.seeds})\n"
          f"train it: {train_command(path)}")
    return 0


def export_storage(args: argparse.Namespace) -> str:
    """The folder whose default MLflow store `export` reads: ``--storage``, or for object storage
    its working copy with the store pulled from the bucket (where no --tracking-uri is given)."""
    from bmlr.tuning import remote

    if not remote.is_uri(args.storage) or args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return args.storage
    check_storage(args.storage, "export")
    remote.pull_store(args.storage)
    return str(remote.local_root(args.storage))


def run_main(args: argparse.Namespace, argv: list[str]) -> int:
    """A study: joint (one search) or staged (`--strategy staged`, or resuming a staged study)."""
    from bmlr.train import parse_overrides
    from bmlr.tuning.search_space import resolve_search_space
    from bmlr.tuning.staged import run_staged
    from bmlr.tuning.study import Runtime, StudySettings, run_study

    try:
        check_dataset(args.dataset)
        check_study_options(args)
        check_storage(args.storage, "run")
        check_ray_options(args)
        search_space = "" if args.resume else str(resolve_search_space(args.search_space, args.dataset))
        embedded = args.dataset == "synthetic" and not args.data_root  # the generated default data set
        references = embedded if args.references is None else args.references
        settings = settings_from(StudySettings, args, search_space=search_space,
                                 overrides=parse_overrides(args.overrides), references=references)
        runtime = Runtime(address=args.address, num_cpus=args.num_cpus, verbose=args.verbose, top=args.top,
                          report=args.report, baseline_study=args.baseline_study)
        pull_study(settings, args)
        kind = resumed_kind(settings) if args.resume else None
        if args.strategy == "staged" or kind == "staged":
            outcome = run_staged(settings, runtime, args.stage2_samples, args.stage1_alpha, resume=args.resume)
        else:  # a search or a grid (a resumed surface): the study's strategy comes from its settings
            outcome = run_study(settings, runtime, resume=args.resume)
            if args.widen and kind != "surface":
                from bmlr.tuning.widen import run_widened

                outcome = run_widened(runtime, outcome) or outcome
    except start_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return exit_code(outcome)


def pull_study(settings: StudySettings, args: argparse.Namespace) -> None:
    """On object storage: a plain search only; the study's records (a new study with --name: to
    find it exists; a resumed one: to continue it, or every study's study.json to find the latest)
    and the default MLflow store pulled into the working copy before the study is planned."""
    from bmlr.tuning import remote
    from bmlr.tuning.store import StoreError, check_name, find_study
    from bmlr.tuning.study import StudyError

    if not remote.is_uri(settings.storage):
        return
    if args.strategy == "staged" or args.widen:
        raise StudyError(f"--storage {settings.storage}: object storage holds plain searches; "
                         f"{'--strategy staged' if args.strategy == 'staged' else '--widen'} needs a folder")
    name = settings.name and check_name(settings.name)  # a name never leads outside <storage>/<dataset>
    try:
        remote.pull_store(settings.storage)
        if args.resume and not name:
            remote.pull_infos(settings.storage, settings.dataset)
            name = find_study(settings.storage, settings.dataset, None).name
        if name:
            remote.Mirror(remote.resolve(settings.storage), f"{settings.dataset}/{name}").pull()
    except StoreError:  # no study there: resuming says so
        return
    except OSError as err:
        raise StudyError(f"--storage {settings.storage}: cannot read the study there ({err})") from None


def resumed_kind(settings: StudySettings) -> str | None:
    """The kind ("search", "surface" or "staged") of the study `--resume` points at, so each
    is continued by its own strategy. A study that cannot be found or read has none here:
    resuming it reports why."""
    from bmlr.tuning.store import StoreError, StudyStore, find_study

    try:
        folder = find_study(settings.storage, settings.dataset, settings.name)
        return StudyStore(folder).kind()
    except (StoreError, OSError):
        return None


# name: (its line in `bmlr-tune --help`, the function adding its options, its handler(args, argv) -> exit code)
COMMANDS = {
    "run": ("tune: one study (the default command)", add_run_options, run_main),
    "export": ("a trial (an MLflow run id) as a production YAML", add_export_options, export_main),
    "compare": ("compare balancing methods with the same search budget", add_compare_options, compare_main),
    "report": ("write a finished study's report", add_report_options, report_main),
    "surface": ("train and draw an alpha x beta surface (Figure 5)", add_surface_options, surface_main),
    "recipe": ("run one of the paper's tables (`recipe --list`)", add_recipe_options, recipe_main),
}


def build_parser(*commands: str) -> argparse.ArgumentParser:
    """The `bmlr-tune` parser: one subcommand per entry of COMMANDS, with the options of the
    `commands` named (the others are listed only: the comparisons' options name constants of
    modules that import torch, and `bmlr-tune --help` needs none of them)."""
    parser = command_parser("bmlr-tune", "Tune Balanced Multimodal Label Reshaping with Ray Tune (Optuna, ASHA), "
                            "tracked in MLflow. With no command the options are run's: `bmlr-tune --samples 8` "
                            "is `bmlr-tune run --samples 8`. `bmlr-tune COMMAND --help` lists a command's options; "
                            "docs/tuning.md explains them.")
    parser.usage = "%(prog)s [-h] [COMMAND] [OPTIONS ...]"
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND", required=True)
    for name, (line, add_options, _handler) in COMMANDS.items():
        command = sub.add_parser(name, prog=f"bmlr-tune {name}", help=line, formatter_class=parser.formatter_class)
        if name in commands:
            add_options(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse (a first argument that is an option means `run`), then run the command's handler."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]
    args = build_parser(argv[0]).parse_args(argv)
    _line, _add_options, handler = COMMANDS[args.command]
    from bmlr.train import sigterm_as_ctrl_c

    with sigterm_as_ctrl_c():  # SIGTERM (timeout, schedulers, Kubernetes) stops a study like Ctrl-C
        return handler(args, argv)


if __name__ == "__main__":
    sys.exit(main())
