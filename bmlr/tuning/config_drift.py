"""What a study trains that the data set's own configuration (`configs/<dataset>.yaml`) does
not: the fixed keys whose values differ, so that the start-up banner and the parent run say
when a study tunes another model, budget or input size than the one the user trains.

Pure: a Config in, a list of differences out; the configuration file is found beside the
search spaces (the project root, else the copy installed with the package), and a data set
without one has nothing to compare.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from bmlr.config import Config, load_config
from bmlr.tuning.search_space import project_root, shipped_file

__all__ = ["Drift", "dataset_config_path", "config_drift", "describe_drift"]

# where a run lives and what it is called: never a difference in what is trained
PLACE_KEYS = frozenset({"data_root", "cache_dir", "output_dir", "name", "device"})


@dataclass(frozen=True)
class Drift:
    key: str
    study: Any  # the study's value (the production configuration's)
    config: Any  # configs/<dataset>.yaml's value


def dataset_config_path(dataset: str, root: Path | None = None) -> Path | None:
    """`configs/<dataset>.yaml` of ``root``, else (no ``root``) of the checkout, else of the
    package as installed (its package data); None where there is none."""
    path = (root or project_root()) / "configs" / f"{dataset}.yaml"
    if path.is_file():
        return path
    return None if root is not None else shipped_file("configs", f"{dataset}.yaml")


def config_drift(production: Config, searched: Iterable[str], root: Path | None = None) -> tuple[Path | None, list[Drift]]:
    """The fixed keys of ``production`` (a study's production configuration) whose values
    differ from its data set's configuration file, searched keys and places left out; the
    file too (None where the data set has none: no differences)."""
    path = dataset_config_path(production.dataset, root)
    if path is None:
        return None, []
    reference = load_config(path).to_dict()
    skip = set(searched) | PLACE_KEYS
    drift = [Drift(key, value, reference.get(key)) for key, value in production.to_dict().items()
             if key not in skip and key != "method" and value != reference.get(key)]
    return path, drift


def describe_drift(path: Path | None, drift: list[Drift]) -> str:
    """One line for the banner: which fixed keys differ from the file, or that none do."""
    if path is None:
        return ""
    name = f"configs/{path.name}"
    if not drift:
        return f"every fixed key as in {name}"
    return f"fixed keys that differ from {name}: " + ", ".join(f"{d.key}={d.study} ({d.config} there)"
                                                                for d in drift)
