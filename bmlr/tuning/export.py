"""Turn a trial's configuration into a production YAML for `python -m bmlr.train`.

A trial trains `--max-epochs` epochs with the study's one seed; the production run
trains the full `epochs` with all `seeds` of the search space's `fixed` part (the
`export.epochs` / `export.seeds` tags of the trial's MLflow run) and evaluates the
test split once per seed. Everything else is the trial's configuration as trained.

    bmlr-tune export --run-id <MLflow run id> -o best.yaml [--tracking-uri URI]

A study's parent run id exports the study's best trial.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from bmlr.config import FIELD_NAMES, Config, ConfigError, from_dict
from bmlr.fileio import abs_path, atomic_write_text

__all__ = ["ExportError", "production_config", "write_config", "export_run", "check_store"]

# where a user finds the store of a study, named by every "cannot find it" message
STORE_HINT = ("pass the study's store with --tracking-uri (e.g. sqlite:////abs/path/tune_runs/mlflow.db or "
              "http://127.0.0.1:5000), --storage <the study's --storage folder> or MLFLOW_TRACKING_URI")


class ExportError(RuntimeError):
    """The run cannot be exported."""


def production_config(trial_config: dict[str, Any], epochs: int | None = None,
                      seeds: list[int] | None = None) -> Config:
    """The trial's configuration with the production ``epochs`` and ``seeds`` (where given)
    and no run name."""
    data = dict(trial_config)
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
    lines.append(f"# Train it: python -m bmlr.train --config {path}")
    if path.is_dir():
        raise ExportError(f"{path} is a folder; give the YAML file to write")
    try:
        return atomic_write_text(path, "\n".join(lines) + "\n" + cfg.to_yaml())
    except OSError as err:  # a read-only folder, a path under a file: the temporary file is removed
        raise ExportError(f"cannot write {path}: {err.strerror or type(err).__name__}") from None


def check_store(uri: str, source: str) -> None:
    """ExportError where the store ``uri`` (named by ``source``: an option or a variable) cannot
    hold the run: a SQLite file that does not exist (opening it would create an empty one) or a
    relative SQLite path; TrackingError where a server does not answer. Creates nothing."""
    from bmlr.tuning import tracking

    if uri.startswith("sqlite:"):
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path.startswith("/"):
            raise ExportError(f"tracking URI {uri} ({source}): use an absolute path, sqlite:////abs/path/mlflow.db")
        if not Path(path).is_file():
            raise ExportError(f"no MLflow store at {path} ({source}); {STORE_HINT}")
    else:
        tracking.check_reachable(uri)


def _config_from_run(client, run) -> dict[str, Any]:
    """The trial's configuration: its `config.yaml` artifact, else its params (a run whose
    artifact store cannot give the file)."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as folder:
        try:
            local = client.download_artifacts(run.info.run_id, "config.yaml", folder)
            data = yaml.safe_load(Path(local).read_text())
        except (MlflowException, OSError, yaml.YAMLError):  # no such artifact, or not readable as YAML
            data = None
    if isinstance(data, dict):
        return data
    params = {k: yaml.safe_load(v) for k, v in run.data.params.items() if k in FIELD_NAMES}
    if not params:
        raise ExportError(f"run {run.info.run_id} has neither a config.yaml artifact nor configuration params; "
                          f"is it a bmlr-tune trial run?")
    return params


def export_run(run_id: str, out: str | Path, tracking_uri: str, epochs: int | None = None,
               seeds: list[int] | None = None) -> tuple[Path, Config]:
    """Write the production YAML of trial run ``run_id`` (a study's run: its best trial) to
    ``out``; epochs and seeds default to the run's ``export.*`` tags."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ExportError(f"run {run_id!r} not found at {tracking_uri} ({err}); if the study logged "
                          f"elsewhere, {STORE_HINT}") from None
    tags = run.data.tags
    if "best_run_id" in tags and "trial_id" not in tags:  # a study's parent run: its best trial
        print(f"run {run_id} is the study {tags.get('study', '')!r}; exporting its best trial "
              f"{tags['best_run_id']}")
        run = client.get_run(tags["best_run_id"])
        tags = run.data.tags
    trial_config = _config_from_run(client, run)
    if epochs is None and "export.epochs" in tags:
        epochs = int(tags["export.epochs"])
    if seeds is None and "export.seeds" in tags:
        seeds = yaml.safe_load(tags["export.seeds"])
    try:
        cfg = production_config(trial_config, epochs, seeds)
    except ConfigError as err:
        raise ExportError(f"run {run.info.run_id}: {err}") from None
    val = run.data.metrics.get("best_val_acc")
    header = [f"Exported by bmlr-tune from MLflow run {run.info.run_id}"
              + (f" (study {tags['study']}, trial {tags.get('trial_id', '?')})" if "study" in tags else ""),
              f"tracking URI: {tracking_uri}"]
    if val is not None:
        header.append(f"trial's best validation accuracy: {val:.4f} (epochs trained: {tags.get('epochs_trained', '?')})")
    return write_config(cfg, out, header), cfg
