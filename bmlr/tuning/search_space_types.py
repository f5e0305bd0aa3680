"""The search-space objects: `Param` (one sampled key), `MethodSection` and `SearchSpace`.

A `SearchSpace` is what strategies hand each other: a comparison narrows the shared space to
one method (`for_method`), a staged study fixes what an earlier stage found (`with_fixed`) or
keeps searching only some keys (`restricted`), and `to_yaml` / `save` write the space as a
search-space file that `bmlr.tuning.search_space.load_search_space` reads back to an equal
space (the study folder keeps that copy for `--resume`). Building one from a YAML document, with
every check, is `bmlr.tuning.search_space_parse`; the grammar is in `bmlr.tuning.search_space`.

This module imports neither Ray nor MLflow; Optuna is imported only by `Param.to_optuna`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from bmlr.config import Config, ConfigError, from_dict
from bmlr.fileio import atomic_write_text
from bmlr.methods import METHOD_SPECIFIC_KEYS, METHODS

__all__ = ["KINDS", "METHOD_ARGS", "NOT_SEARCHABLE", "COMMAND_LINE_KEYS", "SCHEDULERS", "SearchSpaceError", "Param",
           "MethodSection", "SearchSpace", "flow"]

KINDS = ("uniform", "loguniform", "int", "choice")
METHOD_ARGS = "method_args."
# Keys a study controls itself or that are not scalar hyperparameters: never sampled.
NOT_SEARCHABLE = ("dataset", "data_root", "cache_dir", "seeds", "name", "output_dir", "device",
                  "method_args", "adam_betas", "num_workers")
# Keys the command line owns; a search space may not fix them to something else.
COMMAND_LINE_KEYS = ("dataset",)
SCHEDULERS = ("asha", "hyperband", "none")  # a study's early stopping (`scheduler:`, bmlr.tuning.ray_backend)


class SearchSpaceError(ConfigError):
    """A search-space file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Param:
    """One sampled Config key."""

    name: str
    kind: str  # one of KINDS
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    choices: tuple = ()
    default: Any = None  # the untuned value (None: the Config's or the method's default)

    @property
    def log(self) -> bool:
        return self.kind == "loguniform"

    def to_optuna(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log,
                                 step=None if self.step is None else float(self.step))

    def describe(self) -> str:
        default = f" default {self.default}" if self.default is not None else ""
        if self.kind == "choice":
            return f"choice {list(self.choices)}{default}"
        step = f" step {self.step}" if self.step is not None else ""
        return f"{self.kind} [{self.low}, {self.high}]{step}{default}"

    def to_spec(self) -> dict[str, Any]:
        """The YAML entry this parameter was parsed from."""
        spec: dict[str, Any] = {self.kind: list(self.choices) if self.kind == "choice" else [self.low, self.high]}
        if self.step is not None:
            spec["step"] = self.step
        if self.default is not None:
            spec["default"] = self.default
        return spec

    def sample_values(self) -> list:
        """Values that must each give a valid Config: the bounds or every choice."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]


@dataclass
class MethodSection:
    """`methods.<name>` of a search space: what that method searches and fixes on top of the shared part."""

    params: dict[str, Param]
    fixed: dict[str, Any]


def flow(value: Any) -> str:
    """``value`` as one line of YAML flow text (``{loguniform: [1.0e-05, 0.001]}``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("\n...").strip()


@dataclass
class SearchSpace:
    params: dict[str, Param]
    fixed: dict[str, Any]
    source: str = "<search space>"  # file path, for messages
    text: str = ""  # the file's text, logged as an artifact
    methods: dict[str, MethodSection] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()  # shared keys for_method left out (the method ignores them)
    score: str | None = None  # the trial score rule (`score:`, bmlr.tuning.scores); None: the default
    scheduler: str | None = None  # `scheduler:` asha | hyperband | none; None: the default (asha)
    grace_period: int | None = None  # `grace_period:` ASHA's, in epochs; None: the default (plan.py)
    max_epochs: int | None = None  # `max_epochs:` a trial's budget (ASHA's max_t); None: the fixed epochs

    def optuna_space(self) -> dict:
        """`{key: optuna distribution}` in file order (OptunaSearch's `space`)."""
        return {name: p.to_optuna() for name, p in self.params.items()}

    def describe(self) -> str:
        lines = [f"  {name:14s} {p.describe()}" for name, p in self.params.items()]
        return "\n".join(lines)

    def base_config(self, overrides: dict[str, Any] | None = None, source: str = "") -> Config:
        """A Config of the fixed part plus `overrides` (sampled keys keep their defaults)."""
        return from_dict({**self.fixed, **(overrides or {})}, source=source or f"{self.source} (fixed)")

    def trial_config(self, base: dict[str, Any], sampled: dict[str, Any]) -> Config:
        unknown = sorted(set(sampled) - set(self.params))
        if unknown:
            raise SearchSpaceError(f"{self.source}: sampled key(s) {unknown} are not in the search space")
        return from_dict({**base, **sampled}, source="trial configuration")

    # --- derived spaces: one method's view, fixing keys, searching fewer ----------------
    def for_method(self, method: str) -> "SearchSpace":
        """The flat space `method` searches: the shared entries without the Config keys the
        method ignores (its class's `reads`), then `methods.<method>` (its entries win), with
        `method` fixed. No `methods:` section is left; `to_yaml()` writes it as a file that a
        plain study reads."""
        if method not in METHODS:
            raise SearchSpaceError(f"{self.source}: unknown method {method!r}; expected one of {METHODS.names()}")
        fixed_method = self.fixed.get("method")
        if fixed_method is not None and fixed_method != method and any(
                k.startswith(METHOD_ARGS) for k in [*self.params, *self.fixed]):
            raise SearchSpaceError(f"{self.source}: its method_args keys belong to method {fixed_method!r}, "
                                   f"not {method!r}")
        ignored = set(METHOD_SPECIFIC_KEYS) - set(METHODS.get(method).reads)
        section = self.methods.get(method, MethodSection({}, {}))
        params = {k: p for k, p in self.params.items() if k not in ignored and k not in section.fixed}
        params.update(section.params)
        fixed = {k: v for k, v in self.fixed.items() if k not in section.params}
        fixed.update(section.fixed)
        fixed["method"] = method
        dropped = tuple(k for k in self.params if k in ignored)
        flat = SearchSpace(params=params, fixed=fixed, source=f"{self.source} [method {method}]", dropped=dropped,
                           score=self.score, scheduler=self.scheduler, grace_period=self.grace_period,
                           max_epochs=self.max_epochs)
        # (a flat space with nothing to search still gives the untuned configuration; a study of it
        # is refused where it is built: bmlr.tuning.compare.arm_space)
        flat.text = flat.to_yaml(header=[f"The search space of method {method!r}, from {self.source}."]
                                 + ([f"Not searched (method {method!r} ignores them): {', '.join(dropped)}."]
                                    if dropped else []))
        return flat

    def with_fixed(self, values: dict[str, Any]) -> "SearchSpace":
        """A copy with `values` fixed: searched keys among them are no longer searched (e.g. a
        row of a recipe that fixes the fusion). Each value is checked like a fixed entry."""
        params = {k: p for k, p in self.params.items() if k not in values}
        if not params:
            raise SearchSpaceError(f"{self.source}: fixing {sorted(values)} leaves nothing to search")
        fixed = {**self.fixed, **values}
        try:
            from_dict(fixed, source=f"{self.source} (fixed)")
        except ConfigError as err:
            raise SearchSpaceError(str(err)) from None
        out = SearchSpace(params=params, fixed=fixed, source=self.source, methods=dict(self.methods),
                          dropped=self.dropped, score=self.score, scheduler=self.scheduler,
                          grace_period=self.grace_period, max_epochs=self.max_epochs)
        out.text = out.to_yaml(header=[f"From {self.source}, with {', '.join(f'{k}={v}' for k, v in values.items())}."])
        return out

    def restricted(self, keys: Iterable[str], values: Mapping[str, Any] | None = None) -> "SearchSpace":
        """A copy that searches only `keys` (in this space's order). `values` are fixed (e.g. an
        earlier stage's winner); every other searched key is fixed at its `default`, and a key
        with neither is left out, so it keeps the Config's (or the method's) default as in an
        untuned run. The fixed values are checked like `with_fixed`'s."""
        keys = list(keys)
        values = dict(values or {})
        unknown = [k for k in keys if k not in self.params]
        if not keys or unknown:
            raise SearchSpaceError(f"{self.source}: cannot search only {keys}; searched here: {list(self.params)}")
        both = [k for k in keys if k in values]
        if both:
            raise SearchSpaceError(f"{self.source}: {both} cannot be both searched and fixed")
        defaults = {k: p.default for k, p in self.params.items()
                    if k not in keys and k not in values and p.default is not None}
        out = self.with_fixed({**defaults, **values})
        out.params = {k: p for k, p in out.params.items() if k in keys}
        out.text = out.to_yaml(header=[f"From {self.source}, searching only {', '.join(keys)}."])
        return out

    def untuned(self) -> dict[str, Any]:
        """The configuration an untuned run trains: the fixed part plus each searched key's
        `default` (keys without one keep the Config's or the method's default)."""
        values = dict(self.fixed)
        values.update({k: p.default for k, p in self.params.items() if p.default is not None})
        return values

    # --- as a file ----------------------------------------------------------------------
    def to_yaml(self, header: list[str] | None = None) -> str:
        """The space as a search-space file, one line per entry (a `methods:` section is kept)."""
        def block(params: dict[str, Param], fixed: dict[str, Any], indent: str) -> list[str]:
            out = [f"{indent}search:" + (" {}" if not params else "")]
            out += [f"{indent}  {k}: {flow(p.to_spec())}" for k, p in params.items()]
            out += [f"{indent}fixed:" + (" {}" if not fixed else "")]
            out += [f"{indent}  {k}: {flow(v)}" for k, v in fixed.items()]
            return out

        lines = [f"# {line}" for line in (header or [])] + ([f"score: {self.score}"] if self.score else [])
        lines += [f"scheduler: {self.scheduler}"] if self.scheduler else []
        lines += [f"grace_period: {self.grace_period}"] if self.grace_period else []
        lines += [f"max_epochs: {self.max_epochs}"] if self.max_epochs else []
        lines += block(self.params, self.fixed, "")
        if self.methods:
            lines.append("methods:")
            for name, sec in self.methods.items():
                lines += [f"  {name}:"] + block(sec.params, sec.fixed, "    ")
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write the space's file (`text`, else `to_yaml()`) atomically; returns the path."""
        return atomic_write_text(path, self.text or self.to_yaml())
