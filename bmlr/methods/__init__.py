"""Balancing methods behind one interface (`Method.training_step`), selected by name."""
from bmlr.methods.base import METHODS, Method, StepResult
from bmlr.methods import baseline, label_reshaping  # noqa: F401  (registration)

__all__ = ["METHODS", "Method", "StepResult"]
