"""Production training (`bmlr.train`) and the epoch loop (`bmlr.engine.Trainer`) on a tiny
synthetic data set written as real wav/jpg files."""
from __future__ import annotations

import json

import pytest
import torch

from bmlr import train as train_cli
from bmlr.config import from_dict
from bmlr.engine import Trainer, mean_std


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from bmlr.data.synthetic import generate

    base = tmp_path_factory.mktemp("train")
    data = generate(base / "data", seed=0, n_train_per_class=12,
        n_test_per_class=4, n_val_per_class=4, image_size=32, n_frames=2)
    return {"base": base, "data": data, "cache": base / "cache"}


def tiny_settings(tiny, **extra):
    return {"data_root": str(tiny["data"]), "cache_dir": str(tiny["cache"]), "image_size": 32, "frames": 2,
            "model_width": 4, "model_depth": 1, "batch_size": 16, "lr": 1e-3, "val_fraction": 0.25, **extra}


def test_train_cli_writes_results_and_checkpoints(tiny, tmp_path, capsys):
    cfg_path = tmp_path / "run.yaml"
    from_dict(tiny_settings(tiny, epochs=2, seeds=[0, 1], output_dir=str(tmp_path / "runs"), name="t")).to_yaml(cfg_path)
    assert train_cli.main(["--config", str(cfg_path), "--no-progress"]) == 0
    run = tmp_path / "runs" / "t"
    results = json.loads((run / "results.json").read_text())
    assert [r["seed"] for r in results["seeds"]] == [0, 1]
    for r in results["seeds"]:
        assert (run / f"seed{r['seed']}" / "model.pt").is_file()
        assert len(r["history"]) == 2
        # the kept epoch is the one with the best validation accuracy
        val_accs = [h["val_acc"] for h in r["history"]]
        assert r["best_epoch"] == val_accs.index(max(val_accs)) + 1
        assert set(r["test"]) >= {"acc", "macro_f1", "acc_audio", "acc_visual", "imbalance_ratio"}
    accs = [r["test"]["acc"] for r in results["seeds"]]
    mean, std = mean_std(accs)
    assert results["summary"]["test_acc"] == pytest.approx({"mean": mean, "std": std})
    out = capsys.readouterr().out
    assert "test_acc" in out and "±" in out
    # a second run with the same name never overwrites the first
    assert train_cli.main(["--config", str(cfg_path), "--no-progress", "--set", "epochs=1", "--set", "seeds=[0]"]) == 0
    assert (tmp_path / "runs" / "t-1" / "results.json").is_file()
    assert len(json.loads((run / "results.json").read_text())["seeds"]) == 2


def test_train_cli_rejects_bad_config_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("beta: 2.0\n")
    assert train_cli.main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "beta" in err and "[0, 1]" in err
    assert train_cli.main(["--set", "fusion=attention"]) == 2
    assert "fusion" in capsys.readouterr().err


def test_train_cli_reports_missing_data_root(tmp_path, capsys):
    assert train_cli.main(["--set", f"data_root={tmp_path / 'nowhere'}", "--set", f"cache_dir={tmp_path}",
                           "--set", f"output_dir={tmp_path}"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_trainer_resumes_exactly_from_its_state(tiny):
    cfg = from_dict(tiny_settings(tiny, epochs=3, method="bmlr", beta=0.0))
    straight = Trainer(cfg, seed=0)
    for _ in range(2):
        straight.step_epoch()
    interrupted = Trainer(cfg, seed=0, data=straight.data)
    interrupted.step_epoch()
    state = interrupted.state_dict()
    resumed = Trainer(cfg, seed=0, data=straight.data)
    resumed.load_state_dict(state)
    second = resumed.step_epoch()
    assert second == straight.history[-1]
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_nan_loss_raises_floating_point_error(tiny):
    cfg = from_dict(tiny_settings(tiny, epochs=1, lr=1e30, optimizer="sgd", momentum=0.0))
    trainer = Trainer(cfg, seed=0)
    with pytest.raises(FloatingPointError, match="epoch"):
        for _ in range(5):
            trainer.step_epoch()


@pytest.mark.slow
def test_baseline_shows_the_imbalance_on_synthetic_data(tmp_path_factory):
    """The synthetic default is built so that joint training favours audio: after a few
    epochs the audio branch is far ahead of the visual one."""
    from bmlr.data.synthetic import generate

    base = tmp_path_factory.mktemp("imbalance")
    data = generate(base / "data", seed=0, n_train_per_class=40, n_test_per_class=4, n_val_per_class=4)
    cfg = from_dict({"data_root": str(data), "cache_dir": str(base / "cache"), "image_size": 32, "model_width": 8,
                     "model_depth": 1, "lr": 1e-3, "method": "baseline", "epochs": 4})
    trainer = Trainer(cfg, seed=0)
    for _ in range(cfg.epochs):
        m = trainer.step_epoch()
    assert m["val_acc_audio"] > 0.5  # audio learned (ceiling 2/3)
    assert m["val_acc_audio"] - m["val_acc_visual"] > 0.2
