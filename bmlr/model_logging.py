"""A production seed's model in MLflow's model format, and the Model Registry.

:func:`log_predictor` logs a :class:`bmlr.predictor.Predictor` with ``mlflow.pytorch.log_model``
to a given run (a LoggedModel: the experiment's "Logged models", loaded back with
``mlflow.pytorch.load_model``), signed with each modality's tensor shape and the logits' width;
:func:`register_model` makes it a new version of a registered model. Both are MLflow's fluent
calls, which take no client: :func:`fluent_store` points them at the store for the call only.

The module is pickled (MLflow's ``serialization_format="pickle"``): MLflow's safer ``pt2`` traces
the forward pass from an example that must be a tensor or a tuple of them, and a multimodal
model takes a dict. Loading needs `bmlr` importable, and a file you trust. The requirements
are given (torch and MLflow pinned to this process's versions), not inferred: MLflow's inference
loads the model in a subprocess, seconds per seed.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator

__all__ = ["fluent_store", "log_predictor", "register_model"]


@contextlib.contextmanager
def fluent_store(uri: str) -> Iterator[None]:
    """MLflow's fluent calls pointed at ``uri`` within the block. After it no process-wide
    tracking URI is set (bmlr sets none of its own), and ``MLFLOW_TRACKING_URI``, which
    ``mlflow.set_tracking_uri`` overwrites, is as it was."""
    import mlflow

    env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Logger ``name`` at ERROR within the block (MLflow warns on every pickled model: the module
    docstring says it once)."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def log_predictor(uri: str, run_id: str, predictor: Any, example: tuple[Any, Any] | None,
                  tags: dict[str, str]) -> str:
    """Log ``predictor`` as the MLflow model ``model`` of run ``run_id`` at ``uri``, its signature
    inferred from ``example`` (inputs and outputs as numpy; None: unsigned); returns its model URI."""
    import mlflow
    import torch
    from mlflow.models import infer_signature

    signature = infer_signature(*example) if example is not None else None
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]
    with _quiet("mlflow.pytorch"), fluent_store(uri):
        info = mlflow.pytorch.log_model(predictor, name="model", run_id=run_id, signature=signature,
                                        serialization_format="pickle", pip_requirements=requirements, tags=tags)
    return info.model_uri


def register_model(uri: str, model_uri: str, name: str) -> str:
    """Register ``model_uri`` as a new version of ``name`` (created where new) at ``uri``; returns
    the version."""
    import mlflow

    with fluent_store(uri):
        return str(mlflow.register_model(model_uri, name).version)
