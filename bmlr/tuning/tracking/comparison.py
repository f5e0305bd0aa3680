"""A comparison in MLflow: one parent run (tag `bmlr.role=comparison`) in the studies'
experiment; each row's study run nested under it (tags `comparison`, `arm`) with the row's
production metrics (`production.test_acc`, ...), an untuned row a nested run of its own; the
parent holds `<row>.acc` (mean), `<row>.acc_std`, per-modality accuracies and imbalance
ratios, and the tables. A row searched with several study seeds has one nested study run per
search (tag `study_seed`), each with its winner's production metrics, and on the parent
`<row>.acc_over_study_seeds` (mean over its searches' winners) and `..._std`."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import statistics

from bmlr.mlflow_store import client_for
from bmlr.tuning.compare.identity import RESULTS_FILE
from bmlr.tuning.compare.records import searches_of
from bmlr.tuning.compare.settings import slug
from bmlr.tuning.tracking.runs import TAG_LIMIT, create_parent_run, log_params

__all__ = ["ComparisonRun"]

BATCH = 500  # metrics per MLflow log_batch call (its limit is 1000)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


def _summary_metrics(summary: dict[str, dict[str, float]], prefix: str, short: bool) -> list:
    """`<prefix><name>` (mean) and `<prefix><name>_std` of a run's summary, finite values only;
    `short` drops the `test_` of the names."""
    from mlflow.entities import Metric  # imported where used: importing mlflow takes seconds

    now = int(time.time() * 1000)
    return [Metric(f"{prefix}{name.removeprefix('test_') if short else name}{suffix}", float(value), now, 0)
            for name, stats in summary.items()
            for suffix, value in (("", stats["mean"]), ("_std", stats["std"])) if _finite(value)]


def _over_study_seeds(row: dict[str, Any]) -> list:
    """`<row>.acc_over_study_seeds` (and `_std`) for a row of several searches: the mean test
    accuracy of each search's winner, averaged over the study seeds; nothing for one search."""
    from mlflow.entities import Metric

    accs = [t["results"]["summary"]["test_acc"]["mean"] for t in row.get("searches") or [] if t.get("results")]
    if len(row.get("searches") or []) < 2 or not accs:
        return []
    now, name = int(time.time() * 1000), f"{slug(row['label'])}.acc_over_study_seeds"
    stats = [(name, statistics.fmean(accs))] + ([(f"{name}_std", statistics.stdev(accs))] if len(accs) > 1 else [])
    return [Metric(key, float(value), now, 0) for key, value in stats]


@dataclass
class ComparisonRun:
    """The comparison's parent run in MLflow, and what is logged on it and under it."""

    uri: str
    experiment_id: str
    run_id: str
    name: str  # the comparison's name

    @property
    def client(self):
        return client_for(self.uri)

    @classmethod
    def create(cls, uri: str, experiment_id: str, name: str, tags: dict[str, Any],
               params: dict[str, Any]) -> "ComparisonRun":
        """A new parent run, tagged with the rows and parametrised with the budget."""
        return cls(uri, experiment_id, create_parent_run(uri, experiment_id, name, tags, params), name)

    def reopen(self) -> None:
        """A resumed comparison's run is running again."""
        self.client.update_run(self.run_id, status="RUNNING")

    def fail(self) -> None:
        self.client.set_terminated(self.run_id, "FAILED")

    # --- studies -------------------------------------------------------------------------
    def nest_study(self, run_id: str, label: str, study_seed: int | None = None) -> None:
        """Put a row's study run (``run_id``) under the comparison run (and tag it with the row
        and, where given, the TPE seed of this search of the row)."""
        for key, value in (("mlflow.parentRunId", self.run_id), ("comparison", self.name),
                           ("comparison_run_id", self.run_id), ("arm", label)):
            self.client.set_tag(run_id, key, value)
        if study_seed is not None:
            self.client.set_tag(run_id, "study_seed", str(study_seed))

    def link_study(self, label: str, study_run_id: str) -> None:
        self.client.set_tag(self.run_id, f"study.{slug(label)}", study_run_id)

    # --- production ------------------------------------------------------------------------
    def log_rows(self, rows: list[dict[str, Any]], files: list[Path], folders: list[Path],
                 interrupted: bool, tags: dict[str, str] | None = None) -> None:
        """Each finished row's production metrics (on the parent and on the row's run), the
        `files` and `folders` as artifacts, ``tags`` (the verdicts), which rows failed, and the run's end."""
        client = self.client
        for key, value in (tags or {}).items():
            client.set_tag(self.run_id, key, value[:TAG_LIMIT])
        metrics = []
        for row in rows:
            res = row.get("results")
            if res:
                metrics += _summary_metrics(res["summary"], f"{slug(row['label'])}.", short=True)
            metrics += _over_study_seeds(row)
            for search in searches_of(row):
                if search.get("results"):
                    self._log_row_run(client, row, search)
        for i in range(0, len(metrics), BATCH):
            client.log_batch(self.run_id, metrics=metrics[i:i + BATCH])
        for path in files:
            client.log_artifact(self.run_id, str(path))
        for folder in folders:
            if folder.is_dir():
                client.log_artifacts(self.run_id, str(folder), folder.name)
        failed = [r["label"] for r in rows if not r.get("results")]
        client.set_tag(self.run_id, "arms.failed", ", ".join(failed) or "none")
        trials = {t.get("trials") for r in rows for t in searches_of(r) if "trials" in t}
        if trials:
            client.set_tag(self.run_id, "equal_trials", str(len(trials) == 1).lower())
        status = "KILLED" if interrupted else ("FAILED" if len(failed) == len(rows) else "FINISHED")
        client.set_terminated(self.run_id, status)

    def _log_row_run(self, client, row: dict[str, Any], search: dict[str, Any]) -> None:
        """Production metrics of one of `row`'s searches (the row itself where it has one) on
        the search's study run (tuned) or on a nested run of the row's own (untuned)."""
        res = search["results"]
        run_id = search.get("study_run_id") or search.get("arm_run_id")
        if run_id is None:
            tags = {"mlflow.parentRunId": self.run_id, "bmlr.role": "production", "comparison": self.name,
                    "arm": row["label"], "method": row["method"], "run_dir": search["run_dir"]}
            run_id = client.create_run(self.experiment_id, run_name=f"{self.name}/{slug(row['label'])}",
                                       tags=tags).info.run_id
            log_params(client, run_id, res["config"])
            search["arm_run_id"] = run_id
        client.log_batch(run_id, metrics=_summary_metrics(res["summary"], "production.", short=False))
        client.log_artifact(run_id, str(Path(search["run_dir"]) / RESULTS_FILE), "production")
        if not search.get("study_run_id"):
            client.set_terminated(run_id, "FINISHED")
