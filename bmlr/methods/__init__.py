"""Balancing methods behind one interface (`Method.training_step`), selected by name.

Each method is a class registered in ``METHODS``; it declares which of the label-reshaping
Config keys it reads (``reads``) and its ``method_args`` as a typed ``Args`` dataclass
(:mod:`bmlr.methods.args`), checked once when the method is built.
"""
from bmlr.methods import agm, aug, baseline, dgl, label_reshaping, mmpareto, ogm_ge, pmr, udi  # noqa: F401  (registration)
from bmlr.methods.args import NoArgs, arg_kinds
from bmlr.methods.base import (METHOD_READS, METHOD_SPECIFIC_KEYS, METHODS, Method, StepResult, method_defaults,
                               resolved_method_args)

__all__ = ["METHODS", "METHOD_READS", "METHOD_SPECIFIC_KEYS", "Method", "NoArgs", "StepResult", "arg_kinds",
           "method_defaults", "resolved_method_args"]
