"""Turn a trial's configuration into a production YAML for `python -m bmlr.train`.

A trial trains `--max-epochs` epochs with the study's one seed; the production run
trains the full `epochs` with all `seeds` of the search space's `fixed` part (the
`export.epochs` / `export.seeds` tags of the trial's MLflow run) and evaluates the
test split once per seed. Everything else is the trial's configuration as trained.
The YAML's `source` names the store, experiment, run, study and trial it reproduces, so
that `bmlr.train` logs the production run to that store with tags linking to the trial.

    bmlr-tune export --run-id <MLflow run id> -o best.yaml [--tracking-uri URI]

A study's parent run id exports the study's best trial. (`python -m bmlr.train --from-run
<run id>` trains it without the file; both read the run through `bmlr.mlflow_store`.)
"""
from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

from bmlr.config import SOURCE_KEYS, Config, ConfigError, from_dict
from bmlr.fileio import abs_path, atomic_write_text
from bmlr.mlflow_store import BEST_MARK, STORE_HINT, TrackingError, check_store, fetch_trial

__all__ = ["ExportError", "production_config", "source_of", "write_config", "export_run", "check_store",
           "STORE_HINT", "train_command"]


class ExportError(RuntimeError):
    """The run cannot be exported."""


def train_command(path: str | Path) -> str:
    """The command that trains the configuration file ``path``: the installed ``bmlr-train``,
    else (a checkout without the package installed) ``python -m bmlr.train``."""
    program = "bmlr-train" if shutil.which("bmlr-train") else "python -m bmlr.train"
    return f"{program} --config {shlex.quote(str(path))}"


def production_config(trial_config: dict[str, Any], epochs: int | None = None,
                      seeds: list[int] | None = None, source: dict[str, Any] | None = None) -> Config:
    """The trial's configuration with the production ``epochs`` and ``seeds`` (where given),
    no run name and ``source`` (see :func:`source_of`; None keeps the trial's own)."""
    data = dict(trial_config)
    if source is not None:
        data["source"] = source
    if epochs is not None:
        data["epochs"] = int(epochs)
    if seeds is not None:
        data["seeds"] = list(seeds)
    data["name"] = None  # bmlr.train names the run folder itself and never overwrites
    return from_dict(data, source="exported configuration")


def write_config(cfg: Config, path: str | Path, header: list[str] | None = None) -> Path:
    """``cfg`` as a YAML file for ``bmlr.train`` (atomically), ``header`` lines as comments."""
    path = abs_path(path)
    lines = [f"# {line}" for line in (header or [])]
    uri = (cfg.source or {}).get("tracking_uri")
    lines.append(f"# Train it: python -m bmlr.train --config {shlex.quote(str(path))}"
                 + (f"  (logs to MLflow at {uri}; --no-mlflow: not logged)" if uri else ""))
    if path.is_dir():
        raise ExportError(f"{path} is a folder; give the YAML file to write")
    try:
        return atomic_write_text(path, "\n".join(lines) + "\n" + cfg.to_yaml())
    except OSError as err:  # a read-only folder, a path under a file: the temporary file is removed
        raise ExportError(f"cannot write {path}: {err.strerror or type(err).__name__}") from None


def source_of(**where: Any) -> dict[str, str]:
    """A Config ``source`` from keyword arguments named as :data:`bmlr.config.SOURCE_KEYS`
    (tracking_uri, experiment_id, run_id, run_name, study, trial_id, parent_run_id); empty
    values are left out and a run name loses the best trial's marker."""
    unknown = sorted(set(where) - set(SOURCE_KEYS))
    if unknown:
        raise TypeError(f"source_of: unknown key(s) {unknown}; expected some of {SOURCE_KEYS}")
    if where.get("run_name"):
        where["run_name"] = str(where["run_name"]).removeprefix(BEST_MARK)
    return {k: str(v) for k, v in where.items() if v not in (None, "")}


def export_run(run_id: str, out: str | Path, tracking_uri: str, epochs: int | None = None,
               seeds: list[int] | None = None, as_trained: bool = False) -> tuple[Path, Config]:
    """Write the production YAML of trial run ``run_id`` (a study's run: its best trial) to
    ``out``; epochs and seeds default to the run's ``export.*`` tags. ``as_trained``: the trial's
    own seed and schedule instead, so that training the file repeats the trial's epochs exactly
    (its first ``epochs_trained`` epochs: the schedule's horizon is the trial's)."""
    try:
        trial = fetch_trial(tracking_uri, run_id, log=print)
    except TrackingError as err:
        raise ExportError(str(err)) from None
    if as_trained:
        epochs, seeds = trial.config.get("epochs"), trial.config.get("seeds")
    try:
        cfg = production_config(trial.config, epochs if epochs is not None else trial.epochs,
                                seeds if seeds is not None else trial.seeds, trial.source)
    except ConfigError as err:
        raise ExportError(f"run {trial.run_id}: {err}") from None
    src = trial.source
    header = [f"Exported by bmlr-tune from MLflow run {trial.run_id}"
              + (f" (study {src['study']}, trial {src.get('trial_id', '?')})" if "study" in src else ""),
              f"tracking URI: {tracking_uri}",
              f"Or without this file: python -m bmlr.train --from-run {trial.run_id} --tracking-uri {tracking_uri}"]
    if as_trained:
        header.append(f"as trained: the trial's seed {cfg.seeds} and schedule ({cfg.epochs} epochs); its first "
                      f"{trial.tags.get('epochs_trained', '?')} epochs repeat the trial's")
    val = trial.metrics.get("best_val_acc")
    if val is not None:
        header.append(f"trial's best validation accuracy: {val:.4f} (epochs trained: "
                      f"{trial.tags.get('epochs_trained', '?')})")
    return write_config(cfg, out, header), cfg
