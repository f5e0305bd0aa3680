"""Which production run is which: a run's identity (its configuration), whether a run
folder holds a finished run of a configuration, and finding one to reuse (`--reuse`)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from bmlr.config import Config
from bmlr.fileio import read_json
from bmlr.methods import resolved_method_args

__all__ = ["RUNTIME_KEYS", "RESULTS_FILE", "run_key", "load_results", "is_complete", "is_finished_run_of",
           "find_reusable"]

# Config keys that do not change what is trained: left out of a run's identity (--reuse)
RUNTIME_KEYS = ("name", "output_dir", "threads", "num_workers", "cache_dir", "source")
RESULTS_FILE = "results.json"  # written by bmlr.train in the run folder


def run_key(cfg: Config | dict, method_args: dict[str, Any] | None = None) -> str:
    """The identity of a production run: its configuration without runtime-only keys, with
    `method_args` replaced by the arguments the method trains with (its defaults included):
    for a configuration about to be trained, computed here; for a finished run, what its
    results.json recorded (runs from before that record keep the arguments as given, so a run
    trained under a method's old defaults never matches a configuration of the new ones)."""
    data = cfg.to_dict() if isinstance(cfg, Config) else dict(cfg)
    data = {k: v for k, v in data.items() if k not in RUNTIME_KEYS}
    if isinstance(cfg, Config):
        method_args = resolved_method_args(cfg.method, cfg.method_args)
    if method_args is not None:
        data["method_args"] = method_args
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_results(run_dir: str | Path) -> dict | None:
    """The run's results.json, or None where there is none yet. A file that cannot be read
    or parsed counts as none: the run is then trained (again) rather than trusted."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def is_complete(results: dict | None, seeds: list[int]) -> bool:
    """Whether `results` covers exactly `seeds` and has its summary (the run finished)."""
    return bool(results) and [s["seed"] for s in results.get("seeds", [])] == list(seeds) and "summary" in results


def is_finished_run_of(results: dict | None, cfg: Config) -> bool:
    """Whether `results` is a finished run of configuration `cfg` (same identity, all seeds)."""
    return is_complete(results, cfg.seeds) and run_key(results["config"], results.get("method_args")) == run_key(cfg)


def find_reusable(cfg: Config, dataset_dir: Path, exclude: Path) -> Path | None:
    """A finished run of `cfg` in another comparison under `dataset_dir` (not `exclude`)."""
    for path in sorted(dataset_dir.glob(f"*/runs/*/{RESULTS_FILE}")):
        if path.parent.parent.parent == exclude:
            continue
        if is_finished_run_of(load_results(path.parent), cfg):
            return path.parent
    return None
