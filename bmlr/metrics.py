"""Evaluation metrics: accuracy, macro-F1, per-modality accuracy, imbalance ratio."""
from __future__ import annotations

import torch
from torch import Tensor


def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """[true, predicted] counts."""
    index = labels.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(predictions: Tensor, labels: Tensor) -> float:
    return (predictions == labels).sum().item() / len(labels) if len(labels) else float("nan")


def macro_f1(predictions: Tensor, labels: Tensor, num_classes: int) -> float:
    """Mean over classes present in labels or predictions of 2TP / (2TP + FP + FN)."""
    cm = confusion_matrix(predictions, labels, num_classes).double()
    tp = cm.diag()
    support = cm.sum(1) + cm.sum(0)  # (TP + FN) + (TP + FP)
    present = support > 0
    return (2 * tp[present] / support[present]).mean().item() if present.any() else float("nan")


def imbalance_ratio(modality_accuracy: dict[str, float]) -> float:
    """The paper's A/V ratio (Table III): first modality / second for two modalities
    (audio / visual in the bi-modal data sets), strongest / weakest for three."""
    values = list(modality_accuracy.values())
    if len(values) == 2:
        num, den = values
    else:
        num, den = max(values), min(values)
    return num / den if den > 0 else float("inf")


def top_k_by_class(logits: Tensor, labels: Tensor, num_classes: int, k: int = 3) -> Tensor:
    """[true class, predicted class] counts of how often a class is in a sample's top k
    predictions (the paper's Figure 4)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    counts = torch.zeros(num_classes, num_classes, dtype=torch.long)
    counts.index_put_((labels.repeat_interleave(top.shape[1]), top.reshape(-1)),
                      torch.ones(top.numel(), dtype=torch.long), accumulate=True)
    return counts


def classification_metrics(fused_logits: Tensor, unimodal_logits: dict[str, Tensor], labels: Tensor,
                           num_classes: int) -> dict[str, float]:
    predictions = fused_logits.argmax(1)
    metrics = {"acc": accuracy(predictions, labels), "macro_f1": macro_f1(predictions, labels, num_classes)}
    per_modality = {u: accuracy(z.argmax(1), labels) for u, z in unimodal_logits.items()}
    metrics.update({f"acc_{u}": a for u, a in per_modality.items()})
    metrics["imbalance_ratio"] = imbalance_ratio(per_modality)
    return metrics
