"""The report's learning curves (the paper's Figure 6) read the baseline from the study's
references (`references.json`, written by bmlr.tuning.references) and never train it: with no
reference the best trial stands alone and the page says so in one line. Studies written by hand
(through bmlr.tuning.store, as a study writes them); no Ray, no training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bmlr.fileio import write_json
from bmlr.tuning.report import curves, write_report
from bmlr.tuning.store import StudyStore, history_path, write_history

HEADING = "## Learning curves without and with BMLR (the paper's Figure 6)"


def _epoch(epoch: int, acc: float) -> dict:
    return {"epoch": epoch, "val_acc": acc, "val_acc_audio": acc - 0.1, "val_acc_visual": acc - 0.2,
            "reshaped/audio": 3.0, "reshaped/visual": 1.0}


def _study(folder: Path, method: str = "bmlr", references: bool = True) -> Path:
    store = StudyStore(folder)
    store.create({"settings": {"name": folder.name, "dataset": "synthetic", "method": method, "seed": 3},
                  "data": {"sizes": {"train": 72, "val": 60}, "modalities": ["audio", "visual"]}})
    store.write_rows([{"trial_id": "t1", "status": "completed", "epochs": 2, "best_epoch": 2, "best_val_acc": 0.8,
                       "score": 0.8, "score_se": 0.05, "score_rule": "best", "param.alpha": 1.0, "param.beta": 0.5},
                      {"trial_id": "t2", "status": "completed", "epochs": 2, "best_epoch": 1, "best_val_acc": 0.6,
                       "score": 0.6, "score_se": 0.06, "score_rule": "best", "param.alpha": 2.0, "param.beta": 0.3}])
    write_history(history_path(store.extras_dir, "t1"), [_epoch(1, 0.6), _epoch(2, 0.8)])
    if references:
        baseline = {"how": "baseline at the winner's configuration (trial t1)", "score": 0.7, "score_se": 0.06,
                    "best_epoch": 1, "config": {"method": "baseline", "seeds": [3]},
                    "history": [_epoch(1, 0.7), _epoch(2, 0.65)]}
        write_json(folder / curves.REFERENCES_FILE, {"winner": {"trial_id": "t1", "score": 0.8, "score_se": 0.05},
                                                     "references": {"baseline": baseline}, "max_epochs": 2})
    return folder


@pytest.fixture
def drawn(monkeypatch):
    """The panels each learning-curve figure is drawn from."""
    panels: list[list[dict]] = []
    draw = curves.draw_learning_curves
    monkeypatch.setattr(curves, "draw_learning_curves", lambda p, title: panels.append(p) or draw(p, title))
    return panels


def _report(folder: Path) -> tuple[str, list[str]]:
    log: list[str] = []
    md = write_report(folder, mlflow=False, log=log.append).read_text()
    start = md.index(HEADING)
    end = md.find("\n## ", start + 3)
    return md[start:end], log


def test_the_baseline_panel_is_the_reference_read_from_references_json(tmp_path, drawn):
    folder = _study(tmp_path / "with")
    section, log = _report(folder)
    assert "![learning curves](learning_curves.png)" in section and (folder / "report" / curves.FIGURE).is_file()
    assert "Left: the study's baseline reference (`references.json`)" in section and "method: baseline" in section
    (left, right), = drawn
    assert left["title"] == "baseline reference: trial t1's configuration (method baseline, seed 3)"
    assert left["curves"]["multimodal"] == ([1, 2], [pytest.approx(70.0), pytest.approx(65.0)])
    assert left["curves"]["audio"] == ([1, 2], [pytest.approx(60.0), pytest.approx(55.0)])
    assert left["best_epoch"] == 1 and right["title"] == "best trial t1 (method bmlr)" and right["best_epoch"] == 2
    # read, never trained: no counterpart written, nothing trained in the log
    assert not (folder / "report" / "baseline_counterpart.json").exists()
    assert not any("training" in line for line in log)
    # the report announces itself: where it writes, then each section as it ends, then the page
    assert log[0] == f"report: writing {folder / 'report'} (11 sections, from the study folder)"
    progress = [line.split(" (")[0] for line in log if line.startswith("report: ") and "/11 " in line]
    assert progress[0] == "report: 1/11 summary" and progress[-1] == "report: 11/11 top-3 classes"
    assert len(progress) == 11 and log[-1].startswith(f"report: {folder / 'report' / 'report.md'} (and report.html")


def test_without_references_the_best_trial_stands_alone_and_the_page_says_so(tmp_path, drawn):
    section, _ = _report(_study(tmp_path / "without", references=False))
    lines = [line for line in section.splitlines() if "No baseline shown" in line]
    assert len(lines) == 1 and "the study has no baseline reference (`references.json`" in lines[0]
    assert "`--references`" in lines[0] and "`--baseline-study DIR`" in lines[0]
    assert [p["title"] for p in drawn[0]] == ["best trial t1 (method bmlr)"]


def test_an_unreadable_references_file_is_said_not_raised(tmp_path, drawn):
    folder = _study(tmp_path / "broken")
    (folder / curves.REFERENCES_FILE).write_text("{not json")
    section, _ = _report(folder)
    assert "No baseline shown: `references.json` is unreadable" in section and len(drawn[0]) == 1


def test_a_baseline_study_needs_no_baseline_and_another_study_can_be_the_left_panel(tmp_path, drawn):
    baseline = _study(tmp_path / "base", method="baseline", references=False)
    section, _ = _report(baseline)
    assert "The study's method is the baseline itself" in section and len(drawn[0]) == 1
    log: list[str] = []
    write_report(_study(tmp_path / "bmlr"), baseline_study=baseline, mlflow=False, log=log.append)
    assert [p["title"] for p in drawn[1]] == ["best trial of base (method baseline): trial t1",
                                               "best trial t1 (method bmlr)"]
    record = json.loads((tmp_path / "bmlr" / curves.REFERENCES_FILE).read_text())  # --baseline-study wins
    assert record["references"]["baseline"]["history"] and len(drawn[1]) == 2
