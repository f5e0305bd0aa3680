"""Search spaces: `search_spaces/<dataset>.yaml` -> validated Optuna distributions.

Grammar (YAML, two top-level mappings, nothing else)::

    search:                      # what the study samples, one entry per Config key
      beta:   {uniform: [0.05, 0.95]}          # float, uniform on [low, high]
      alpha:  {loguniform: [0.25, 4.0]}        # float, uniform in log space (low > 0)
      lr:     {loguniform: [1.0e-5, 1.0e-3]}
      frames: {int: [1, 4]}                    # integer in [low, high], both inclusive
      fusion: {choice: [concat, sum, film, gated]}   # one of a list of values
      optimizer: adam                          # a plain value: a constant
    fixed:                       # Config keys every trial and the exported YAML share
      epochs: 70
      batch_size: 64

`uniform` and `int` also take an optional `step` (`{uniform: [0.1, 0.9], step: 0.1}`);
numbers may be written as strings (`"1e-5"`, which YAML does not read as a float).
Every key must be a field of `bmlr.config.Config`; `fixed` is validated by building a
Config from it, and each search entry by building Configs at its bounds (or with each
choice), so `beta: {uniform: [0, 2]}` or `fusion: {choice: [attention]}` is rejected
before anything starts. Every error is a `SearchSpaceError` (a `ConfigError`) whose
message starts with the file and the key, e.g.
``search_spaces/ave.yaml: search.alpha: loguniform needs low > 0, got 0``.

`fixed.epochs` and `fixed.seeds` are the production settings of the exported
configuration; a trial trains at most `--max-epochs` (default `fixed.epochs`) with the
study's one seed.

Method-specific hyperparameters (docs/comparisons.md)::

    search:
      lr: {loguniform: [1.0e-4, 1.0e-2], default: 1.0e-3}   # default: the untuned value
      beta: {uniform: [0.05, 0.95], default: 0.5}            # read by the bmlr family only
    methods:                     # optional: per method, added to (or replacing) the shared part
      ogm_ge:
        search:
          method_args.alpha_ogm: {loguniform: [0.05, 1.0], default: 0.1}
        fixed:
          method_args.modulation_ends: 50

`SearchSpace.for_method(name)` is the flat space one method searches: the shared entries
minus the Config keys that method ignores (`alpha` and `beta` are read by the label-
reshaping methods only: each method class says so in `reads`), then its own section.
`method_args.<name>` keys must name a field of that method's `Args`; their bounds and
choices are checked by the method's `Args`. A flat file (no `methods:` section) may use `method_args.<name>`
keys at the top level when it fixes `method`; `bmlr.config.from_dict` folds them into
`method_args`. `default` (optional, inside the bounds or among the choices) is the value
an untuned run uses (`SearchSpace.untuned`); without one, the Config default (or, for a
`method_args` key, the method's own default).

The study defaults (optional, top level: `score:`, `scheduler:`, `grace_period:`, `max_epochs:`;
docs/tuning.md) are kept apart from the parameters, as `SearchSpace.defaults`.

This module holds the objects (`SearchSpace`, `Param`, `StudyDefaults`, and the derived spaces
strategies hand each other: `for_method`, `with_fixed`, `restricted`, `grid_space`) and reads
files; the checks are `bmlr.tuning.search_space_parse`, which imports none of these objects.
Neither imports Ray nor MLflow; Optuna is imported only by `Param.to_optuna`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from bmlr.config import Config, from_dict
from bmlr.fileio import atomic_write_text
from bmlr.methods import METHOD_SPECIFIC_KEYS, METHODS, method_defaults
from bmlr.tuning.search_space_parse import (KINDS, METHOD_ARGS, METHOD_SECTIONS, NOT_SEARCHABLE, SECTIONS, Entry,
                                            SearchSpaceError, check_document, checked_config)

__all__ = ["KINDS", "SECTIONS", "METHOD_SECTIONS", "METHOD_ARGS", "NOT_SEARCHABLE", "COMMAND_LINE_KEYS",
           "MethodSection", "Param", "SearchSpace", "SearchSpaceError", "StudyDefaults", "flow", "grid_space",
           "load_search_space", "method_defaults", "parse_search_space", "resolve_search_space", "project_root",
           "shipped_file", "to_flat_params"]

# Keys the command line owns; a search space may not fix them to something else.
COMMAND_LINE_KEYS = ("dataset",)


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

    def sample_values(self) -> list:
        """The bounds or every choice (each gives a valid Config)."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def describe(self) -> str:
        step = f" step {self.step}" if self.step is not None else ""
        default = f" default {self.default}" if self.default is not None else ""
        return f"{self.kind} {self.sample_values()}{step}{default}"

    def position(self, value: Any) -> float | None:
        """Where ``value`` lies in this numeric range, 0 at ``low`` and 1 at ``high`` (on a log
        scale for a loguniform one); None for a choice, an empty range or no value."""
        if self.kind == "choice" or value is None or not self.high > self.low:
            return None
        scale = math.log if self.log else float
        return (scale(float(value)) - scale(float(self.low))) / (scale(float(self.high)) - scale(float(self.low)))

    def edge(self, value: Any, tenth: float = 0.1) -> str | None:
        """``"low"`` or ``"high"`` where ``value`` lies in the outer ``tenth`` of this numeric
        range (:meth:`position`), else None (a choice has no edge)."""
        where = self.position(value)
        if where is None:
            return None
        return "low" if where <= tenth else "high" if where >= 1 - tenth else None

    def to_spec(self) -> dict[str, Any]:
        """The YAML entry this parameter was parsed from."""
        spec = {self.kind: self.sample_values(), "step": self.step, "default": self.default}
        return {key: value for key, value in spec.items() if value is not None}


@dataclass
class MethodSection:
    """`methods.<name>` of a search space: what that method searches and fixes on top of the shared part."""

    params: dict[str, Param]
    fixed: dict[str, Any]


def flow(value: Any) -> str:
    """``value`` as one line of YAML flow text (``{loguniform: [1.0e-05, 0.001]}``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("\n...").strip()


@dataclass(frozen=True)
class StudyDefaults:
    """What a search-space file says about the study rather than the space; the command line's
    flags win over each (bmlr.tuning.plan)."""

    score: str | None = None  # `score:` the trial score rule (bmlr.tuning.scores); None: the default
    scheduler: str | None = None  # `scheduler:` asha | hyperband | none; None: the default (asha)
    grace_period: int | str | None = None  # `grace_period:` ASHA's, epochs or "auto"; None: the default (plan.py)
    max_epochs: int | None = None  # `max_epochs:` a trial's budget (ASHA's max_t); None: the fixed epochs


@dataclass(init=False)
class SearchSpace:
    """What a study samples (`params`) and fixes (`fixed`), each method's section, and the
    study defaults its file names (`defaults`)."""

    params: dict[str, Param]
    fixed: dict[str, Any]
    source: str  # file path, for messages
    text: str  # the file's text, logged as an artifact
    methods: dict[str, MethodSection]
    dropped: tuple[str, ...]  # shared keys for_method left out (the method ignores them)
    defaults: StudyDefaults

    def __init__(self, params: dict[str, Param], fixed: dict[str, Any], source: str = "<search space>", text: str = "",
                 methods: dict[str, MethodSection] | None = None, dropped: tuple[str, ...] = (),
                 defaults: StudyDefaults | None = None, **study: Any):
        """`study`: `score=`, `scheduler=`, ... one by one (replacing those of `defaults`), as before `defaults`."""
        self.params, self.fixed, self.source, self.text, self.dropped = params, fixed, source, text, dropped
        self.methods = {} if methods is None else methods
        self.defaults = replace(defaults or StudyDefaults(), **study)

    # read access from before `defaults` existed (callers may read `space.defaults.<name>` instead)
    score = property(lambda self: self.defaults.score)
    scheduler = property(lambda self: self.defaults.scheduler)
    grace_period = property(lambda self: self.defaults.grace_period)
    max_epochs = property(lambda self: self.defaults.max_epochs)

    def optuna_space(self) -> dict:
        """`{key: optuna distribution}` in file order (OptunaSearch's `space`)."""
        return {name: p.to_optuna() for name, p in self.params.items()}

    def describe(self) -> str:
        return "\n".join(f"  {name:14s} {p.describe()}" for name, p in self.params.items())

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
        flat = SearchSpace(params, fixed, f"{self.source} [method {method}]", dropped=dropped, defaults=self.defaults)
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
        checked_config(fixed, source=f"{self.source} (fixed)")
        out = SearchSpace(params, fixed, self.source, methods=dict(self.methods), dropped=self.dropped,
                          defaults=self.defaults)
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

    def defaults_point(self) -> dict[str, Any]:
        """Each searched key's `default` (keys without one: none): the untuned configuration's
        values of the searched keys, a study's first trial."""
        return {k: p.default for k, p in self.params.items() if p.default is not None}

    def untuned(self) -> dict[str, Any]:
        """The configuration an untuned run trains: the fixed part plus each searched key's
        `default` (keys without one keep the Config's or the method's default)."""
        return {**self.fixed, **self.defaults_point()}

    # --- as a file ----------------------------------------------------------------------
    def to_yaml(self, header: list[str] | None = None) -> str:
        """The space as a search-space file, one line per entry (a `methods:` section is kept)."""
        def block(params: dict[str, Param], fixed: dict[str, Any], indent: str) -> list[str]:
            out = [f"{indent}search:" + (" {}" if not params else "")]
            out += [f"{indent}  {k}: {flow(p.to_spec())}" for k, p in params.items()]
            out += [f"{indent}fixed:" + (" {}" if not fixed else "")]
            out += [f"{indent}  {k}: {flow(v)}" for k, v in fixed.items()]
            return out

        lines = [f"# {line}" for line in (header or [])]
        lines += [f"{key}: {value}" for key, value in asdict(self.defaults).items() if value]
        lines += block(self.params, self.fixed, "")
        if self.methods:
            lines.append("methods:")
            for name, sec in self.methods.items():
                lines += [f"  {name}:"] + block(sec.params, sec.fixed, "    ")
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write the space's file (`text`, else `to_yaml()`) atomically; returns the path."""
        return atomic_write_text(path, self.text or self.to_yaml())


def parse_search_space(data: Any, source: str = "<search space>", text: str = "") -> SearchSpace:
    """The space of a parsed YAML document, checked (`bmlr.tuning.search_space_parse`); every
    error names `source` and the key."""
    params, fixed, sections, defaults = check_document(data, source)
    return SearchSpace(_params(params), fixed, source, text,
                       {name: MethodSection(_params(p), f) for name, (p, f) in sections.items()},
                       defaults=StudyDefaults(**defaults))


def _params(entries: dict[str, Entry]) -> dict[str, Param]:
    return {name: Param(**entry) for name, entry in entries.items()}


def grid_space(values: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any], source: str,
               header: list[str] | None = None) -> SearchSpace:
    """The space whose only searched keys are `values` (each a choice among its list, in order)
    and whose fixed part is `fixed`, checked like a file; e.g. the alpha x beta grid of a
    surface over a base configuration. `text` is its file (with `header` as comments)."""
    doc = {"search": {k: {"choice": list(v)} for k, v in values.items()},
           "fixed": {k: v for k, v in fixed.items() if k not in values}}
    space = parse_search_space(doc, source=source)
    space.text = space.to_yaml(header=header)
    return space


def load_search_space(path: str | Path) -> SearchSpace:
    """The search space of a file, its text kept (`SearchSpaceError` naming the file when it
    is missing, not YAML or not a valid space)."""
    path = Path(path)
    if not path.is_file():
        raise SearchSpaceError(f"{path}: search-space file not found")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise SearchSpaceError(f"{path}: not a text file (not UTF-8); a search space is a YAML text file") from None
    except yaml.YAMLError as err:
        raise SearchSpaceError(f"{path}: not valid YAML ({err})") from None
    return parse_search_space(data, source=str(path), text=text)


def project_root() -> Path:
    """The checkout this package lives in (where `search_spaces/` is); for an installed package
    the folder that holds it (site-packages), where none of the project's folders are."""
    return Path(__file__).resolve().parents[2]


def shipped_file(folder: str, name: str) -> Path | None:
    """`<folder>/<name>` (`search_spaces/ave.yaml`, `configs/synthetic.yaml`) as installed with
    the package (`bmlr/search_spaces/`, `bmlr/configs/`: pyproject.toml maps the checkout's
    top-level folders there), or None where it is not installed as a plain file."""
    entry = resources.files("bmlr").joinpath(folder, name)
    return entry if isinstance(entry, Path) and entry.is_file() else None


def resolve_search_space(path: str | None, dataset: str, cwd: Path | None = None) -> Path:
    """`--search-space` (default `search_spaces/<dataset>.yaml`), tried against the current
    directory, then the project root, then (for `search_spaces/<name>`) the search spaces
    installed with the package; the first that exists, absolute."""
    candidate = Path(path) if path else Path("search_spaces") / f"{dataset}.yaml"
    if candidate.is_absolute():
        return candidate
    tried = [(cwd or Path.cwd()) / candidate, project_root() / candidate]
    for option in tried:
        if option.is_file():
            return option.resolve()
    if len(candidate.parts) == 2 and candidate.parts[0] == "search_spaces":
        shipped = shipped_file(*candidate.parts)
        if shipped is not None:
            return shipped.resolve()
        tried.append(Path(__file__).resolve().parents[1] / candidate)  # where it is installed
    raise SearchSpaceError(f"{candidate}: search-space file not found (looked in "
                           f"{', '.join(str(t.parent) for t in tried)})")


def to_flat_params(cfg_dict: dict[str, Any]) -> dict[str, str]:
    """Config -> MLflow-friendly string params (lists and dicts as YAML flow text)."""
    out = {}
    for key, value in cfg_dict.items():
        if isinstance(value, (list, tuple, dict)):
            out[key] = yaml.safe_dump(value, default_flow_style=True).strip()
        else:
            out[key] = str(value)
    return out

