"""The report's t-SNE figures (the paper's Figures 1 and 3b-d): drawn from the best trial's own
model (the validation sample a trial saves when it trains to its end) of a real finished study,
never from a model the report trains; said why (and how to get them) where they cannot be; and
the label distributions they embed checked by hand."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from bmlr.tuning.report import write_report
from bmlr.tuning.report.tsne import embed, perplexity_for
from bmlr.tuning.report.tsne_labels import label_distributions, shown_classes
from bmlr.tuning.store import StudyStore

FEATURES = "## Feature space, t-SNE (the paper's Figure 1)"
LABELS = "## Label space, t-SNE: uniform vs BMLR vs per-sample (the paper's Figure 3b-d)"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _section(md: str, heading: str) -> str:
    """The text of one section of report.md (up to the next `## ` heading)."""
    start = md.index(heading) + len(heading)
    end = md.find("\n## ", start)
    return md[start:] if end < 0 else md[start:end]


def _is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def _copy(finished_study, tmp_path):
    """A copy of the finished study to report again (the fixture's own report stays as it is)."""
    study = tmp_path / "tiny"
    shutil.copytree(finished_study["dir"], study, ignore=shutil.ignore_patterns("ray"))
    return study


def test_the_end_of_study_report_has_both_tsne_figures(finished_study):
    out = finished_study["dir"] / "report"
    md = (out / "report.md").read_text()
    features, labels = _section(md, FEATURES), _section(md, LABELS)
    assert "![t-SNE of per-modality and fused features](tsne_features.png)" in features
    assert "![t-SNE of uniform, BMLR and per-sample label distributions](tsne_labels.png)" in labels
    assert _is_png(out / "tsne_features.png") and _is_png(out / "tsne_labels.png")
    assert "random_state 0" in features and "validation samples" in features
    # the table of the label section: one row per modality of the synthetic data, BMLR's counts among all clips
    info = json.loads((finished_study["dir"] / "study.json").read_text())
    n_val = info["data"]["sizes"]["val"]
    for u in info["data"]["modalities"]:
        assert f"| {u} | " in labels and f" / {n_val} |" in labels
    # every trial that trained all its epochs saved its best epoch's sample (one ASHA stopped did
    # not), and the report drew the winner's own instead of retraining it
    rows = {str(r["trial_id"]): r for r in StudyStore(finished_study["dir"]).read_rows()}
    assert {r["status"] for r in rows.values()} >= {"completed"}
    for trial_id, row in rows.items():
        path = finished_study["dir"] / "trials" / f"trial_{trial_id}" / "val_sample.pt"
        assert path.is_file() == (row["status"] == "completed")
        if path.is_file():
            saved = torch.load(path, weights_only=True)
            assert saved["val_acc"] == pytest.approx(row["best_val_acc"]) and saved["n_val"] == n_val
    assert "(the trial's own model) at its best validation epoch" in features
    assert not (out / "best_model_val.pt").exists()  # (where an older report cached a retrained model)


def test_the_report_reads_the_saved_sample_or_says_why(finished_study, tmp_path):
    study = _copy(finished_study, tmp_path)
    # a report reads the winner's saved sample: both figures again
    write_report(study, mlflow=False, log=lambda _: None)
    assert _is_png(study / "report" / "tsne_features.png") and _is_png(study / "report" / "tsne_labels.png")
    # without it (a winner stopped early) the report trains nothing: both sections say why and how, no figure
    for path in (study / "trials").glob("trial_*/val_sample.pt"):
        path.unlink()
    log: list[str] = []
    write_report(study, mlflow=False, log=log.append)
    md = (study / "report" / "report.md").read_text()
    for heading in (FEATURES, LABELS):
        text = _section(md, heading)
        assert "Not drawn:" in text and "keeps no model weights" in text and "the report trains nothing" in text
        assert "val_sample.pt" in text and "`--scheduler none`" in text
    assert not (study / "report" / "tsne_features.png").exists()
    assert not (study / "report" / "tsne_labels.png").exists()
    assert not (study / "report" / "best_model_val.pt").exists() and not any("retrain" in line for line in log)


def test_a_method_without_reshaping_gets_features_but_no_label_figure(finished_study, tmp_path):
    study = _copy(finished_study, tmp_path)
    for path in (study / "trials").glob("trial_*/history.json"):  # as a method that reshapes nothing logs it
        history = [{k: v for k, v in h.items() if not k.startswith(("reshaped/", "wrong_top/"))}
                   for h in json.loads(path.read_text())]
        path.write_text(json.dumps(history))
    write_report(study, mlflow=False, log=lambda _: None)
    md = (study / "report" / "report.md").read_text()
    assert "reshapes no labels" in _section(md, LABELS) and not (study / "report" / "tsne_labels.png").exists()
    assert _is_png(study / "report" / "tsne_features.png")


def test_label_distributions_by_hand():
    """Two modalities, three classes, label 0: p^a = (.8, .1, .1), p^v = (.4, .4, .2).
    lambda^a = .8/.4 = 2, so xi^a = 1 - 1/2 = .5 (1 < 2 < 1/beta = 10); with alpha = 2 the
    temperature is alpha / lambda^a = 1, so d^a = p^v. lambda^v = 1/2: v is not reshaped."""
    logits = {"a": torch.tensor([[0.8, 0.1, 0.1]]).log(), "v": torch.tensor([[0.4, 0.4, 0.2]]).log()}
    shaped = label_distributions(torch.tensor([0]), logits, alpha=2.0, beta=0.1)
    expected = {
        "uniform": {"a": [0.5 / 3 + 0.5, 0.5 / 3, 0.5 / 3], "v": [1.0, 0.0, 0.0]},   # xi/C + (1 - xi) y
        "bmlr": {"a": [0.5 * 0.4 + 0.5, 0.5 * 0.4, 0.5 * 0.2], "v": [1.0, 0.0, 0.0]},  # xi d + (1 - xi) y
        "per-sample": {"a": [0.4, 0.4, 0.2], "v": [0.8, 0.1, 0.1]},                    # the partner's prediction
    }
    assert list(shaped) == list(expected)
    for panel, by_modality in expected.items():
        for u, want in by_modality.items():
            torch.testing.assert_close(shaped[panel].labels[u][0], torch.tensor(want), atol=1e-6, rtol=0)
    assert float(shaped["bmlr"].intensity["a"][0]) == pytest.approx(0.5)
    assert float(shaped["bmlr"].intensity["v"][0]) == 0.0


def test_shown_classes_and_perplexity():
    assert shown_classes(np.array([4, 4, 1, 1, 1, 0, 2, 2, 2])) == [1, 2, 4]  # by count, ties: lower class
    assert shown_classes(np.array([3, 3])) == [3]
    assert perplexity_for(1000) == 30.0 and perplexity_for(25) == 8.0 and perplexity_for(4) == 2.0
    xy = embed(np.random.default_rng(0).normal(size=(12, 5)))
    assert xy.shape == (12, 2) and np.isfinite(xy).all()
    np.testing.assert_allclose(embed(np.random.default_rng(0).normal(size=(12, 5))), xy)  # seeded
    with pytest.raises(ValueError, match="at least"):
        embed(np.zeros((3, 5)))


def test_the_embeddings_computed_ahead_are_the_ones_the_report_draws(finished_study, monkeypatch):
    """While a study's references train, a thread embeds the report's t-SNE points
    (bmlr.tuning.report.warmup); the report then computes none of them again."""
    import sklearn.manifold

    from bmlr.tuning.report import tsne
    from bmlr.tuning.report.best_model import best_model_sample
    from bmlr.tuning.report.study_view import Context
    from bmlr.tuning.report.tsne_features import feature_panels
    from bmlr.tuning.report.tsne_labels import label_points, sample_reshaping
    from bmlr.tuning.report.warmup import warm_report

    monkeypatch.setattr(tsne, "_KEPT", {})
    with warm_report(finished_study["dir"]):
        pass  # the references would train here
    sample = best_model_sample(Context.open(finished_study["dir"], lambda _line: None))
    points = [*feature_panels(sample).values(), *label_points(sample, sample_reshaping(sample))[0].values()]
    assert len(tsne._KEPT) == len(points) == 3 + 2  # audio, visual, fused; a row of labels per modality
    fitted = []
    monkeypatch.setattr(sklearn.manifold.TSNE, "fit_transform", lambda self, x: fitted.append(x) or np.zeros((len(x), 2)))
    for p in points:  # the report's calls: kept, not fitted again
        assert embed(p).shape == (len(p), 2)
    assert fitted == []
    assert not embed(np.asarray(points[0])[::-1].copy()).any() and len(fitted) == 1  # other points: computed
