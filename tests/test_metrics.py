from __future__ import annotations

import torch

from bmlr.metrics import accuracy, classification_metrics, imbalance_ratio, macro_f1, top_k_by_class


def test_accuracy_and_macro_f1_by_hand():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 2, 0])
    assert accuracy(preds, labels) == 4 / 6
    # class 0: tp1 fp1 fn1 -> 2/4; class 1: tp2 fp1 fn0 -> 4/5; class 2: tp1 fp0 fn1 -> 2/3
    assert abs(macro_f1(preds, labels, 3) - (0.5 + 0.8 + 2 / 3) / 3) < 1e-9


def test_imbalance_ratio():
    assert imbalance_ratio({"audio": 0.6, "visual": 0.3}) == 2.0
    assert imbalance_ratio({"t": 0.2, "a": 0.5, "v": 0.4}) == 2.5


def test_classification_metrics_keys():
    labels = torch.tensor([0, 1, 2, 1])
    fused = torch.eye(3)[labels] * 5
    uni = {"audio": fused, "visual": torch.zeros(4, 3)}
    m = classification_metrics(fused, uni, labels, 3)
    assert m["acc"] == 1.0 and m["acc_audio"] == 1.0 and m["acc_visual"] == 0.25
    assert m["imbalance_ratio"] == 4.0


def test_top_k_by_class_counts():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 3.0, 2.0]])
    counts = top_k_by_class(logits, torch.tensor([0, 2]), 4, k=2)
    assert counts[0].tolist() == [1, 1, 0, 0] and counts[2].tolist() == [0, 0, 1, 1]
