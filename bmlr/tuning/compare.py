"""Equal-budget comparisons of balancing methods, and the paper's tables as recipes.

    python tune.py compare --dataset cremad --data-root /data/CREMA-D \\
        --methods baseline uniform_baseline bmlr ogm_ge dgl aug udi --samples 32
    python tune.py compare --methods baseline bmlr ogm_ge --no-tune      # untuned defaults, all seeds
    python tune.py recipe table5 --dataset avmnist --data-root ../shared/data --no-tune
    python tune.py compare --resume --name compare-20250101-120000      # continue an interrupted one

Each row of a comparison (an *arm*: a method, plus the Config keys the row fixes, e.g. a
fusion) is either

* **tuned** (`--samples N`): one study per arm (`bmlr.tuning.study`), all with the same
  number of trials, the same ASHA budget (`--max-epochs`, `--grace-period`,
  `--reduction-factor`) and the same seed, each on its method's own search space
  (`SearchSpace.for_method`: the shared entries minus the keys the method ignores, plus
  its `methods.<name>` section), then the best configuration trained for production with
  every seed; or
* **untuned** (`--no-tune`): the search space's untuned configuration (its fixed part
  and each searched key's `default`: the paper's and the methods' authors' values)
  trained with every seed.

Production training is `python -m bmlr.train` (`--jobs` at a time), which selects the
epoch on validation and reads test once per seed. The tables (`comparison.md`) come from
those `results.json` files only: Table I style (test accuracy, mean ± std over seeds) and
Table III style (per-modality accuracy and the imbalance ratio, the reference row
"before" each method "after"); Table II's recipe adds its with/without-BMLR pivot.

Folder `<storage>/<dataset>/<name>/`:

    comparison.json     settings, arms, MLflow parent run id, per-arm outcome
    spaces/<arm>.yaml   the search space each arm's study used (tuned)
    configs/<arm>.yaml  the production configuration of each arm
    runs/<arm>/         bmlr.train's run folder (results.json, seed<k>/model.pt)
    logs/<arm>.log      its output
    comparison.md       the tables

The studies themselves are ordinary studies, `<storage>/<dataset>/<name>-<arm>/`. In
MLflow the comparison is one parent run (tag `bmlr.role=comparison`) in the studies'
experiment; each study's parent run is nested under it (and tagged `comparison`, `arm`)
and gets the production metrics (`production.test_acc`, ...); an untuned arm gets a
nested run of its own. The comparison run holds `<arm>.test_acc` (mean),
`<arm>.test_acc_std`, per-modality accuracies and imbalance ratios, and the tables.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from bmlr.config import METHOD_ARGS_PREFIX, Config, ConfigError, from_dict
from bmlr.tuning.recipes import Arm, Recipe, describe_recipes, get_recipe, method_arms
from bmlr.tuning.search_space import (SearchSpace, SearchSpaceError, load_search_space, method_defaults,
                                      project_root, resolve_search_space)

COMPARISON_FILE = "comparison.json"
TABLE_FILE = "comparison.md"
# Config keys that do not change what is trained: left out of a run's identity (--reuse)
RUNTIME_KEYS = ("name", "output_dir", "threads", "num_workers", "cache_dir")
EXIT_ERROR, EXIT_PARTIAL, EXIT_INTERRUPTED = 2, 1, 130


class ComparisonError(RuntimeError):
    """The comparison cannot start or continue; the message says why."""


@dataclass
class ComparisonSettings:
    """Everything that defines a comparison; stored in comparison.json and reused by --resume."""

    dataset: str = "synthetic"
    arms: list[dict[str, Any]] = field(default_factory=list)  # Arm as {label, method, fixed}
    kind: str = "compare"  # "compare" or "recipe <name>"
    search_space: str = ""  # absolute path
    data_root: str | None = None
    tune: bool = True
    samples: int = 16
    max_epochs: int | None = None
    grace_period: int = 1
    reduction_factor: int = 3
    seed: int = 0
    max_failures: int = 0
    seeds: list[int] | None = None  # production seeds (None: the search space's)
    epochs: int | None = None  # production epochs (None: the search space's)
    overrides: dict[str, Any] = field(default_factory=dict)
    concurrent: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: one GPU per trial where the cluster has GPUs
    jobs: int = 1
    storage: str = "tune_runs"
    tracking_uri: str | None = None
    experiment: str | None = None
    name: str | None = None
    reference: str | None = None  # label of the "before" row (default: baseline, else the first arm)
    layout: str = "methods"
    reuse: bool = False  # reuse finished production runs of identical configurations in --storage

    def arm_list(self) -> list[Arm]:
        return [Arm(a["label"], a["method"], tuple((k, v) for k, v in a.get("fixed", {}).items()))
                for a in self.arms]

    def check(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ComparisonError(message)

        need(bool(self.arms), "nothing to compare: give --methods (or a recipe)")
        labels = [a["label"] for a in self.arms]
        need(len(set(labels)) == len(labels), f"each method (row) can be compared once, got {labels}")
        need(self.samples >= 1, f"--samples must be >= 1, got {self.samples}")
        need(self.jobs >= 1, f"--jobs must be >= 1, got {self.jobs}")
        need(self.seeds is None or (len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds)),
             f"--seeds must be distinct integers, got {self.seeds}")
        need(self.epochs is None or self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        need(self.reference is None or self.reference in labels,
             f"--reference {self.reference!r} is not one of the rows {labels}")
        for key in self.overrides:
            need(key not in ("dataset", "data_root", "method", "seeds"),
                 f"--set {key}=...: use --{key.replace('_', '-')}{' / --methods' if key == 'method' else ''}")


def slug(label: str) -> str:
    """A label as a file, study and MLflow key name ('concat+bmlr' -> 'concat-bmlr')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "arm"


def _abs(path: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(str(path))).resolve()


def run_key(cfg: Config | dict, method_args: dict[str, Any] | None = None) -> str:
    """The identity of a production run: its configuration without runtime-only keys, with
    `method_args` replaced by the arguments the method trains with (its defaults included):
    for a configuration about to be trained, computed here; for a finished run, what its
    results.json recorded (runs from before that record keep the arguments as given, so a run
    trained under a method's old defaults never matches a configuration of the new ones)."""
    data = cfg.to_dict() if isinstance(cfg, Config) else dict(cfg)
    data = {k: v for k, v in data.items() if k not in RUNTIME_KEYS}
    if isinstance(cfg, Config):
        from bmlr.methods import resolved_method_args

        method_args = resolved_method_args(cfg.method, cfg.method_args)
    if method_args is not None:
        data["method_args"] = method_args
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --- arms: spaces and configurations ------------------------------------------------------
def overrides_for(method: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """`--set` values that apply to `method`: every plain key, and the `method_args.<name>`
    keys the method accepts (`--set method_args.anchor_epochs=4` reaches UDI only)."""
    accepted = method_defaults(method)
    return {k: v for k, v in overrides.items()
            if not k.startswith(METHOD_ARGS_PREFIX) or k[len(METHOD_ARGS_PREFIX):] in accepted}


def check_overrides(arms: list[Arm], overrides: dict[str, Any]) -> list[str]:
    """`method_args.<name>` overrides must name an argument of some method (a typo is an
    error); returns those that no row of this comparison takes (the same `--set` list can
    then serve every recipe)."""
    from bmlr.methods import METHODS

    unused = []
    for key in overrides:
        if not key.startswith(METHOD_ARGS_PREFIX):
            continue
        name = key[len(METHOD_ARGS_PREFIX):]
        takers = [m for m in METHODS.names() if name in method_defaults(m)]
        if not takers:
            raise ComparisonError(f"--set {key}: no method accepts {name!r}")
        if not any(key in overrides_for(a.method, {key: 0}) for a in arms):
            unused.append(key)
    return unused


def arm_space(space: SearchSpace, arm: Arm, overrides: dict[str, Any]) -> SearchSpace:
    """What a tuned arm's study searches: the method's own space with the row's keys and the
    `--set` values fixed (a fixed key is no longer searched)."""
    flat = space.for_method(arm.method)
    if not flat.params:
        raise ComparisonError(f"row {arm.label!r}: method {arm.method!r} has nothing to search in {space.source} "
                              f"(add entries under methods.{arm.method}.search)")
    fixed = {**arm.fixed_dict, **overrides_for(arm.method, overrides)}
    if not fixed:
        return flat
    try:
        return flat.with_fixed(fixed)
    except SearchSpaceError as err:
        raise ComparisonError(f"row {arm.label!r}: {err}") from None


def untuned_config(space: SearchSpace, arm: Arm, dataset: str, data_root: str | None,
                   overrides: dict[str, Any]) -> Config:
    """An untuned arm's configuration: fixed part + defaults + row + `--set` values."""
    values = {**space.for_method(arm.method).untuned(), **arm.fixed_dict, **overrides_for(arm.method, overrides),
              "dataset": dataset, "method": arm.method}
    if data_root:
        values["data_root"] = data_root
    try:
        cfg = from_dict(values, source=f"row {arm.label!r} (untuned: {space.source} fixed + defaults)")
    except ConfigError as err:
        raise ComparisonError(str(err)) from None
    check_method(cfg, arm.label)
    return cfg


def check_method(cfg: Config, label: str) -> None:
    from bmlr.methods import METHODS

    try:
        METHODS.get(cfg.method)(cfg)
    except (ValueError, TypeError, KeyError) as err:
        raise ComparisonError(f"row {label!r}: method {cfg.method!r}: {err}") from None


def production_settings(cfg: Config, settings: ComparisonSettings, run_dir: Path) -> Config:
    changes: dict[str, Any] = {"output_dir": str(run_dir.parent), "name": run_dir.name}
    if settings.seeds is not None:
        changes["seeds"] = list(settings.seeds)
    if settings.epochs is not None:
        changes["epochs"] = int(settings.epochs)
    return cfg.replace(**changes)


# --- results and tables ---------------------------------------------------------------------
def load_results(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_complete(results: dict | None, seeds: list[int]) -> bool:
    return bool(results) and [s["seed"] for s in results.get("seeds", [])] == list(seeds) and "summary" in results


def modalities_of(results: dict) -> list[str]:
    return [k[len("test_acc_"):] for k in results["summary"] if k.startswith("test_acc_")]


def _pct(stats: dict | None) -> str:
    if not stats:
        return "-"
    return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"


def _ratio(stats: dict | None) -> str:
    if not stats:
        return "-"
    mean, std = stats["mean"], stats["std"]
    if mean != mean or mean in (float("inf"), float("-inf")):
        return "inf"
    return f"{mean:.2f} ± {std:.2f}" if std == std and std != float("inf") else f"{mean:.2f}"


def _delta(a: dict | None, b: dict | None) -> str:
    """Mean test accuracy of results `a` minus that of results `b`, in points."""
    if not a or not b:
        return "-"
    d = 100 * (a["summary"]["test_acc"]["mean"] - b["summary"]["test_acc"]["mean"])
    return f"{d:+.2f}"


def accuracy_table(rows: list[dict], reference: str | None, tuned: bool) -> str:
    """Table I style: one row per arm, test accuracy (mean ± std over seeds), the difference
    to the reference row, and (tuned) the search each arm had."""
    ref = next((r for r in rows if r["label"] == reference), None)
    best = max((r["results"]["summary"]["test_acc"]["mean"] for r in rows if r.get("results")), default=None)
    head = ["method", "test acc % (mean ± std)", f"Δ vs {reference} (points)" if ref else "Δ", "seeds"]
    if tuned:
        head += ["trials", "epochs trained in search", "best val acc % (search)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        res = r.get("results")
        acc = _pct(res["summary"]["test_acc"]) if res else "failed"
        if res and best is not None and res["summary"]["test_acc"]["mean"] == best:
            acc = f"**{acc}**"
        cells = [r["label"], acc, "" if r is ref else _delta(res, ref and ref.get("results")),
                 str(len(res["seeds"])) if res else "-"]
        if tuned:
            val = r.get("best_val_acc")
            cells += [str(r.get("trials", "-")), str(r.get("epochs_searched", "-")),
                      f"{100 * val:.2f}" if isinstance(val, (int, float)) else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def modality_table(rows: list[dict], reference: str | None) -> str:
    """Table III style: multimodal and per-modality test accuracy and the imbalance ratio
    (first / second modality, e.g. the paper's A/V ratio; strongest / weakest for three),
    each row's ratio next to the reference row's (before -> after)."""
    done = [r for r in rows if r.get("results")]
    if not done:
        return "(no finished runs)"
    mods = modalities_of(done[0]["results"])
    ref = next((r for r in done if r["label"] == reference), None)
    ratio_name = f"{mods[0][0].upper()}/{mods[1][0].upper()} ratio" if len(mods) == 2 else "max/min ratio"
    head = (["method", "multimodal %"] + [f"{u} %" for u in mods] + [ratio_name]
            + ([f"ratio {reference} → method"] if ref else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        res = r.get("results")
        if not res:
            lines.append("| " + " | ".join([r["label"], "failed"] + ["-"] * (len(head) - 2)) + " |")
            continue
        s = res["summary"]
        cells = [r["label"], _pct(s["test_acc"])] + [_pct(s.get(f"test_acc_{u}")) for u in mods]
        cells.append(_ratio(s.get("test_imbalance_ratio")))
        if ref:
            before = ref["results"]["summary"].get("test_imbalance_ratio")
            after = s.get("test_imbalance_ratio")
            cells.append("" if r is ref else f"{_ratio(before).split(' ±')[0]} → {_ratio(after).split(' ±')[0]}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fusion_table(rows: list[dict]) -> str:
    """Table II style: per fusion, test accuracy without and with BMLR and the gain."""
    by_label = {r["label"]: r for r in rows}
    fusions = [r["label"] for r in rows if not r["label"].endswith("+bmlr")]
    plain = next((by_label[f]["method"] for f in fusions), "uniform_baseline")
    head = ["fusion", f"without BMLR ({plain}) %", "with BMLR %", "gain (points)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in fusions:
        a, b = by_label[f].get("results"), by_label.get(f"{f}+bmlr", {}).get("results")
        gain = _delta(b, a)
        if gain.startswith("+") and gain != "+0.00":
            gain = f"**{gain}**"
        lines.append("| " + " | ".join([f, _pct(a["summary"]["test_acc"]) if a else "failed",
                                        _pct(b["summary"]["test_acc"]) if b else "failed", gain]) + " |")
    return "\n".join(lines)


def render_markdown(title: str, rows: list[dict], settings: ComparisonSettings, command: str,
                    notes: tuple[str, ...] = ()) -> str:
    reference = settings.reference
    tuned = settings.tune
    done = [r for r in rows if r.get("results")]
    seeds = sorted({len(r["results"]["seeds"]) for r in done})
    how = (f"each row tuned with {settings.samples} trials (ASHA: at most {settings.max_epochs or 'the fixed'} "
           f"epochs, grace {settings.grace_period}, reduction {settings.reduction_factor}; TPE seed {settings.seed}), "
           f"then its best configuration trained with every seed" if tuned else
           "untuned: each row trains the search space's fixed settings and defaults")
    parts = [f"## {title}", "",
             f"Data set `{settings.dataset}`; {how}; test accuracy over {'/'.join(map(str, seeds)) or '?'} "
             f"seeds (mean ± sample std), epoch chosen on validation.", "", f"```bash\n{command}\n```", ""]
    if settings.layout == "fusions":
        parts += [fusion_table(rows), ""]
    parts += [accuracy_table(rows, reference, tuned), "", modality_table(rows, reference), ""]
    ranked = sorted(done, key=lambda r: -r["results"]["summary"]["test_acc"]["mean"])
    if ranked:
        parts.append("Ranking by mean test accuracy: " + " > ".join(
            f"{r['label']} ({100 * r['results']['summary']['test_acc']['mean']:.2f})" for r in ranked) + ".")
    failed = [r["label"] for r in rows if not r.get("results")]
    if failed:
        parts.append(f"No result for: {', '.join(failed)} (see the log of each).")
    parts += [f"- {n}" for n in notes]
    return "\n".join(parts).rstrip() + "\n"


# --- the comparison --------------------------------------------------------------------------
@dataclass
class ComparisonOutcome:
    comparison_dir: Path
    rows: list[dict[str, Any]]
    markdown: str
    parent_run_id: str
    tracking_uri: str
    interrupted: bool = False

    @property
    def failed(self) -> list[str]:
        return [r["label"] for r in self.rows if not r.get("results")]


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def _find_comparison(storage: Path, dataset: str, name: str | None) -> Path:
    base = storage / dataset
    if name:
        folder = base / name
        if not (folder / COMPARISON_FILE).is_file():
            raise ComparisonError(f"--resume: no comparison {name!r} in {base} ({folder / COMPARISON_FILE} not found)")
        return folder
    found = sorted(base.glob(f"*/{COMPARISON_FILE}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ComparisonError(f"--resume: no comparison in {base}; pass --name")
    return found[-1].parent


class Comparison:
    """Plan (every check before anything runs), then studies, production runs, tables."""

    def __init__(self, settings: ComparisonSettings, resume: bool = False, log: Callable[[str], None] = print,
                 command: str = "", title: str = "", notes: tuple[str, ...] = ()):
        self.log = log
        self.command = command
        self.title = title
        self.notes = notes
        self.resume = resume
        storage = _abs(settings.storage)
        settings.storage = str(storage)
        self.state: dict[str, Any] = {}
        if resume:
            folder = _find_comparison(storage, settings.dataset, settings.name)
            stored = json.loads((folder / COMPARISON_FILE).read_text())
            settings = ComparisonSettings(**stored["settings"])
            self.state = stored
            self.command, self.title = stored.get("command", command), stored.get("title", title)
            self.notes = tuple(stored.get("notes", notes))
            log(f"resuming comparison {folder}")
        settings.check()
        settings.name = settings.name or f"{'compare' if settings.kind == 'compare' else slug(settings.kind)}-" \
                                         f"{'tuned' if settings.tune else 'untuned'}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.settings = settings
        self.dir = storage / settings.dataset / settings.name
        if not resume and (self.dir / COMPARISON_FILE).exists():
            raise ComparisonError(f"comparison {self.dir} exists; continue it with --resume --name {settings.name} "
                                  f"or choose another --name")
        self.arms = settings.arm_list()
        labels = [a.label for a in self.arms]
        if settings.reference is None:
            settings.reference = "baseline" if "baseline" in labels else labels[0]
        self._plan()

    # --- checks ---------------------------------------------------------------------------
    def _plan(self) -> None:
        from bmlr.tuning import tracking

        s = self.settings
        if not s.search_space:
            s.search_space = str(resolve_search_space(None, s.dataset))
        self.space = load_search_space(s.search_space)
        s.search_space = str(_abs(s.search_space))
        if s.data_root:
            root = _abs(s.data_root)
            if not root.is_dir():
                raise ComparisonError(f"data root not found: {root} (--data-root)")
            s.data_root = str(root)
        if s.overrides.get("cache_dir"):
            s.overrides["cache_dir"] = str(_abs(s.overrides["cache_dir"]))
        if "dataset" in self.space.fixed and self.space.fixed["dataset"] != s.dataset:
            raise SearchSpaceError(f"{self.space.source}: fixed.dataset: {self.space.fixed['dataset']!r} does not "
                                   f"match --dataset {s.dataset!r}")
        for key in check_overrides(self.arms, s.overrides):
            self.log(f"note: --set {key}: no row of this comparison takes it (ignored)")
        self.spaces: dict[str, SearchSpace] = {}
        self.base_configs: dict[str, Config] = {}
        for arm in self.arms:
            cfg = untuned_config(self.space, arm, s.dataset, s.data_root, s.overrides)  # checks every row
            self.base_configs[arm.label] = cfg
            if s.tune:
                self.spaces[arm.label] = arm_space(self.space, arm, s.overrides)
        self.tracking_uri = s.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
            tracking.default_tracking_uri(Path(s.storage))
        s.tracking_uri = self.tracking_uri
        s.experiment = s.experiment or f"bmlr-tune-{s.dataset}"
        try:
            tracking.check_reachable(self.tracking_uri)
            self.experiment_id = tracking.get_or_create_experiment(self.tracking_uri, s.experiment)
        except tracking.TrackingError as err:
            raise ComparisonError(str(err)) from None

    def prepare_data(self) -> dict[str, Any]:
        """Build the data cache once before anything trains (and fail early if it cannot be)."""
        from bmlr.data import DataError, build_datasets

        cfg = next(iter(self.base_configs.values()))
        start = time.time()
        try:
            data = build_datasets(cfg)
        except (DataError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
            raise ComparisonError(f"cannot prepare data set {cfg.dataset!r}: {err}") from None
        sizes = {"train": len(data.train), "val": len(data.val), "test": len(data.test)}
        self.log(f"data: {cfg.dataset} {sizes} modalities {list(data.modalities)} classes {data.num_classes} "
                 f"({time.time() - start:.1f}s)")
        return {"sizes": sizes, "modalities": list(data.modalities)}

    # --- MLflow ---------------------------------------------------------------------------
    def start_tracking(self, data_info: dict[str, Any]) -> None:
        from bmlr.tuning import tracking

        self.dir.mkdir(parents=True, exist_ok=True)
        client = tracking.client_for(self.tracking_uri)
        if self.state.get("parent_run_id"):
            self.parent_run_id = self.state["parent_run_id"]
            client.update_run(self.parent_run_id, status="RUNNING")
            return
        s = self.settings
        commit = tracking.git_commit(project_root())
        tags = {"bmlr.role": "comparison", "comparison": s.name, "dataset": s.dataset, "kind": s.kind,
                "tuned": str(s.tune).lower(), "arms": ", ".join(a.label for a in self.arms),
                "methods": ", ".join(dict.fromkeys(a.method for a in self.arms)), "comparison_dir": str(self.dir),
                "search_space": s.search_space}
        if commit:
            tags["git_commit"] = commit
        params = {"tuned": s.tune, "production_seeds": s.seeds or "search space", "data_sizes": data_info.get("sizes"),
                  "overrides": s.overrides or "none", "reference": s.reference}
        if s.tune:
            params.update({"samples": s.samples, "max_epochs": s.max_epochs or "fixed epochs",
                           "grace_period": s.grace_period, "reduction_factor": s.reduction_factor, "seed": s.seed,
                           "searcher": "optuna-tpe", "scheduler": "asha"})
            params.update({f"searched.{slug(label)}": ", ".join(sp.params) for label, sp in self.spaces.items()})
        self.parent_run_id = tracking.create_parent_run(self.tracking_uri, self.experiment_id, s.name, tags, params)
        self.save()

    def save(self, rows: list[dict] | None = None) -> None:
        data = {"settings": asdict(self.settings), "parent_run_id": getattr(self, "parent_run_id", None),
                "tracking_uri": self.tracking_uri, "experiment_id": self.experiment_id, "command": self.command,
                "title": self.title, "notes": list(self.notes), "created": self.state.get("created") or
                time.strftime("%Y-%m-%d %H:%M:%S")}
        data["rows"] = [{k: v for k, v in r.items() if k != "results"} for r in (rows or self.state.get("rows", []))]
        self.state = data
        _write_json(self.dir / COMPARISON_FILE, data)

    # --- tuning -----------------------------------------------------------------------------
    def study_dir(self, arm: Arm) -> Path:
        return Path(self.settings.storage) / self.settings.dataset / f"{self.settings.name}-{slug(arm.label)}"

    def tune(self, arm: Arm, address: str | None, num_cpus: int | None, verbose: int) -> dict[str, Any]:
        """One study for `arm` (or the finished one of an earlier run of this comparison)."""
        from bmlr.tuning import tracking
        from bmlr.tuning.study import StudySettings, run_study

        s = self.settings
        folder = self.study_dir(arm)
        row: dict[str, Any] = {"label": arm.label, "method": arm.method, "study_dir": str(folder)}
        spaces = self.dir / "spaces"
        spaces.mkdir(parents=True, exist_ok=True)
        space_file = spaces / f"{slug(arm.label)}.yaml"
        if not (folder / "study.json").is_file():
            space_file.write_text(self.spaces[arm.label].text)
        finished = (folder / "best.yaml").is_file() and (folder / "trials.csv").is_file() and \
            _csv_rows(folder / "trials.csv") >= s.samples
        if finished:
            self.log(f"[{arm.label}] study {folder} already finished")
        else:
            resume = (folder / "study.json").is_file()
            self.log(f"\n=== [{arm.label}] {'resuming' if resume else 'tuning'} method {arm.method}: "
                     f"{', '.join(self.spaces[arm.label].params)} ({s.samples} trials) ===")
            settings = StudySettings(
                dataset=s.dataset, search_space=str(space_file), data_root=s.data_root, method=arm.method,
                samples=s.samples, max_epochs=s.max_epochs, grace_period=s.grace_period,
                reduction_factor=s.reduction_factor, concurrent=s.concurrent, cpus_per_trial=s.cpus_per_trial,
                gpus_per_trial=s.gpus_per_trial, storage=s.storage, tracking_uri=self.tracking_uri,
                experiment=s.experiment, name=folder.name, seed=s.seed, max_failures=s.max_failures)
            if "outer_run_id" in getattr(StudySettings, "__dataclass_fields__", {}):
                settings.outer_run_id = self.parent_run_id  # nested from the start (else tagged below)
            try:
                outcome = run_study(settings, resume=resume, address=address, num_cpus=num_cpus, verbose=verbose,
                                    top=3, log=self.log)
            finally:
                self._tag_study(folder, arm)
            if outcome.interrupted:
                raise KeyboardInterrupt
        info = json.loads((folder / "study.json").read_text())
        row["study_run_id"] = info.get("parent_run_id")
        rows = _read_csv(folder / "trials.csv")
        row["trials"] = len(rows)
        row["epochs_searched"] = sum(int(r.get("epochs") or 0) for r in rows)
        row["trial_status"] = {st: sum(r["status"] == st for r in rows) for st in sorted({r["status"] for r in rows})}
        ok = [r for r in rows if r["status"] != "failed" and r.get("best_val_acc")]
        row["best_val_acc"] = max((float(r["best_val_acc"]) for r in ok), default=None)
        row["best_yaml"] = str(folder / "best.yaml") if (folder / "best.yaml").is_file() else None
        if row["trials"] != s.samples:
            self.log(f"warning: [{arm.label}] ran {row['trials']} trials, not {s.samples}")
        client = tracking.client_for(self.tracking_uri)
        if row["study_run_id"]:
            client.set_tag(self.parent_run_id, f"study.{slug(arm.label)}", row["study_run_id"])
        return row

    def _tag_study(self, folder: Path, arm: Arm) -> None:
        from bmlr.tuning import tracking

        try:
            run_id = json.loads((folder / "study.json").read_text())["parent_run_id"]
        except (OSError, ValueError, KeyError):
            return
        client = tracking.client_for(self.tracking_uri)
        for key, value in (("mlflow.parentRunId", self.parent_run_id), ("comparison", self.settings.name),
                           ("comparison_run_id", self.parent_run_id), ("arm", arm.label)):
            client.set_tag(run_id, key, value)

    # --- production -----------------------------------------------------------------------
    def production_config(self, arm: Arm, row: dict[str, Any]) -> Config | None:
        if self.settings.tune:
            if not row.get("best_yaml"):
                return None
            from bmlr.config import load_config

            cfg = load_config(row["best_yaml"])
        else:
            cfg = self.base_configs[arm.label]
        return production_settings(cfg, self.settings, self.dir / "runs" / slug(arm.label))

    def find_reusable(self, cfg: Config) -> Path | None:
        """A finished run of the same configuration in another comparison of --storage."""
        key = run_key(cfg)
        for path in sorted((Path(self.settings.storage) / self.settings.dataset).glob("*/runs/*/results.json")):
            if path.parent.parent.parent == self.dir:
                continue
            results = load_results(path.parent)
            if results and is_complete(results, cfg.seeds) and run_key(results["config"], results.get("method_args")) == key:
                return path.parent
        return None

    def train_all(self, jobs: list[tuple[Arm, Config]], rows: dict[str, dict]) -> None:
        """`bmlr.train` for each job: in this process with `--jobs 1`, else `python -m bmlr.train`
        processes, `--jobs` at a time. Finished runs are reused."""
        (self.dir / "configs").mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        queue = []
        for arm, cfg in jobs:
            row = rows[arm.label]
            run_dir = Path(cfg.output_dir) / cfg.name
            row["config"] = str(self.dir / "configs" / f"{slug(arm.label)}.yaml")
            cfg.to_yaml(row["config"])
            results = load_results(run_dir)
            if is_complete(results, cfg.seeds) and run_key(results["config"], results.get("method_args")) == run_key(cfg):
                self.log(f"[{arm.label}] production run {run_dir} already finished")
                row["run_dir"] = str(run_dir)
                continue
            if self.settings.reuse:
                other = self.find_reusable(cfg)
                if other is not None:
                    self.log(f"[{arm.label}] reusing the finished run {other} (same configuration)")
                    row["run_dir"] = str(other)
                    row["reused"] = True
                    continue
            if run_dir.exists():  # an unfinished run of this comparison: start it again
                shutil.rmtree(run_dir)
            queue.append((arm, cfg, run_dir))
        if self.settings.jobs == 1:
            for arm, cfg, run_dir in queue:
                self._train_here(arm, cfg, run_dir, rows[arm.label])
            return
        running: list[tuple[Arm, Path, subprocess.Popen, Any, float]] = []
        env = dict(os.environ, PYTHONPATH=str(project_root()) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        previous = _sigterm_as_interrupt()
        try:
            while queue or running:
                while queue and len(running) < self.settings.jobs:
                    arm, cfg, run_dir = queue.pop(0)
                    log_path = self.dir / "logs" / f"{slug(arm.label)}.log"
                    out = log_path.open("w")
                    self.log(f"[{arm.label}] training {cfg.method} ({cfg.epochs} epochs, seeds {cfg.seeds}) -> "
                             f"{run_dir} (log {log_path})")
                    proc = subprocess.Popen([sys.executable, "-m", "bmlr.train", "--config", rows[arm.label]["config"],
                                             "--no-progress"], stdout=out, stderr=subprocess.STDOUT, env=env,
                                            cwd=str(project_root()))
                    running.append((arm, run_dir, proc, out, time.time()))
                time.sleep(0.5)
                for item in list(running):
                    arm, run_dir, proc, out, started = item
                    if proc.poll() is None:
                        continue
                    out.close()
                    running.remove(item)
                    row = rows[arm.label]
                    if proc.returncode == 0 and load_results(run_dir):
                        row["run_dir"] = str(run_dir)
                        self.log(f"[{arm.label}] done in {time.time() - started:.0f}s")
                    else:
                        tail = (self.dir / "logs" / f"{slug(arm.label)}.log").read_text(errors="replace")
                        row["error"] = (tail.strip().splitlines() or ["no output"])[-1][:300]
                        self.log(f"[{arm.label}] production training failed (exit {proc.returncode}): {row['error']}")
        finally:
            _restore_sigterm(previous)
            for arm, run_dir, proc, out, _ in running:  # interrupted: stop what we started
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                out.close()

    def _train_here(self, arm: Arm, cfg: Config, run_dir: Path, row: dict[str, Any]) -> None:
        import contextlib

        from bmlr.data import DataError
        from bmlr.train import train

        log_path = self.dir / "logs" / f"{slug(arm.label)}.log"
        self.log(f"[{arm.label}] training {cfg.method} ({cfg.epochs} epochs, seeds {cfg.seeds}) -> {run_dir} "
                 f"(log {log_path})")
        started = time.time()
        with log_path.open("w") as out, contextlib.redirect_stdout(out):
            try:
                train(cfg, progress=False)
                error = None
            except (ConfigError, DataError, ValueError, RuntimeError, FloatingPointError, OSError) as err:
                error = f"{type(err).__name__}: {err}"
                print(error)
        if error is None and load_results(run_dir):
            row["run_dir"] = str(run_dir)
            self.log(f"[{arm.label}] done in {time.time() - started:.0f}s")
        else:
            row["error"] = (error or "no results.json")[:300]
            self.log(f"[{arm.label}] production training failed: {row['error']}")

    # --- reporting -------------------------------------------------------------------------
    def report(self, rows: list[dict[str, Any]], interrupted: bool) -> str:
        from bmlr.tuning import tracking

        for row in rows:
            row["results"] = load_results(row["run_dir"]) if row.get("run_dir") else None
        markdown = render_markdown(self.title or f"Comparison {self.settings.name}", rows, self.settings,
                                   self.command, self.notes)
        (self.dir / TABLE_FILE).write_text(markdown)
        self.save(rows)
        client = tracking.client_for(self.tracking_uri)
        run = self.parent_run_id
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for row in rows:
            res = row.get("results")
            if not res:
                continue
            key = slug(row["label"])
            for name, stats in res["summary"].items():
                short = name.removeprefix("test_")
                for suffix, value in (("", stats["mean"]), ("_std", stats["std"])):
                    if isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
                        metrics.append(Metric(f"{key}.{short}{suffix}", float(value), now, 0))
            self._log_arm_run(client, row, res)
        for i in range(0, len(metrics), 500):
            client.log_batch(run, metrics=metrics[i:i + 500])
        for path in (self.dir / TABLE_FILE, self.dir / COMPARISON_FILE):
            client.log_artifact(run, str(path))
        for folder in ("spaces", "configs"):
            if (self.dir / folder).is_dir():
                client.log_artifacts(run, str(self.dir / folder), folder)
        failed = [r["label"] for r in rows if not r.get("results")]
        client.set_tag(run, "arms.failed", ", ".join(failed) or "none")
        trials = {r.get("trials") for r in rows if "trials" in r}
        if trials:
            client.set_tag(run, "equal_trials", str(len(trials) == 1).lower())
        client.set_terminated(run, "KILLED" if interrupted else ("FAILED" if len(failed) == len(rows) else "FINISHED"))
        return markdown

    def _log_arm_run(self, client, row: dict[str, Any], res: dict) -> None:
        """Production metrics on the arm's study run (tuned) or on a nested run of its own (untuned)."""
        from mlflow.entities import Metric

        from bmlr.tuning import tracking

        run_id = row.get("study_run_id") or row.get("arm_run_id")
        if run_id is None:
            tags = {"mlflow.parentRunId": self.parent_run_id, "bmlr.role": "production", "comparison":
                    self.settings.name, "arm": row["label"], "method": row["method"], "run_dir": row["run_dir"]}
            run_id = client.create_run(self.experiment_id, run_name=f"{self.settings.name}/{slug(row['label'])}",
                                       tags=tags).info.run_id
            tracking.log_params(client, run_id, res["config"])
            row["arm_run_id"] = run_id
        now = int(time.time() * 1000)
        metrics = [Metric(f"production.{name}{suffix}", float(v), now, 0)
                   for name, stats in res["summary"].items()
                   for suffix, v in (("", stats["mean"]), ("_std", stats["std"]))
                   if isinstance(v, (int, float)) and v == v and abs(v) != float("inf")]
        client.log_batch(run_id, metrics=metrics)
        client.log_artifact(run_id, str(Path(row["run_dir"]) / "results.json"), "production")
        if not row.get("study_run_id"):
            client.set_terminated(run_id, "FINISHED")

    # --- everything ---------------------------------------------------------------------------
    def run(self, address: str | None = None, num_cpus: int | None = None, verbose: int = 1) -> ComparisonOutcome:
        s = self.settings
        data_info = self.prepare_data()
        self.start_tracking(data_info)
        self.log(f"comparison {self.dir}\n  rows: {', '.join(a.label for a in self.arms)}\n  "
                 + (f"{s.samples} trials per row, at most {s.max_epochs or 'the fixed'} epochs each (ASHA grace "
                    f"{s.grace_period}, reduction {s.reduction_factor}), seed {s.seed}" if s.tune else
                    "untuned (search space defaults)")
                 + f"\n  MLflow: {self.tracking_uri} experiment {s.experiment!r} parent run {self.parent_run_id}")
        rows = {a.label: {"label": a.label, "method": a.method, "fixed": a.fixed_dict} for a in self.arms}
        for old in self.state.get("rows", []):  # a resumed comparison keeps its arms' MLflow runs
            if old.get("label") in rows and old.get("arm_run_id"):
                rows[old["label"]]["arm_run_id"] = old["arm_run_id"]
        interrupted = False
        try:
            if s.tune:
                from bmlr.tuning.study import init_ray, quiet_ray

                quiet_ray(verbose)
                started = init_ray(address, num_cpus, verbose)
                try:
                    for arm in self.arms:
                        rows[arm.label].update(self.tune(arm, address, num_cpus, verbose))
                        self.save(list(rows.values()))
                finally:
                    if started:
                        import ray

                        ray.shutdown()
            jobs = []
            for arm in self.arms:
                cfg = self.production_config(arm, rows[arm.label])
                if cfg is None:
                    rows[arm.label]["error"] = "no trial of its study succeeded"
                    continue
                jobs.append((arm, cfg))
            self.log(f"\n=== production: {len(jobs)} rows, {self.settings.jobs} at a time ===")
            self.train_all(jobs, rows)
        except KeyboardInterrupt:
            interrupted = True
        except BaseException:
            from bmlr.tuning import tracking

            tracking.client_for(self.tracking_uri).set_terminated(self.parent_run_id, "FAILED")
            self.save(list(rows.values()))
            raise
        markdown = self.report(list(rows.values()), interrupted)
        self.log("\n" + markdown + f"\nwritten: {self.dir / TABLE_FILE}\nMLflow: {self.tracking_uri} experiment "
                 f"{s.experiment!r} comparison run {self.parent_run_id}")
        if interrupted:
            self.log(f"interrupted; continue with: python tune.py {'compare' if s.kind == 'compare' else 'recipe'} "
                     f"--resume --dataset {s.dataset} --storage {s.storage} --name {s.name}")
        return ComparisonOutcome(self.dir, list(rows.values()), markdown, self.parent_run_id, self.tracking_uri,
                                 interrupted)


def _sigterm_as_interrupt():
    """While production runs: SIGTERM (a `kill` of the driver) stops the trainings it started,
    like Ctrl-C, instead of leaving them running. Only in the main thread."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(previous) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _csv_rows(path: Path) -> int:
    return len(_read_csv(path))


# --- command line ------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and search space")
    g.add_argument("--dataset", default="synthetic", help="data set (synthetic, cremad, ks, ave, avmnist, mosi, mosei)")
    g.add_argument("--data-root", help="the data set's folder (default: the generated synthetic data set)")
    g.add_argument("--search-space", help="search-space YAML (default: search_spaces/<dataset>.yaml)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a configuration key for every row (repeatable; a searched key is then not searched); "
                   "method_args.<name>=V reaches only the methods that take <name>, e.g. "
                   "--set threads=1 --set model_width=8 --set method_args.anchor_epochs=4")
    g = p.add_argument_group("budget (the same for every row)")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--samples", type=int, default=None, help="trials per row (tuned; default 16)")
    mode.add_argument("--no-tune", action="store_true", help="no search: each row trains the search space's fixed "
                      "settings and defaults (the paper's and the methods' authors' values)")
    g.add_argument("--max-epochs", type=int, help="epochs a trial trains at most (ASHA's max_t; default: the search "
                   "space's fixed epochs)")
    g.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial can be stopped")
    g.add_argument("--reduction-factor", type=int, default=3, help="ASHA: keep 1/factor of trials per rung")
    g.add_argument("--seed", type=int, default=0, help="trial seed and TPE seed of every study")
    g.add_argument("--max-failures", type=int, default=0, help="retries of a failed trial")
    g.add_argument("--seeds", type=int, nargs="+", help="production seeds of every row (default: the search "
                   "space's fixed seeds, [0, 1, 2] as in the paper)")
    g.add_argument("--epochs", type=int, help="production epochs (default: the search space's fixed epochs)")
    g = p.add_argument_group("resources")
    g.add_argument("--jobs", type=int, default=1, help="production trainings at once (1: in this process, "
                   "more: `python -m bmlr.train` processes)")
    g.add_argument("--concurrent", type=int, help="trials at once within a study (default: as many as fit)")
    g.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs (and torch threads) per trial")
    g.add_argument("--gpus-per-trial", type=float,
                   help="fractional values share a GPU (default: 1 where the cluster has GPUs, else 0)")
    g.add_argument("--address", help="an existing Ray cluster; default: start a local one")
    g.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    g = p.add_argument_group("where results go")
    g.add_argument("--storage", default="tune_runs", help="results folder; the comparison lives in "
                   "<storage>/<dataset>/<name>/, its studies beside it")
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:////<abs storage>/mlflow.db)")
    g.add_argument("--experiment", help="MLflow experiment (default: bmlr-tune-<dataset>)")
    g.add_argument("--name", help="comparison name (default: <compare|recipe>-<tuned|untuned>-<timestamp>)")
    g.add_argument("--resume", action="store_true", help="continue the comparison --name (default: the latest of "
                   "--dataset): finished studies and production runs are kept")
    g.add_argument("--reuse", action="store_true", help="reuse finished production runs of identical "
                   "configurations from other comparisons in --storage (e.g. Table V's baseline and bmlr rows "
                   "from Table I's)")
    g.add_argument("--reference", help="the 'before' row of the tables (default: baseline, else the first row)")
    g.add_argument("-o", "--output", help="also write the Markdown tables to this file")
    g.add_argument("-v", "--verbose", type=int, default=1, choices=(0, 1, 2),
                   help="0: summaries only, 1: Ray Tune's progress table, 2: also Ray's logs")


def compare_parser() -> argparse.ArgumentParser:
    from bmlr.tuning.cli import _Formatter

    p = argparse.ArgumentParser(
        prog="bmlr-tune compare", formatter_class=_Formatter,
        description="Compare balancing methods with the same search budget: one study per method (the same "
        "trials, ASHA budget and seed), each method's winner trained with every production seed, and Table I / "
        "Table III-style tables in Markdown and MLflow. See docs/comparisons.md.")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="methods to compare (default: baseline uniform_baseline ogm_ge dgl aug udi bmlr)")
    _common(p)
    return p


def recipe_parser() -> argparse.ArgumentParser:
    from bmlr.tuning.cli import _Formatter

    p = argparse.ArgumentParser(
        prog="bmlr-tune recipe", formatter_class=_Formatter,
        description="Run one of the paper's experiments (one table) on any supported data set, tuned "
        "(--samples N, the same budget per row) or untuned (--no-tune). `--list` shows them.")
    p.add_argument("table", nargs="?", help="table1, table2, table3, table4 or table5 (table6 = table1)")
    p.add_argument("--list", action="store_true", help="list the recipes and their rows")
    _common(p)
    return p


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    from bmlr.tuning.cli import _parse_overrides as parse

    return parse(items)


def main(argv: list[str] | None = None) -> int:
    """`compare ...` or `recipe ...` (argv[0] names which)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else "compare"
    args_list = argv[1:]
    title, notes, layout = "", (), "methods"
    if command == "recipe":
        args = recipe_parser().parse_args(args_list)
        if args.list or not args.table:
            print(describe_recipes())
            return 0 if args.list else EXIT_ERROR
        try:
            recipe: Recipe = get_recipe(args.table)
        except KeyError as err:
            print(f"error: {err.args[0]}", file=sys.stderr)
            return EXIT_ERROR
        arms, kind, title, notes, layout = list(recipe.arms), f"recipe {recipe.name}", recipe.title, recipe.notes, \
            recipe.layout
        reference = args.reference or recipe.reference
    else:
        args = compare_parser().parse_args(args_list)
        from bmlr.tuning.recipes import TABLE1_METHODS

        arms, kind = list(method_arms(args.methods or TABLE1_METHODS)), "compare"
        reference = args.reference
        title = "Equal-budget comparison" if not args.no_tune else "Comparison at the untuned defaults"
    shown = " ".join(["python", "tune.py", *argv])
    try:
        overrides = _parse_overrides(args.overrides)
        settings = ComparisonSettings(
            dataset=args.dataset, arms=[{"label": a.label, "method": a.method, "fixed": a.fixed_dict} for a in arms],
            kind=kind, search_space=str(resolve_search_space(args.search_space, args.dataset)) if not args.resume
            else "", data_root=args.data_root, tune=not args.no_tune, samples=args.samples or 16,
            max_epochs=args.max_epochs, grace_period=args.grace_period, reduction_factor=args.reduction_factor,
            seed=args.seed, max_failures=args.max_failures, seeds=args.seeds, epochs=args.epochs,
            overrides=overrides, concurrent=args.concurrent, cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial, jobs=args.jobs, storage=args.storage,
            tracking_uri=args.tracking_uri, experiment=args.experiment, name=args.name, reference=reference,
            layout=layout, reuse=args.reuse)
        comparison = Comparison(settings, resume=args.resume, command=shown, title=title, notes=notes)
        outcome = comparison.run(address=args.address, num_cpus=args.num_cpus, verbose=args.verbose)
    except (ComparisonError, SearchSpaceError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as err:  # a study that could not start (StudyError) is a start-up error too
        from bmlr.tuning.study import StudyError

        if isinstance(err, StudyError):
            print(f"error: {err}", file=sys.stderr)
            return EXIT_ERROR
        raise
    if args.output:
        Path(args.output).write_text(outcome.markdown)
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_PARTIAL if outcome.failed else 0


__all__ = ["ComparisonSettings", "Comparison", "ComparisonOutcome", "ComparisonError", "accuracy_table",
           "modality_table", "fusion_table", "render_markdown", "untuned_config", "arm_space", "overrides_for",
           "run_key", "main"]
