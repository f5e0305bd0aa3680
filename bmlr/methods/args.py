"""Typed method arguments: a method's ``method_args`` as a frozen dataclass, checked once.

Modelled on Optuna's samplers (typed constructor arguments, an ``Args`` block in the
docstring, a ``ValueError`` that names the bad key). A method class sets ``Args`` to a frozen
dataclass whose fields are its arguments, each with its default (its authors' value)::

    @dataclass(frozen=True)
    class Args:
        alpha_ogm: float = 0.1
        coeff_form: str = "paper"

        def __post_init__(self) -> None:
            require(self.alpha_ogm >= 0, "alpha_ogm", ">= 0", self.alpha_ogm)

:func:`parse_args` turns the config's ``method_args`` mapping into an instance when the method
is built: unknown keys are refused, scalar fields (bool, int, float, str, optionally None) are
converted or refused here, and ``__post_init__`` checks ranges and choices. Code then reads
``self.args.alpha_ogm``, already a float: nothing is cast where it is used.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Mapping

__all__ = ["NoArgs", "arg_defaults", "arg_kinds", "parse_args", "require"]

SCALARS = (bool, int, float, str)


@dataclasses.dataclass(frozen=True)
class NoArgs:
    """The arguments of a method that takes none."""


def require(ok: bool, key: str, expected: str, value: Any) -> None:
    """``ValueError("method_args.<key> must be <expected>, got <value>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"method_args.{key} must be {expected}, got {value!r}")


def arg_defaults(args_type: type) -> dict[str, Any]:
    """``{name: default}`` of every field of an ``Args`` dataclass, in declaration order."""
    return {f.name: f.default for f in dataclasses.fields(args_type)}


def _field_types(args_type: type) -> dict[str, Any]:
    return typing.get_type_hints(args_type)


def _scalar(hint: Any) -> tuple[type | None, bool]:
    """``(scalar type or None, None allowed)`` of a field annotation such as ``float`` or ``str | None``."""
    if hint in SCALARS:
        return hint, False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(members) < len(typing.get_args(hint))
        if len(members) == 1 and members[0] in SCALARS:
            return members[0], optional
    return None, False


def arg_kinds(args_type: type) -> dict[str, str]:
    """``{name: "bool" | "int" | "float" | "str"}``: what a search space may sample for each
    field ("str" also stands for every non-numeric field, which only a choice can search)."""
    kinds = {}
    for name, hint in _field_types(args_type).items():
        scalar, _ = _scalar(hint)
        kinds[name] = scalar.__name__ if scalar in (bool, int, float) else "str"
    return kinds


def _convert(key: str, scalar: type, value: Any) -> Any:
    """``value`` as ``scalar``: an int for a float, a numeric string for a float (YAML reads
    ``5e-5`` as a string), an integral float for an int; never a bool for a number."""
    if scalar is bool:
        require(isinstance(value, bool), key, "true or false", value)
        return value
    if scalar is str:
        require(isinstance(value, str), key, "a string", value)
        return value
    require(not isinstance(value, bool), key, "an integer" if scalar is int else "a number", value)
    if scalar is int:
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        require(integral, key, "an integer", value)
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"method_args.{key} must be a number, got {value!r}") from None
    require(math.isfinite(number), key, "a finite number", value)
    return number


def parse_args(args_type: type, given: Mapping[str, Any], method: str) -> Any:
    """An ``args_type`` instance from ``given`` (the config's ``method_args``); a ``ValueError``
    names the first unknown or invalid key."""
    hints = _field_types(args_type)
    unknown = sorted(set(given) - set(hints))
    if unknown:
        raise ValueError(f"method {method!r} does not accept method_args {unknown}; "
                         f"accepted: {sorted(hints) or 'none'}")
    values = {}
    for key, value in given.items():
        scalar, optional = _scalar(hints[key])
        if scalar is None or (optional and value is None):
            values[key] = value  # a structured field: its __post_init__ checks it
        else:
            values[key] = _convert(key, scalar, value)
    return args_type(**values)
