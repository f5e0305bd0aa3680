"""A comparison from start to end: plan (every check before anything runs), one study per
tuned row, the production trainings, the tables; `comparison.json` records each step so
`--resume` continues where it stopped.

Folder `<storage>/<dataset>/<name>/`:

    comparison.json     settings, arms, MLflow parent run id, per-arm outcome
    spaces/<arm>.yaml   the search space each arm's study used (tuned)
    configs/<arm>.yaml  the production configuration of each arm
    runs/<arm>/         bmlr.train's run folder (results.json, seed<k>/model.pt)
    logs/<arm>.log      its output
    comparison.md       the tables

The studies themselves are ordinary studies, `<storage>/<dataset>/<name>-<arm>/`. With
`--study-seeds N` (N > 1) each tuned row is searched N times, with TPE seeds seed, seed+1, ...:
its studies are `<name>-<arm>-seed<s>/`, and each search's winner is trained (`configs/`,
`runs/`, `logs/` `<arm>-seed<s>`); the row keeps them in `searches`, and its first search
(with a result) at its top level, as a row of one search has it.

Every study of a comparison draws TPE's random start-up trials from common random numbers
(:mod:`bmlr.tuning.crn_sampler`): the keys the rows share (lr, fusion, ...) take the same
values in trial k of every row, so rows differ by the method and its own keys only.
"""
from __future__ import annotations

import os
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from bmlr.config import Config, load_config
from bmlr.fileio import abs_path, atomic_write_text, read_json, write_json
from bmlr.tuning import tracking
from bmlr.tuning.compare.identity import find_reusable, is_finished_run_of, load_results
from bmlr.tuning.compare.pool import Job, run_jobs
from bmlr.tuning.compare.records import searches_of, study_record
from bmlr.tuning.compare.settings import ComparisonError, ComparisonSettings, mlflow_record, slug
from bmlr.tuning.compare.spaces import arm_space, check_overrides, production_settings, untuned_config
from bmlr.tuning.compare.tables import render_markdown, verdict_tags
from bmlr.tuning.recipes import Arm
from bmlr.tuning.search_space import SearchSpace, SearchSpaceError, load_search_space, resolve_search_space
from bmlr.tuning.store import StoreError, StudyStore, check_unclaimed, study_folder
from bmlr.tuning.study import Runtime, StudyError, StudySettings, build_cache, ray_session, run_study
from bmlr.tuning.tracking.comparison import ComparisonRun

__all__ = ["COMPARISON_FILE", "TABLE_FILE", "Comparison", "ComparisonOutcome", "find_comparison"]

COMPARISON_FILE = "comparison.json"
TABLE_FILE = "comparison.md"
Row = dict[str, Any]


@dataclass
class ComparisonOutcome:
    comparison_dir: Path
    rows: list[Row]
    markdown: str
    parent_run_id: str
    tracking_uri: str
    interrupted: bool = False

    @property
    def failed(self) -> list[str]:
        return [r["label"] for r in self.rows if not r.get("results")]


def _without_results(row: Row) -> Row:
    """A row as comparison.json keeps it: the results stay in each run's results.json."""
    kept = {k: v for k, v in row.items() if k != "results"}
    if "searches" in kept:
        kept["searches"] = [{k: v for k, v in t.items() if k != "results"} for t in kept["searches"]]
    return kept


def find_comparison(storage: Path, dataset: str, name: str | None) -> Path:
    """The folder of comparison `name` under `<storage>/<dataset>`, else the latest there."""
    base = storage / dataset
    if name:
        folder = study_folder(storage, dataset, name)
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
        self.log, self.command, self.title, self.notes, self.resume = log, command, title, notes, resume
        storage = abs_path(settings.storage)
        settings.storage = str(storage)
        self.state: dict[str, Any] = {}
        self.mlflow: ComparisonRun | None = None
        if resume:
            settings = self._restore(find_comparison(storage, settings.dataset, settings.name))
        settings.check()
        settings.fill_defaults()
        self.settings = settings
        self.dir = study_folder(storage, settings.dataset, settings.name)
        if not resume and (self.dir / COMPARISON_FILE).exists():
            raise ComparisonError(f"comparison {self.dir} exists; continue it with --resume --name {settings.name} "
                                  f"or choose another --name")
        if not resume:  # never write into a folder not ours
            check_unclaimed(self.dir, COMPARISON_FILE, "a comparison")
        self.arms = settings.arm_list()
        self._plan()

    def _restore(self, folder: Path) -> ComparisonSettings:
        """The settings, command, title and notes of the comparison in `folder`."""
        stored = read_json(folder / COMPARISON_FILE)
        self.state = stored
        self.command, self.title = stored.get("command", self.command), stored.get("title", self.title)
        self.notes = tuple(stored.get("notes", self.notes))
        self.log(f"resuming comparison {folder}")
        return ComparisonSettings(**stored["settings"])

    @property
    def parent_run_id(self) -> str | None:
        return self.mlflow.run_id if self.mlflow else self.state.get("parent_run_id")

    # --- checks ---------------------------------------------------------------------------
    def _plan(self) -> None:
        s = self.settings
        self.space = self._load_space()
        if s.data_root:
            root = abs_path(s.data_root)
            if not root.is_dir():
                raise ComparisonError(f"data root not found: {root} (--data-root)")
            s.data_root = str(root)
        if s.overrides.get("cache_dir"):
            s.overrides["cache_dir"] = str(abs_path(s.overrides["cache_dir"]))
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
        s.experiment = s.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"bmlr-tune-{s.dataset}"
        try:
            tracking.check_reachable(self.tracking_uri)  # its experiment is opened once the data are ready
        except tracking.TrackingError as err:
            raise ComparisonError(str(err)) from None

    def _load_space(self) -> SearchSpace:
        """The comparison's search space (default: the data set's), for this data set."""
        s = self.settings
        if not s.search_space:
            s.search_space = str(resolve_search_space(None, s.dataset))
        space = load_search_space(s.search_space)
        s.search_space = str(abs_path(s.search_space))
        if "dataset" in space.fixed and space.fixed["dataset"] != s.dataset:
            raise SearchSpaceError(f"{space.source}: fixed.dataset: {space.fixed['dataset']!r} does not "
                                   f"match --dataset {s.dataset!r}")
        return space

    def prepare_data(self) -> dict[str, Any]:
        """Build the data cache once before anything trains (and fail early if it cannot be)."""
        try:
            return build_cache(next(iter(self.base_configs.values())), self.log)
        except StudyError as err:
            raise ComparisonError(str(err)) from None

    # --- comparison.json and MLflow -------------------------------------------------------------
    def start_tracking(self, data_info: dict[str, Any]) -> None:
        """The comparison's MLflow run: a resumed comparison's again, else a new one."""
        try:
            self.experiment_id = tracking.get_or_create_experiment(self.tracking_uri, self.settings.experiment)
        except tracking.TrackingError as err:
            raise ComparisonError(str(err)) from None
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.state.get("parent_run_id"):
            self.mlflow = ComparisonRun(self.tracking_uri, self.experiment_id, self.state["parent_run_id"],
                                        self.settings.name)
            self.mlflow.reopen()
            return
        tags, params = mlflow_record(self.settings, self.arms, self.spaces, data_info, self.dir)
        self.mlflow = ComparisonRun.create(self.tracking_uri, self.experiment_id, self.settings.name, tags, params)
        self.save()

    def save(self, rows: list[Row] | None = None) -> None:
        data = {"settings": asdict(self.settings), "parent_run_id": self.parent_run_id,
                "tracking_uri": self.tracking_uri, "experiment_id": self.experiment_id, "command": self.command,
                "title": self.title, "notes": list(self.notes), "created": self.state.get("created") or
                time.strftime("%Y-%m-%d %H:%M:%S")}
        data["rows"] = [_without_results(r) for r in (rows or self.state.get("rows", []))]
        self.state = data
        write_json(self.dir / COMPARISON_FILE, data)

    # --- tuning -----------------------------------------------------------------------------
    def study_seeds(self) -> list[int]:
        """The TPE seeds each tuned row is searched with: seed, seed+1, ... (`--study-seeds`)."""
        return [self.settings.seed + k for k in range(self.settings.study_seeds)]

    def suffix(self, study_seed: int | None) -> str:
        """What tells a row's searches apart in folder and file names ('' for one search)."""
        return f"-seed{study_seed}" if study_seed is not None and len(self.study_seeds()) > 1 else ""

    def study_dir(self, arm: Arm, study_seed: int | None = None) -> Path:
        return (Path(self.settings.storage) / self.settings.dataset /
                f"{self.settings.name}-{slug(arm.label)}{self.suffix(study_seed)}")

    def tune(self, arm: Arm, study_seed: int, address: str | None, num_cpus: int | None, verbose: int) -> Row:
        """One study for `arm` with TPE seed `study_seed` (or the finished one of an earlier run
        of this comparison); what the row keeps of it (:meth:`_study_row`)."""
        store = StudyStore(self.study_dir(arm, study_seed))
        finished = store.best_path.is_file() and store.is_finished() and \
            len(store.read_rows()) >= self.samples_of(arm)
        if finished:
            self.log(f"[{arm.label}] study {store.dir} already finished")
        else:
            self._run_study(arm, store, study_seed, address, num_cpus, verbose)
        row = self._study_row(arm, store)
        row["study_seed"] = study_seed
        if row["study_run_id"]:
            self.mlflow.link_study(arm.label + self.suffix(study_seed), row["study_run_id"])
        return row

    def _study_settings(self, arm: Arm, space_file: Path, store: StudyStore, study_seed: int) -> StudySettings:
        """The row's study settings with TPE seed `study_seed` and common random numbers."""
        settings = self.settings.study_settings(arm, space_file, store.dir, self.parent_run_id)
        return replace(settings, seed=study_seed, crn=True, samples=self.samples_of(arm))

    def _run_study(self, arm: Arm, store: StudyStore, study_seed: int, address: str | None, num_cpus: int | None,
                   verbose: int) -> None:
        """Run (or resume) a study of `arm` on its search space (handed over as an object; the
        comparison keeps a copy in `spaces/<arm>.yaml`, logged with its tables)."""
        space_file = self.dir / "spaces" / f"{slug(arm.label)}.yaml"
        resume = store.exists()
        if not resume:
            atomic_write_text(space_file, self.spaces[arm.label].text)
        self.log(f"\n=== [{arm.label}] {'resuming' if resume else 'tuning'} method {arm.method}: "
                 f"{', '.join(self.spaces[arm.label].params)} ({self.samples_of(arm)} trials, "
                 f"TPE seed {study_seed}) ===")
        settings = self._study_settings(arm, space_file, store, study_seed)
        try:
            runtime = Runtime(address=address, num_cpus=num_cpus, verbose=verbose, top=3, log=self.log)
            outcome = run_study(settings, runtime, resume=resume, space=self.spaces[arm.label])
        finally:
            try:
                self.mlflow.nest_study(store.read_info()["parent_run_id"], arm.label, study_seed)
            except (StoreError, KeyError):  # the study stopped before it had an MLflow run: nothing to tag
                pass
        if outcome.interrupted:
            raise KeyboardInterrupt

    def _study_row(self, arm: Arm, store: StudyStore) -> Row:
        """What the comparison keeps of a row's finished study (:func:`study_record`)."""
        row = study_record(arm.label, arm.method, store)
        if row["trials"] != self.samples_of(arm):
            self.log(f"warning: [{arm.label}] ran {row['trials']} trials, not {self.samples_of(arm)}")
        return row

    def samples_of(self, arm: Arm) -> int:
        """The trials of each of `arm`'s studies: `--samples`, else so many per searched key (ComparisonSettings)."""
        return self.settings.row_samples(len(self.spaces[arm.label].params))

    # --- production -----------------------------------------------------------------------
    def production_config(self, arm: Arm, row: Row) -> Config | None:
        """The winner of the search `row` (tuned) or the row's untuned configuration, with the
        production seeds and epochs; None where its study has no winner."""
        if self.settings.tune:
            if not row.get("best_yaml"):
                return None
            cfg = load_config(row["best_yaml"])
        else:
            cfg = self.base_configs[arm.label]
        return production_settings(cfg, self.settings, self.dir / "runs" /
                                   (slug(arm.label) + self.suffix(row.get("study_seed"))))

    def train_all(self, jobs: list[tuple[Arm, Config, Row]]) -> None:
        """`bmlr.train` for each job (a row's search or untuned row, `Row`, to record the run
        in): in this process with `--jobs 1`, else `python -m bmlr.train` processes, `--jobs`
        at a time. Finished runs are reused."""
        (self.dir / "configs").mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        targets: dict[str, Row] = {}
        queue = []
        for arm, cfg, target in jobs:
            job = self._job(arm, cfg, target)
            if job is not None:
                targets[job.label] = target
                queue.append(job)

        def done(job: Job, error: str | None) -> None:
            if error is None:
                targets[job.label]["run_dir"] = str(job.run_dir)
            else:
                targets[job.label]["error"] = error

        run_jobs(queue, self.settings.jobs, self.log, done)

    def _job(self, arm: Arm, cfg: Config, row: Row) -> Job | None:
        """The training of a row's search (or untuned row), or None where a finished run of its
        configuration exists (this comparison's, or with --reuse another's)."""
        suffix = self.suffix(row.get("study_seed"))
        job = Job(arm.label + suffix, cfg, self.dir / "configs" / f"{slug(arm.label)}{suffix}.yaml",
                  self.dir / "logs" / f"{slug(arm.label)}{suffix}.log")
        row["config"] = str(job.config_path)
        cfg.to_yaml(row["config"])
        if is_finished_run_of(load_results(job.run_dir), cfg):
            self.log(f"[{job.label}] production run {job.run_dir} already finished")
            row["run_dir"] = str(job.run_dir)
            return None
        if self.settings.reuse:
            other = find_reusable(cfg, Path(self.settings.storage) / self.settings.dataset, exclude=self.dir)
            if other is not None:
                self.log(f"[{job.label}] reusing the finished run {other} (same configuration)")
                row["run_dir"] = str(other)
                row["reused"] = True
                return None
        if job.run_dir.exists():  # an unfinished run of this comparison: start it again
            shutil.rmtree(job.run_dir)
        return job

    # --- reporting -------------------------------------------------------------------------
    def load_row_results(self, row: Row) -> None:
        """Each search's results; a row of several searches takes its first search with a
        result (else its first) as its own run, so its top level reads as a row of one."""
        for search in searches_of(row):
            search["results"] = load_results(search["run_dir"]) if search.get("run_dir") else None
        if "searches" in row and row["searches"]:
            first = next((t for t in row["searches"] if t.get("results")), row["searches"][0])
            row.update({k: v for k, v in first.items() if k not in ("label", "method")})

    def report(self, rows: list[Row], interrupted: bool) -> str:
        """comparison.md, comparison.json and the MLflow run from the rows' results."""
        for row in rows:
            self.load_row_results(row)
        markdown = render_markdown(self.title or f"Comparison {self.settings.name}", rows, self.settings,
                                   self.command, self.notes)
        atomic_write_text(self.dir / TABLE_FILE, markdown)
        self.save(rows)
        self.mlflow.log_rows(rows, [self.dir / TABLE_FILE, self.dir / COMPARISON_FILE],
                             [self.dir / "spaces", self.dir / "configs"], interrupted,
                             verdict_tags(rows, self.settings))
        return markdown

    # --- everything ---------------------------------------------------------------------------
    def run(self, address: str | None = None, num_cpus: int | None = None, verbose: int = 1) -> ComparisonOutcome:
        s = self.settings
        self.start_tracking(self.prepare_data())
        self.log(self._describe())
        rows = {a.label: {"label": a.label, "method": a.method, "fixed": a.fixed_dict} for a in self.arms}
        for old in self.state.get("rows", []):  # a resumed comparison keeps its arms' MLflow runs
            if old.get("label") in rows and old.get("arm_run_id"):
                rows[old["label"]]["arm_run_id"] = old["arm_run_id"]
        interrupted = False
        try:
            if s.tune:
                self._tune_all(rows, address, num_cpus, verbose)
            self._produce(rows)
        except KeyboardInterrupt:
            interrupted = True
        except BaseException:
            self.mlflow.fail()
            self.save(list(rows.values()))
            raise
        markdown = self.report(list(rows.values()), interrupted)
        self.log("\n" + markdown + f"\nwritten: {self.dir / TABLE_FILE}\nMLflow: {self.tracking_uri} experiment "
                 f"{s.experiment!r} comparison run {self.parent_run_id}")
        if interrupted:
            self.log(f"interrupted; continue with: python tune.py {'compare' if s.kind == 'compare' else 'recipe'} "
                     f"--resume --dataset {s.dataset} --storage {shlex.quote(s.storage)} --name {s.name}")
        return ComparisonOutcome(self.dir, list(rows.values()), markdown, self.parent_run_id, self.tracking_uri,
                                 interrupted)

    def _describe(self) -> str:
        s = self.settings
        seeds = self.study_seeds()
        most = s.max_epochs or "the search space's"
        budget = (f"{s.budget_text()}, at most {most} epochs each (ASHA grace "
                  f"{s.grace_period or 'of the search space, else measured'}, reduction {s.reduction_factor}), "
                  f"{'seed ' + str(s.seed) if len(seeds) == 1 else f'{len(seeds)} searches per row, seeds {seeds}'}"
                  if s.tune else "untuned (search space defaults)")
        return (f"comparison {self.dir}\n  rows: {', '.join(a.label for a in self.arms)}\n  {budget}"
                f"\n  MLflow: {self.tracking_uri} experiment {s.experiment!r} parent run {self.parent_run_id}")

    def _tune_all(self, rows: dict[str, Row], address: str | None, num_cpus: int | None, verbose: int) -> None:
        """Every row's studies, first study seed first for every row, in one Ray instance
        (started here unless one is running). Each row records TPE's number of random start-up
        trials (`startup_trials`, for the table's budget flag) and whether its start-up draws
        were common random numbers (`crn`)."""
        from bmlr.tuning.crn_sampler import tpe_startup_trials  # imports Optuna: only where a row is tuned

        seeds = self.study_seeds()
        for row in rows.values():
            row.update(startup_trials=tpe_startup_trials(), crn=True)
            if len(seeds) > 1:
                row["searches"] = [{"study_seed": seed} for seed in seeds]
        with ray_session(address, num_cpus, verbose):
            for k, seed in enumerate(seeds):
                for arm in self.arms:
                    searches_of(rows[arm.label])[k].update(self.tune(arm, seed, address, num_cpus, verbose))
                    self.save(list(rows.values()))

    def _produce(self, rows: dict[str, Row]) -> None:
        """Every search's winner (tuned) or every row's configuration (untuned) trained with
        every production seed."""
        jobs = []
        for arm in self.arms:
            for target in searches_of(rows[arm.label]):
                cfg = self.production_config(arm, target)
                if cfg is None:
                    target["error"] = "no trial of its study succeeded"
                    continue
                jobs.append((arm, cfg, target))
        self.log(f"\n=== production: {len(jobs)} trainings, {self.settings.jobs} at a time ===")
        self.train_all(jobs)
