"""How a study's runs read in the MLflow UI: a trial run's name (what was sampled), the
winner's marker and description, the study's runs-table view (saved in the experiment as an
MLflow UI shared view), and where to look (the `mlflow ui` command, the links to that view and
the parent run).

A leaf module of plain strings; :mod:`bmlr.tuning.tracking.runs` writes them to MLflow.
"""
from __future__ import annotations

import math
import shlex
import urllib.parse
from typing import Any, Iterable

from bmlr.mlflow_store import BEST_MARK  # leads the best trial's run name (export strips it there)

__all__ = ["BEST_MARK", "NOTE_TAG", "VIEW_TAG_PREFIX", "compact", "trial_run_name", "plain_name",
           "table_view", "view_key", "ui_lines"]

NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
SHORT_KEYS = {"alpha": "a", "beta": "b"}  # the paper's two reshaping knobs, by their one-letter names
UI_PORT = 5000  # `mlflow ui`'s default port
CLASSIC_VIEW = "workflowType=machine_learning"  # MLflow 3 opens its GenAI pages without it
# the MLflow UI's shared views: an experiment tag holding the view as JSON, opened by the runs
# table's `viewStateShareKey` URL parameter (what the UI's own "Share" button writes)
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
RUN_NAME_COLUMN = "attributes.`Run Name`"
STATUS_TAGS = ("trial_status", "epochs_trained")


def compact(value: Any) -> str:
    """A value in a few characters: floats to 3 significant digits, small or large ones as
    ``1.7e-3``; booleans as true/false; anything else as ``str``."""
    if isinstance(value, bool):
        return str(value).lower()
    if not isinstance(value, float) or not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-2 <= abs(value) < 1e4:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def trial_run_name(sampled: dict[str, Any], order: Iterable[str] = ()) -> str:
    """A trial run's name from its sampled values, keys in ``order`` first (the search space's),
    e.g. ``a=1.36 b=0.61 lr=1.7e-3 concat``: a text choice shows as its value alone."""
    order = list(order)
    keys = [k for k in order if k in sampled] + [k for k in sampled if k not in order]
    parts = []
    for key in keys:
        value = sampled[key]
        parts.append(value if isinstance(value, str) else f"{SHORT_KEYS.get(key, key)}={compact(value)}")
    return " ".join(parts) or "trial"


def plain_name(name: str | None) -> str:
    """A run name without the best's marker."""
    name = name or ""
    return name[len(BEST_MARK):] if name.startswith(BEST_MARK) else name


def view_key(parent_run_id: str) -> str:
    """The share key of a study's runs-table view (one per parent run)."""
    return f"bmlr-{parent_run_id}"


def table_view(parent_run_id: str, sampled: Iterable[str], score: str) -> dict[str, Any]:
    """The study's runs table as the MLflow UI's view state: its trials only (the parent's
    nested runs), best ``score`` first, the columns the score, the sampled keys in the search
    space's order and the trials' status, the run-name column wide enough for the names."""
    columns = ([f"metrics.`{score}`"] + [f"params.`{key}`" for key in sampled]
               + [f"tags.`{tag}`" for tag in STATUS_TAGS])
    return {"searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
            "orderByKey": f"metrics.`{score}`", "orderByAsc": False,
            "selectedColumns": columns, "columnOrder": [RUN_NAME_COLUMN, *columns],
            "columnWidths": {RUN_NAME_COLUMN: 340}}


def ui_lines(tracking_uri: str, experiment_id: str, parent_run_id: str, view: str | None = None) -> list[str]:
    """How to open the study in the MLflow UI: for a SQLite store the `mlflow ui` command and
    links on its default port; for a server, links on the server. The runs-table link opens
    the classic (model training) table, in the shared view ``view`` where one was saved."""
    parsed = urllib.parse.urlparse(tracking_uri)
    if parsed.scheme in ("http", "https"):
        base, lines = tracking_uri.rstrip("/"), []
    else:
        base = f"http://127.0.0.1:{UI_PORT}"
        lines = [f"  open it: mlflow ui --backend-store-uri {shlex.quote(tracking_uri)}   (then the links below)"]
    experiment = f"{base}/#/experiments/{experiment_id}"
    table = f"{experiment}/runs?{CLASSIC_VIEW}" + (f"&viewStateShareKey={view}" if view else "")
    return lines + [f"  runs table: {table}", f"  parent run: {experiment}/runs/{parent_run_id}?{CLASSIC_VIEW}"]
