"""A trained model as one module that predicts, for MLflow's model format and for inference.

`bmlr.train` logs a :class:`Predictor` of each seed's best epoch with ``mlflow.pytorch.log_model``
(`--register NAME` puts the best seed in the Model Registry). Loaded back with
``mlflow.pytorch.load_model``, ``model(inputs)`` gives the fused logits as training evaluated
them (in float32 on the CPU: a GPU run evaluated under autocast differs by rounding): through
the method's own prediction (AUG adds its boosting learners; the
others are the model's fused output). ``inputs`` maps each modality to a batch tensor, as the
data set's loader yields it (a manifest's features already scaled: the training split's
scaling is in ``model.scaling`` and in the seed's `model.pt`); :func:`predict_split` gives a
whole split that way::

    import mlflow
    from bmlr.config import load_config
    from bmlr.predictor import predict_split
    model = mlflow.pytorch.load_model("models:/my-model/1")
    logits, labels = predict_split(model, load_config("best.yaml"), "test")

The module is saved by pickle (MLflow's `pickle` format: a dict input cannot be traced to
`pt2`), so loading it needs `bmlr` importable and a file you trust.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from bmlr.config import Config
from bmlr.data import build_datasets

__all__ = ["Predictor", "predict_split", "signature_example"]


class Predictor(nn.Module):
    """``forward(inputs) -> fused logits`` of a trained ``model`` (a CPU copy in eval mode) with
    its ``method``'s prediction rule; ``class_names`` and ``scaling`` travel with it."""

    def __init__(self, model: nn.Module, method, class_names: list[str], scaling: dict[str, Any]) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).float().cpu().eval()
        self.method = type(method)(method.cfg)  # a fresh one: no optimizer, no training state
        self.method.setup(self.model, None)  # AUG finds its learners on the copy
        self.method.load_state_dict(method.state_dict())
        self.class_names = list(class_names)
        self.scaling = dict(scaling)

    @torch.no_grad()
    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        return self.method.predict(self.model, inputs)[0]


def _batches(cfg: Config, split: str, batch_size: int | None):
    dataset = getattr(build_datasets(cfg), split)
    return DataLoader(dataset, batch_size=batch_size or cfg.batch_size, shuffle=False)


def predict_split(model: nn.Module, cfg: Config, split: str = "test",
                  batch_size: int | None = None) -> tuple[Tensor, Tensor]:
    """The fused logits of ``model`` (a loaded :class:`Predictor`) on a whole ``split`` of
    ``cfg``'s data set, built as training built it, and the split's labels."""
    logits, labels = [], []
    for inputs, y in _batches(cfg, split, batch_size):
        logits.append(model(inputs).float())
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def signature_example(predictor: Predictor, inputs: dict[str, Tensor]) -> tuple[dict[str, Any], Any]:
    """A batch's inputs and the predictor's logits as numpy arrays, for MLflow's ``infer_signature``:
    the signature names each modality's tensor shape and the logits' width."""
    outputs = predictor(inputs)
    return {u: x.float().numpy() for u, x in inputs.items()}, outputs.numpy()
