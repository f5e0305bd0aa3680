"""The command-line pieces every `bmlr-tune` command shares, declared once.

A study (`bmlr-tune`), a surface (`bmlr-tune surface`) and a comparison (`bmlr-tune compare`,
`bmlr-tune recipe`) take the same data, search-budget, Ray and result options; each parser
composes the groups below and adds its own. :func:`settings_from` turns parsed options (or
another settings object) into a settings dataclass field by field, so no command lists the
fields again.

This module imports nothing from `bmlr.tuning` but the `--score` grammar's help, the scheduler names
and the Ray checks that run before anything is created, all from modules that import only the
standard library at their top: building a parser imports neither torch nor Ray nor MLflow, so
`bmlr-tune --help` is quick. The data sets are checked after parsing (:func:`check_dataset`).
"""
from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from bmlr.tuning.ray_backend import AUTO, CONNECT_TIMEOUT_S, SCHEDULERS, check_address, check_local, cluster_address
from bmlr.tuning.scores import SCORE_HELP

__all__ = ["HelpFormatter", "command_parser", "add_data_options", "check_dataset", "check_storage", "add_set_option",
           "add_asha_options", "add_ray_options", "check_ray_options", "add_max_failures_option",
           "add_result_options", "add_verbose_option", "settings_from"]

Settings = TypeVar("Settings")


class HelpFormatter(argparse.HelpFormatter):
    """Shows a default only where the help text does not already explain it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" not in text and action.default not in (None, [], False, argparse.SUPPRESS):
            text += f" (default: {action.default})"
        return text


def command_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with :class:`HelpFormatter` (`bmlr-tune`'s, whose subcommands use it too)."""
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)


def add_data_options(group, data_root_help: str = "", search_space_help: str = "") -> None:
    """`--dataset`, `--data-root`, `--search-space`."""
    group.add_argument("--dataset", default="synthetic", help="a registered data set, e.g. ave or cremad (an unknown "
                       "name lists them; manifest: your own, docs/data.md)")
    group.add_argument("--data-root", help=data_root_help or "the data set's folder (default: the generated "
                       "synthetic data set)")
    group.add_argument("--search-space", help=search_space_help or "search-space YAML (default: "
                       "search_spaces/<dataset>.yaml, looked up in the current folder, then in the project)")


def check_dataset(name: str) -> None:
    """ConfigError where `--dataset` names no registered data set; after parsing, as the
    registry's modules import torch."""
    from bmlr.config import ConfigError
    from bmlr.data import DATASETS

    if name not in DATASETS:
        raise ConfigError(f"--dataset {name}: no such data set; registered: {', '.join(DATASETS.names())} "
                          f"(manifest: your own, docs/data.md)")


def add_set_option(group, help_text: str) -> None:
    """`--set KEY=VALUE` (repeatable) into `overrides`, parsed by `bmlr.train.parse_overrides`."""
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def add_asha_options(group) -> None:
    """The search budget besides the number of trials: ASHA's bounds, the seed, retries."""
    group.add_argument("--max-epochs", type=int, help="epochs a trial trains at most (ASHA's max_t; default: the "
                       "search space's fixed epochs). The exported YAML keeps the full fixed epochs")
    group.add_argument("--grace-period", type=grace_period, metavar="EPOCHS|auto",
                       help="ASHA: epochs before a trial can be stopped; auto: none is stopped until the first 4 "
                       "trials that ran to the end show from which epoch their ranking holds (default: the search "
                       "space's `grace_period:`, else auto)")
    group.add_argument("--reduction-factor", type=int, default=3, help="ASHA: keep 1/factor of trials per rung")
    group.add_argument("--seed", type=int, default=0, help="the training seed of every trial and the TPE seed")
    group.add_argument("--score", help=f"a trial's score, which Optuna, ASHA's rungs, the trials table and the "
                       f"export all use: {SCORE_HELP} (default: the search space's `score:`, else best)")
    group.add_argument("--scheduler", choices=SCHEDULERS,
                       help="early stopping: asha (one bracket), hyperband (every bracket: a hedge when learning "
                       "curves rank configurations late), none (every trial to --max-epochs); default: the search "
                       "space's `scheduler:`, else asha")
    group.add_argument("--confirm", type=int, default=0, metavar="K",
                       help="after the search, train the top K distinct configurations again with new seeds "
                       "(--confirm-seeds) at the production epochs and export the best mean (default 0: off)")
    group.add_argument("--confirm-seeds", type=int, default=3, metavar="S", help="seeds of the confirmation")
    add_max_failures_option(group)


def grace_period(text: str) -> int | str:
    """``--grace-period``: a whole number of epochs or ``auto``."""
    if text == AUTO:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of epochs or auto, got {text!r}") from None


def add_max_failures_option(group) -> None:
    group.add_argument("--max-failures", type=int, default=0,
                       help="retries of a failed trial (from its last finished epoch) before it counts as failed")


def add_ray_options(group) -> None:
    """Trials at once, resources per trial, the Ray cluster."""
    group.add_argument("--concurrent", type=int, help="trials at once within a study (default: as many as the "
                       "resources allow)")
    group.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs (and torch threads) per trial")
    group.add_argument("--gpus-per-trial", type=float,
                       help="GPUs per trial; fractional values share a GPU, e.g. 0.25 (default: 1 where the "
                       "cluster has GPUs, else 0)")
    group.add_argument("--address", help="an existing Ray cluster (e.g. 127.0.0.1:6379 or auto); default: "
                       "$RAY_ADDRESS, else start a local one")
    group.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    group.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S, metavar="SECONDS",
                       help="how long to wait for the cluster at --address to answer before giving up")


def check_storage(storage: str, command: str | None = None) -> None:
    """StudyError where `--storage` is, or lies under, something other than a folder; for object
    storage (a URI, :mod:`bmlr.tuning.remote`), where the command cannot use it (only `run` and
    `export` can) or it cannot be reached."""
    from bmlr.tuning import remote
    from bmlr.tuning.study import StudyError

    if remote.is_uri(storage):
        if command not in ("run", "export"):
            raise StudyError(f"--storage {storage}: object storage holds studies run by `bmlr-tune run` (and their "
                             f"--resume); `bmlr-tune {command}` needs a folder (a shared one on a cluster)")
        try:
            return remote.check(storage)
        except remote.RemoteError as err:
            raise StudyError(str(err)) from None
    path = Path(storage).expanduser().absolute()
    for where in (path, *path.parents):
        if where.exists():
            if not where.is_dir():
                raise StudyError(f"--storage {storage}: {where} is a file, not a folder; give a folder for the "
                                 f"study folders (it is created if missing)")
            return


def check_ray_options(args: argparse.Namespace) -> None:
    """Before anything is created: the cluster at ``--address`` answers (within
    ``--connect-timeout``), or the local Ray instance can run a trial (``--num-cpus``,
    ``--cpus-per-trial``, ``--gpus-per-trial``). RayStartError otherwise."""
    address = cluster_address(args.address)  # what Ray itself would join
    if address:
        check_address(address, args.connect_timeout)
    else:
        check_local(args.num_cpus, args.cpus_per_trial, args.gpus_per_trial)


def add_result_options(group, storage_help: str, name_help: str, resume_help: str) -> None:
    """Where results go: the storage folder, MLflow, the name, `--resume`."""
    group.add_argument("--storage", default="tune_runs", help=storage_help)
    group.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                       "sqlite:////<abs storage>/mlflow.db)")
    group.add_argument("--experiment", help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else "
                       "bmlr-tune-<dataset>)")
    group.add_argument("--name", help=name_help)
    group.add_argument("--resume", action="store_true", help=resume_help)


def add_verbose_option(group) -> None:
    group.add_argument("-v", "--verbose", type=int, default=1, choices=(0, 1, 2),
                       help="0: summaries only; 1: the study's progress (a line per ended trial, trials done, "
                       "the best so far, time left, a table each minute); 2: also Ray Tune's own output")


def settings_from(cls: type[Settings], source: Any, skip: tuple[str, ...] = (), **values: Any) -> Settings:
    """A `cls` (a settings dataclass) whose fields take `values`, else the attribute of the same
    name of `source` (parsed options or another settings object) where it has one, else their
    defaults; `skip` names fields never taken from `source`."""
    taken = {f.name: getattr(source, f.name) for f in fields(cls)
             if f.init and f.name not in skip and f.name not in values and hasattr(source, f.name)}
    return cls(**taken, **values)
