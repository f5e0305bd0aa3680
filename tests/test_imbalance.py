"""The embedded default shows the phenomenon BMLR exists for (data version v3): jointly trained,
the slow visual encoder ends up worse than the same encoder trained alone for the same epochs
(OGM-GE's Fig. 1 test), measured as bench/bench_imbalance.py measures it (a linear probe on the
frozen encoder), on a small budget. Plus the benchmark's table arithmetic by hand."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 12  # the gap grows with the epochs (README: 10.5 points at 20, 3 seeds); 12 keeps the test short
# measured here (seed 0, CPU): visual probe 65.3 % alone, 59.2 % joint, a gap of 6.1 points on the 360
# test clips; a default without under-optimization (v2: the encoder alone was no better) has a gap
# near or below 0, so 3 points (about one standard error of the difference) tells the two apart
MIN_GAP = 0.03


@pytest.fixture(scope="module")
def bi():
    spec = importlib.util.spec_from_file_location("bench_bench_imbalance", ROOT / "bench" / "bench_imbalance.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_the_table_takes_the_gap_against_the_same_seeds_alone_encoder(bi):
    rows = [{"row": "alone", "seed": 0, "probe_visual": 0.8, "oracle": 0.9},
            {"row": "alone", "seed": 1, "probe_visual": 0.7, "oracle": 0.9},
            {"row": "baseline", "seed": 0, "fused": 0.9, "probe_visual": 0.6},
            {"row": "baseline", "seed": 1, "fused": 0.8, "probe_visual": 0.6}]
    table = bi.table(rows)
    baseline = next(line for line in table.splitlines() if line.startswith("| baseline"))
    # gaps 0.2 and 0.1: mean 15.0, sd 7.1; fused 85.0 +- 7.1
    assert "| 85.0 +- 7.1 |" in baseline and "| 15.0 +- 7.1 |" in baseline
    assert bi.generator_kwargs(["audio_swap=0.1", "contrast=0.05,0.25"]) == {"audio_swap": 0.1,
                                                                              "contrast": (0.05, 0.25)}


@pytest.mark.slow
def test_joint_training_under_optimizes_the_slow_modality_of_the_default(bi, tmp_path):
    from bmlr.data import build_datasets
    from bmlr.data.synthetic import generate

    root = generate(tmp_path / "data", seed=0, version="v3", n_val_per_class=20, n_test_per_class=60)
    args = bi.parse_args(["--epochs", str(EPOCHS), "--cache-dir", str(tmp_path / "cache")])
    cfg = bi.method_config(args, "baseline", root, seed=0)
    data = build_datasets(cfg)
    joint = bi.probes(bi.train(cfg, 0, data))
    alone = bi.probes(bi.train(cfg, 0, dataclasses.replace(data, modalities={"visual": data.modalities["visual"]})))
    gap = alone["probe_visual"] - joint["probe_visual"]
    assert gap >= MIN_GAP, f"visual probe alone {alone['probe_visual']:.3f}, joint {joint['probe_visual']:.3f}"
    assert joint["probe_audio"] > alone["probe_visual"] - 0.1  # the audio is the fast modality
