"""What defines a comparison (`ComparisonSettings`), its checks, and the study settings of
one tuned row derived from it."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bmlr.fileio import timestamp
from bmlr.tuning.options import settings_from
from bmlr.tuning.search_space import project_root
from bmlr.tuning.recipes import Arm
from bmlr.tuning.study import StudySettings
from bmlr.tuning.tracking import git_commit, source_tags

__all__ = ["PROTOCOLS", "ComparisonError", "ComparisonSettings", "mlflow_record", "slug"]

# ComparisonSettings fields a row's study does not take over: a comparison's kind and `--set`
# values are not a study's (the values are already fixed in the row's search space)
NOT_FOR_STUDIES = ("kind", "overrides", "name")
PROTOCOLS = ("authors", "shared")  # each row's optimizer settings: its method's authors' or the space's shared
# A comparison's budget unless --samples or --samples-per-key says otherwise: TRIALS_PER_KEY trials
# per key a row searches, at least MIN_SAMPLES. Measured (bench/bench_keys.py, docs/comparisons.md):
# on 10 sub-spaces of three seed-averaged grids (digits, synthetic v3, AV-MNIST-hard; 1 to 5 keys)
# the default search settled within 1 to 4 trials per searched key (4: lr alone on 5 values). The
# floor: a grid's 3 to 5 values per key understate a continuous range, and TPE's first 10 trials
# are random; 16 was the equal budget before, so rows of up to 4 keys keep it.
TRIALS_PER_KEY = 4
MIN_SAMPLES = 16


class ComparisonError(RuntimeError):
    """The comparison cannot start or continue; the message says why."""


def slug(label: str) -> str:
    """A label as a file, study and MLflow key name ('concat+bmlr' -> 'concat-bmlr')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "arm"


@dataclass
class ComparisonSettings:
    """Everything that defines a comparison; stored in comparison.json and reused by --resume."""

    dataset: str = "synthetic"
    arms: list[dict[str, Any]] = field(default_factory=list)  # Arm as {label, method, fixed}
    kind: str = "compare"  # "compare" or "recipe <name>"
    search_space: str = ""  # absolute path
    data_root: str | None = None
    tune: bool = True
    samples: int = 16
    max_epochs: int | None = None
    grace_period: int | str | None = None  # epochs or "auto"; None: the search space's `grace_period:`, else auto
    reduction_factor: int = 3
    seed: int = 0
    max_failures: int = 0
    seeds: list[int] | None = None  # production seeds (None: the search space's)
    epochs: int | None = None  # production epochs (None: the search space's)
    overrides: dict[str, Any] = field(default_factory=dict)
    concurrent: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: one GPU per trial where the cluster has GPUs
    jobs: int = 1
    storage: str = "tune_runs"
    tracking_uri: str | None = None
    experiment: str | None = None
    name: str | None = None
    reference: str | None = None  # label of the "before" row (default: baseline, else the first arm)
    layout: str = "methods"
    reuse: bool = False  # reuse finished production runs of identical configurations in --storage
    # the fusion is searched (`--search-fusion`) rather than fixed at concat in each row (the rows
    # in `arms` carry the fixed fusion; a comparison.json from before this field searched it)
    search_fusion: bool = False
    # "authors": each row trains with its method's authors' optimizer settings
    # (bmlr.methods.protocols); "shared": every row with the search space's shared settings (what
    # a comparison.json from before this field did, hence the default here; `compare` passes
    # "authors" unless --protocol shared)
    protocols: str = "shared"
    study_seeds: int = 1  # studies per tuned row, each with its own TPE seed (`--study-seeds`)
    # trials per searched key of each tuned row (`--samples-per-key`, and by default TRIALS_PER_KEY):
    # a row searching more keys gets more trials, at least `min_samples`; None: `samples` for every
    # row (`--samples`, and every comparison.json from before the per-key default)
    samples_per_key: int | None = None
    min_samples: int = 1

    def row_samples(self, keys: int) -> int:
        """The trials of a tuned row that searches ``keys`` keys."""
        if not self.samples_per_key:
            return self.samples
        return max(self.min_samples, self.samples_per_key * max(1, keys))

    def budget_text(self) -> str:
        """The budget in words: "16 trials per row", "4 trials per searched key, at least 16"."""
        if not self.samples_per_key:
            return f"{self.samples} trials per row"
        floor = f", at least {self.min_samples}" if self.min_samples > 1 else ""
        return f"{self.samples_per_key} trials per searched key{floor}"

    def arm_list(self) -> list[Arm]:
        return [Arm(a["label"], a["method"], tuple((k, v) for k, v in a.get("fixed", {}).items()),
                    protocol=self.protocols == "authors") for a in self.arms]

    def check(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ComparisonError(message)

        need(bool(self.arms), "nothing to compare: give --methods (or a recipe)")
        labels = [a["label"] for a in self.arms]
        need(len(set(labels)) == len(labels), f"each method (row) can be compared once, got {labels}")
        need(self.samples >= 1, f"--samples must be >= 1, got {self.samples}")
        need(self.samples_per_key is None or (isinstance(self.samples_per_key, int) and self.samples_per_key >= 1),
             f"--samples-per-key must be an integer >= 1, got {self.samples_per_key}")
        need(isinstance(self.min_samples, int) and self.min_samples >= 1,
             f"min_samples must be an integer >= 1, got {self.min_samples}")
        need(self.jobs >= 1, f"--jobs must be >= 1, got {self.jobs}")
        need(isinstance(self.study_seeds, int) and self.study_seeds >= 1,
             f"--study-seeds must be an integer >= 1 (studies per row, each with its own TPE seed), "
             f"got {self.study_seeds}")
        need(self.protocols in PROTOCOLS, f"--protocol must be one of {PROTOCOLS}, got {self.protocols!r}")
        need(self.seeds is None or (len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds)),
             f"--seeds must be distinct integers, got {self.seeds}")
        need(all(0 <= x < 2**32 for x in [self.seed, *(self.seeds or [])]),
             f"--seed and --seeds must be from 0 to 2**32 - 1 (NumPy's and Optuna's seeds), got {self.seed} and "
             f"{self.seeds}")
        need(self.epochs is None or self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        need(self.reference is None or self.reference in labels,
             f"--reference {self.reference!r} is not one of the rows {labels}")
        for key in self.overrides:
            need(key not in ("dataset", "data_root", "method", "seeds"),
                 f"--set {key}=...: use --{key.replace('_', '-')}{' / --methods' if key == 'method' else ''}")

    def fill_defaults(self) -> None:
        """The name (`<compare|recipe-name>-<tuned|untuned>-<timestamp>`) and the reference row
        (baseline, else the first row) where none was given."""
        kind = "compare" if self.kind == "compare" else slug(self.kind)
        self.name = self.name or f"{kind}-{'tuned' if self.tune else 'untuned'}-{timestamp()}"
        if self.reference is None:
            labels = [a["label"] for a in self.arms]
            self.reference = "baseline" if "baseline" in labels else labels[0]

    def study_settings(self, arm: Arm, space_file: Path, folder: Path, outer_run_id: str | None) -> StudySettings:
        """The study of tuned row `arm`: this comparison's budget, resources and tracking, the
        row's method and search space (`space_file`), in `folder`, nested under `outer_run_id`."""
        return settings_from(StudySettings, self, skip=NOT_FOR_STUDIES, search_space=str(space_file),
                             method=arm.method, name=folder.name, outer_run_id=outer_run_id)


def mlflow_record(s: ComparisonSettings, arms: list[Arm], spaces: dict[str, Any], data_info: dict[str, Any],
                  folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The comparison's MLflow parent run: its tags (the rows) and params (the budget)."""
    tags = {"bmlr.role": "comparison", "comparison": s.name, "dataset": s.dataset, "kind": s.kind,
            "tuned": str(s.tune).lower(), "arms": ", ".join(a.label for a in arms),
            "methods": ", ".join(dict.fromkeys(a.method for a in arms)), "comparison_dir": str(folder),
            "search_space": s.search_space}
    commit = git_commit(project_root())
    if commit:
        tags["git_commit"] = commit
    tags.update(source_tags(commit, "bmlr-tune compare"))
    params = {"tuned": s.tune, "production_seeds": s.seeds or "search space", "data_sizes": data_info.get("sizes"),
              "overrides": s.overrides or "none", "reference": s.reference}
    if s.tune:
        params.update({"samples": s.samples, "samples_per_key": s.samples_per_key or "none",
                       "min_samples": s.min_samples, "max_epochs": s.max_epochs or "fixed epochs",
                       "grace_period": s.grace_period or "search space", "reduction_factor": s.reduction_factor,
                       "seed": s.seed, "study_seeds": s.study_seeds, "searcher": "optuna-tpe", "scheduler": "asha"})
        params.update({f"searched.{slug(label)}": ", ".join(sp.params) for label, sp in spaces.items()})
    return tags, params
