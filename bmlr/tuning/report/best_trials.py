"""Section 1: the best trials table (validation), best first, failed trials last: each trial's
score by the study's rule beside its binomial standard error (:mod:`.scoring`)."""
from __future__ import annotations

from typing import Any

from bmlr.fileio import finite_or_none
from bmlr.tuning.report.page import Page, pct, val
from bmlr.tuning.report.scoring import score_label, se_cell
from bmlr.tuning.scores import rule_of
from bmlr.tuning.report.study_view import Context
from bmlr.tuning.selection import rank, score

__all__ = ["table_order", "best_trials_table", "add_best_trials"]


def table_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials with a score in the selection rule's order, failed ones included where their
    score puts them (the table shows what happened, not only who may win), then trials
    without a score in their own order."""
    listed = [dict(r, status="listed", row_index=i) for i, r in enumerate(rows)]
    return [rows[r["row_index"]] for r in rank(listed)] + [r for r in rows if score(r) is None]


def best_trials_table(rows: list[dict[str, Any]], modalities: list[str], top: int) -> tuple[list[str], list[list]]:
    """The `top` trials in the selection rule's order (trials without a score after them):
    its MLflow run id (for `tune.py export --run-id`), status, epochs, its score (%) and the
    score's standard error (percentage points), its highest validation accuracy where the rule
    is not that, the metrics at the epoch the score is reached, and its searched parameters."""
    params: list[str] = []
    for r in rows:
        params.extend(k for k in r if k.startswith("param.") and k not in params and k != "param.seeds")
    extra = ["stage"] if any("stage" in r for r in rows) else []
    maximum = any(rule_of(r).kind != "best" for r in rows)  # a column of its own only where it differs
    head = (["#", "trial", "MLflow run", *extra, "status", "epochs", "best epoch", "score %", "\u00b1 SE"]
            + (["max val acc %"] if maximum else []) + ["macro-F1 %"]
            + [f"{u} acc %" for u in modalities] + ["imbalance"] + [p.removeprefix("param.") for p in params])
    body = []
    for i, r in enumerate(table_order(rows)[:top], 1):
        body.append([i, r["trial_id"], r.get("run_id") or "-", *[r.get("stage", "") for _ in extra], r.get("status"),
                     val(r.get("epochs")), val(r.get("best_epoch")), pct(score(r)), se_cell(r)]
                    + ([pct(r.get("best_val_acc"))] if maximum else []) + [pct(r.get("val_macro_f1"))]
                    + [pct(r.get(f"val_acc_{u}")) for u in modalities]
                    + [val(finite_or_none(r.get("val_imbalance_ratio")))] + [val(r.get(p)) for p in params])
    return head, body


def add_best_trials(page: Page, ctx: Context, top: int) -> None:
    page.h(2, "Best trials (validation)")
    rows = ctx.study.rows
    head, body = best_trials_table(rows, ctx.modalities, top)
    page.table(head, body)
    n_val = (ctx.study.data.get("sizes") or {}).get("val")
    page.p(f"`score` is the trial's {score_label(rows)}, the number the study ranks trials by; `\u00b1 SE` is its "
           f"binomial standard error in percentage points (an accuracy that high on {n_val or 'the'} validation "
           f"samples: two trials closer than about two of them are not told apart by this split). `best epoch` "
           f"is the epoch at which the score is reached; the other metrics are taken at that epoch. `imbalance` "
           f"is the first modality's accuracy over the second's (the paper's A/V ratio). `MLflow run` is the "
           f"trial's run id: `tune.py export --run-id <it> -o chosen.yaml` exports it.")
