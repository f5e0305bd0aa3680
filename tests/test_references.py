"""The end-of-study references (bmlr.tuning.references): the tuned winner against the method
untuned and against the baseline, on the finished tiny study of conftest (run with --references)."""
from __future__ import annotations

import json

import mlflow
import pytest

from bmlr.tuning import references
from bmlr.tuning.references import difference_text
from bmlr.tuning.store import StudyStore


def test_difference_text_says_when_a_difference_is_noise():
    assert difference_text(0.80, 0.01, 0.70, 0.01) == "+10.0 points (2 SE of the difference: 2.8)"
    assert difference_text(0.80, 0.02, 0.78, 0.02).endswith("(2 SE of the difference: 5.7; within the noise)")
    assert difference_text(0.5, None, 0.6, 0.01) == "-10.0 points"


def test_the_summary_compares_the_winner_with_the_untuned_method_and_the_baseline(finished_study):
    out, study = finished_study["out"], finished_study["dir"]
    record = json.loads((study / "references.json").read_text())
    refs = record["references"]
    assert set(refs) == {"untuned", "baseline"}
    untuned, baseline = refs["untuned"]["config"], refs["baseline"]["config"]
    space = json.loads(json.dumps(StudyStore(study).read_info()))  # the study's own settings
    seed = space["settings"]["seed"]
    # the same seed, budget and thread count as a trial; untuned = the method at the space's defaults
    assert untuned["seeds"] == baseline["seeds"] == [seed] and untuned["method"] == "bmlr"
    assert baseline["method"] == "baseline" and len(refs["untuned"]["history"]) == record["max_epochs"] == 2
    for key in ("cache_dir", "data_root", "model_width", "frames", "threads"):  # --set, --data-root, fixed part
        assert untuned[key] == baseline[key] is not None
    best = StudyStore(study).read_rows()
    winner = next(r for r in best if str(r["trial_id"]) == str(record["winner"]["trial_id"]))
    for key in ("lr", "fusion", "alpha", "beta"):  # the baseline reference is the winner's configuration
        assert baseline[key] == pytest.approx(winner[f"param.{key}"]) if key != "fusion" else \
            baseline[key] == winner[f"param.{key}"]
    # the untuned configuration is the study's first trial: where it ran the whole budget, its own
    # history is the reference (retraining it gives the same epochs), else it is trained again
    def sampled(row):
        return {k.removeprefix("param."): v for k, v in row.items() if k.startswith("param.") and v is not None}
    trials = [r for r in best if all(untuned.get(k) == pytest.approx(v) for k, v in sampled(r).items())]
    assert len(trials) <= 1, trials
    if trials and trials[0]["status"] == "completed":
        [trial] = trials
        assert refs["untuned"]["how"].endswith(f", trial {trial['trial_id']}")
        assert "untuned: its trial ran the whole budget" in out
        retrained = references._train(untuned, record["max_epochs"])
        assert [h["val_acc"] for h in retrained] == [h["val_acc"] for h in refs["untuned"]["history"]]
    else:
        assert "references: training untuned, baseline" in out
    # each score is the study's rule on that run's validation history
    for entry in refs.values():
        accs = [h["val_acc"] for h in entry["history"]]
        assert entry["score"] == pytest.approx(max(accs))
    assert "tuned against untuned, on the same validation split" in out
    assert "untuned (bmlr with the search space's defaults" in out and "tuned - baseline = " in out
    # the report trains no counterpart of its own: it reads the baseline reference
    assert not (study / "report" / "baseline_counterpart.json").exists()
    assert "training the baseline counterpart" not in out
    # and its learning curves read the baseline's history from references.json
    md = (study / "report" / "report.md").read_text()
    assert "Left: the study's baseline reference (`references.json`)" in md
    assert (study / "report" / "learning_curves.png").is_file()
    # and the parent MLflow run holds the numbers
    run = mlflow.MlflowClient(finished_study["uri"]).get_run(finished_study["parent_run_id"])
    assert run.data.metrics["reference.untuned.score"] == pytest.approx(refs["untuned"]["score"])
    assert run.data.tags["reference.baseline"].startswith("baseline at the winner's configuration")
