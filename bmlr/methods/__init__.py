"""Balancing methods behind one interface (`Method.training_step`), selected by name."""
from bmlr.methods.base import METHODS, Method, StepResult, resolved_method_args
from bmlr.methods import baseline, label_reshaping  # noqa: F401  (registration)
from bmlr.methods import aug, dgl, ogm_ge, udi  # noqa: F401  (registration: comparison methods)

__all__ = ["METHODS", "Method", "StepResult", "resolved_method_args"]
