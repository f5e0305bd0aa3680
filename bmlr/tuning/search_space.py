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

The objects live in `bmlr.tuning.search_space_types` (`SearchSpace`, `Param`, and the derived
spaces strategies hand each other: `for_method`, `with_fixed`, `restricted`), the checks in
`bmlr.tuning.search_space_parse` (`parse_search_space`, `grid_space`); this module reads files
and is the public face of all three. Neither imports Ray nor MLflow; Optuna is imported only
by `Param.to_optuna`.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bmlr.methods import method_defaults
from bmlr.tuning.search_space_parse import METHOD_SECTIONS, SECTIONS, grid_space, parse_search_space
from bmlr.tuning.search_space_types import (COMMAND_LINE_KEYS, KINDS, METHOD_ARGS, NOT_SEARCHABLE, MethodSection,
                                            Param, SearchSpace, SearchSpaceError)

__all__ = ["KINDS", "SECTIONS", "METHOD_SECTIONS", "METHOD_ARGS", "NOT_SEARCHABLE",
           "COMMAND_LINE_KEYS", "MethodSection", "Param", "SearchSpace", "SearchSpaceError", "grid_space",
           "load_search_space", "method_defaults", "parse_search_space", "resolve_search_space", "project_root",
           "shipped_file", "to_flat_params"]


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

