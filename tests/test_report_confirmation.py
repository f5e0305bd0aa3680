"""The study report names the score's rule and its standard error wherever it shows a score, says
when the top trials are inside the validation noise, and, where the study ran a confirmation
stage, shows its candidates (search score beside the mean over new seeds, the winner starred)
as a table and a figure.

The fast tests write a study folder by hand (its ``study.json``, ``trials.csv`` and
``confirmation.csv`` through :class:`bmlr.tuning.store.StudyStore`, as a study writes them);
the slow one reports a real tiny study run with ``--confirm 2 --confirm-seeds 2``.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from bmlr.tuning.report import StudyView, confirmation_table, write_report
from bmlr.tuning.report.best_trials import best_trials_table
from bmlr.tuning.report.confirmation import FIGURE_FILE, WINNER_MARK, draw_confirmation
from bmlr.tuning.report.figure import save as save_figure
from bmlr.tuning.report.optuna_figures import StudyInputs
from bmlr.tuning.store import StudyStore

N_VAL = 60
LAST2 = "score (last-2: the mean validation accuracy of the last 2 epochs)"


def _se(p: float) -> float:
    return math.sqrt(p * (1 - p) / N_VAL)


def _trial(tid: str, value: float | None, status: str = "completed", rule: str | None = "last-2",
           **params) -> dict:
    row = {"trial_id": tid, "status": status, "epochs": 2, "best_epoch": 2 if value is not None else None,
           "best_val_acc": None if value is None else value + 0.02, "val_macro_f1": value,
           "val_acc_audio": 0.5, "val_acc_visual": 0.4, "val_imbalance_ratio": 1.25, "run_id": f"run-{tid}",
           "param.alpha": params.get("alpha", 1.0), "param.beta": params.get("beta", 0.5)}
    if rule is not None:  # a row from before score rules has best_val_acc alone
        row.update(score=value, score_se=None if value is None else _se(value), score_rule=rule)
    return row


TRIALS = [_trial("t1", 0.80, alpha=0.5, beta=0.3), _trial("t2", 0.78, alpha=1.0, beta=0.5),
          _trial("t3", 0.75, alpha=2.0, beta=0.7), _trial("t4", 0.60, alpha=4.0, beta=0.9),
          _trial("t5", None, "failed", alpha=8.0, beta=0.1)]
# the top 3 trained again with seeds 4 and 5; t3's seed 5 failed after one epoch
CONFIRMATION = [
    {"trial_id": "c1", "candidate": "t1", "seed": 4, "status": "completed", "epochs": 2, "best_val_acc": 0.70,
     "best_epoch": 2},
    {"trial_id": "c2", "candidate": "t1", "seed": 5, "status": "completed", "epochs": 2, "best_val_acc": 0.72,
     "best_epoch": 1},
    {"trial_id": "c3", "candidate": "t2", "seed": 4, "status": "completed", "epochs": 2, "best_val_acc": 0.76,
     "best_epoch": 2},
    {"trial_id": "c4", "candidate": "t2", "seed": 5, "status": "completed", "epochs": 2, "best_val_acc": 0.74,
     "best_epoch": 2},
    {"trial_id": "c5", "candidate": "t3", "seed": 4, "status": "completed", "epochs": 2, "best_val_acc": 0.71,
     "best_epoch": 2},
    {"trial_id": "c6", "candidate": "t3", "seed": 5, "status": "failed", "epochs": 1, "best_val_acc": None,
     "best_epoch": None},
]


def _study(folder: Path, rows: list[dict] = TRIALS, confirmation: list[dict] | None = CONFIRMATION) -> Path:
    store = StudyStore(folder)
    store.create({"settings": {"name": folder.name, "dataset": "synthetic", "method": "bmlr", "seed": 3},
                  "data": {"sizes": {"train": 72, "val": N_VAL}, "modalities": ["audio", "visual"]}})
    store.write_rows(rows)
    if confirmation is not None:
        store.write_confirmation(confirmation)
    return folder


def _open_png(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def _section(md: str, heading: str) -> str:
    """The text under a `## heading` up to the next `## `."""
    start = md.index(f"## {heading}")
    end = md.find("\n## ", start + 3)
    return md[start:end if end >= 0 else None]


# --- the confirmation's table and winner --------------------------------------------------------
def test_confirmation_table_lists_each_candidate_with_its_seeds_and_stars_the_best_mean(tmp_path):
    study = StudyView(_study(tmp_path / "s"))
    head, body = confirmation_table(study)
    cells = [dict(zip(head, line)) for line in body]
    assert [c["search trial"] for c in cells] == ["t1", "t2", "t3"]  # the search's order
    assert [c["search score %"] for c in cells] == ["80.0", "78.0", "75.0"]
    assert [c["\u00b1 SE"] for c in cells] == [f"{100 * _se(v):.1f}" for v in (0.80, 0.78, 0.75)]
    assert [c["confirmation mean %"] for c in cells] == ["71.0", "75.0", "71.0"]
    assert [c["\u00b1 std"] for c in cells] == ["1.4", "1.4", "-"]  # one completed seed: no spread
    assert [c["per seed %"] for c in cells] == ["4: 70.0, 5: 72.0", "4: 76.0, 5: 74.0", "4: 71.0, 5: failed"]
    assert [c["winner"] for c in cells] == ["", WINNER_MARK, ""]  # the best mean, not the best search score
    # the report's best trial is the confirmation's winner (the trial best.yaml holds), not the search's
    assert study.best_row()["trial_id"] == "t2"


def test_a_tie_on_the_mean_goes_to_the_search_order(tmp_path):
    tie = [dict(r, best_val_acc=0.7) for r in CONFIRMATION if r["status"] == "completed"]
    study = StudyView(_study(tmp_path / "s", confirmation=tie))
    assert study.confirmed_winner.trial_id == "t1" and study.best_row()["trial_id"] == "t1"


def test_confirmation_figure_draws_every_seed_and_the_search_scores(tmp_path):
    from matplotlib.collections import PathCollection

    candidates = [{"label": "t1", "search": 0.80, "search_se": 0.05, "seeds": [0.70, 0.72], "winner": False},
                  {"label": "t2", "search": 0.78, "search_se": None, "seeds": [0.76, 0.74], "winner": True},
                  {"label": "t3", "search": 0.75, "search_se": 0.05, "seeds": [], "winner": False}]
    fig = draw_confirmation(candidates, "title")  # the figure, drawn from plain numbers, then written
    ax = fig.axes[0]
    dots = sorted(round(float(y), 6) for c in ax.collections if isinstance(c, PathCollection)
                  for _, y in c.get_offsets())
    assert dots == [70.0, 72.0, 74.0, 76.0]  # every seed a dot, nothing else drawn as one
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["t1", "\u2605 t2", "t3"]
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert legend == {"search score (one seed) \u00b1 SE", "confirmation: each seed", "confirmation: mean \u00b1 std"}
    means = sorted(round(float(line.get_ydata()[0]), 6) for line in ax.get_lines()
                   if line.get_marker() == "o" and len(line.get_ydata()) == 1)
    assert means == [71.0, 75.0]
    width, height = _open_png(save_figure(fig, tmp_path / "c.png"))
    assert width > 300 and height > 200


# --- the page ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def confirmed_report(tmp_path_factory):
    folder = _study(tmp_path_factory.mktemp("report") / "hand")
    log: list[str] = []
    md_path = write_report(folder, mlflow=False, log=log.append)
    return {"dir": folder, "md": md_path.read_text(), "html": (md_path.parent / "report.html").read_text()}


def test_report_has_a_confirmation_section_with_its_figure(confirmed_report):
    md = confirmed_report["md"]
    section = _section(md, "Confirmation")
    assert "seeds [4, 5]" in section and "for 2 epochs each" in section
    assert "Cost: 11 epochs, 1.10x the search's 10" in section  # 6 runs (one failed after 1 epoch) vs 5 x 2
    assert "| 2 | t2 | 78.0 |" in section and WINNER_MARK in section
    assert "trial **t2**, the highest mean: **75.0%** over 2 seeds" in section
    assert "the search ranked trial t1 first" in section and "winner's curse" in section
    assert f"]({FIGURE_FILE})" in section
    figure = confirmed_report["dir"] / "report" / FIGURE_FILE
    width, height = _open_png(figure)
    assert width > 300 and height > 200
    # the figure is one of the report folder's PNGs: build.log_to_mlflow logs it with the page
    assert figure in sorted((confirmed_report["dir"] / "report").glob("*.png"))
    assert confirmed_report["html"].count("src='data:image/png;base64,") == md.count("](")


def test_report_names_the_rule_and_the_standard_error_wherever_it_shows_a_score(confirmed_report):
    md = confirmed_report["md"]
    summary = md[:md.index("## Best trials")]
    se = f"{100 * _se(0.78):.1f}"
    assert f"Best trial **t2**: {LAST2} **78.0 \u00b1 {se}%**" in summary
    assert "It won the confirmation" in summary and "the search's own winner was trial t1" in summary
    # t2, t3 score within two standard errors of t1: said, as the terminal summary says it
    assert "**Noise.** The next 2 of the top 4 trials score within two standard errors" in summary
    table = _section(md, "Best trials")
    head = next(line for line in table.splitlines() if line.startswith("| #"))
    assert "| score % | \u00b1 SE | max val acc % |" in head
    assert f"| 80.0 | {100 * _se(0.80):.1f} | 82.0 |" in table
    assert LAST2 in table
    assert LAST2 in _section(md, "Hyperparameter importances") or "Not computed" in _section(
        md, "Hyperparameter importances")
    assert LAST2 in _section(md, "Optuna's views of the study")


def test_optunas_axes_name_the_rule(tmp_path):
    assert StudyInputs.build(TRIALS, None).target == "score (last-2, validation accuracy)"
    legacy = [_trial(r["trial_id"], r.get("score"), r["status"], rule=None) for r in TRIALS]
    assert StudyInputs.build(legacy, None).target == "score (best, validation accuracy)"


def test_no_confirmation_no_section_and_legacy_rows_read_as_best(tmp_path):
    legacy = [_trial("a", 0.80, rule=None, alpha=0.5), _trial("b", 0.50, rule=None, alpha=2.0)]
    folder = _study(tmp_path / "old", legacy, confirmation=None)
    md = write_report(folder, mlflow=False, log=lambda _: None).read_text()
    assert "Confirmation" not in md and not (folder / "report" / FIGURE_FILE).exists()
    assert "score (best: the best validation accuracy at any epoch) **82.0%**" in md  # no SE recorded: none shown
    assert "Noise." not in md
    head, body = best_trials_table(legacy, ["audio", "visual"], top=5)
    assert "max val acc %" not in head  # the rule is the maximum: no second column of it
    assert [line[head.index("\u00b1 SE")] for line in body] == ["-", "-"]


# --- a real study with a confirmation ---------------------------------------------------------------
@pytest.mark.slow
def test_a_confirmed_study_reports_its_confirmation_and_logs_the_figure(confirmed_study):
    import yaml
    from mlflow import MlflowClient

    md = (confirmed_study["dir"] / "report" / "report.md").read_text()
    section = _section(md, "Confirmation")
    assert "seeds [4, 5]" in section and "for 2 epochs each" in section
    assert len(re.findall(r"^\| \d \| ", section, re.MULTILINE)) == 2 and section.count(WINNER_MARK) == 1
    winner = re.search(r"The winner \(.*?\) is trial \*\*(\w+)\*\*", section).group(1)
    assert yaml.safe_load((confirmed_study["dir"] / "best.yaml").read_text())["source"]["trial_id"] == winner
    assert f"Best trial **{winner}**: {LAST2}" in md and " \u00b1 " in md
    client = MlflowClient(confirmed_study["uri"])
    logged = {a.path for a in client.list_artifacts(confirmed_study["parent_run_id"], "report")}
    assert f"report/{FIGURE_FILE}" in logged
