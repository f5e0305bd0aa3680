"""Staged search (`tune.py --strategy staged`), following the paper's Section IV-E1: beta
decides when reshaping fires and matters most, "once an appropriate beta is chosen, only a
small-scale search over alpha is required".

* **Stage 1** searches every key of the search space except alpha (beta, the learning rate,
  the fusion, ...) with alpha fixed (`--stage1-alpha`, default the search space's alpha
  `default`, else 1.0): `--samples` minus the stage-2 trials, Optuna TPE + ASHA.
* **Stage 2** searches alpha alone, with everything stage 1 chose fixed, on a small budget
  (`--stage2-samples`, default a quarter of `--samples`, at least 2). Optuna is told the
  stage-1 winner's result at the stage-1 alpha first (no retraining), and that winner stays a
  stage-2 candidate: if no other alpha beats it, stage 2's winner is the stage-1 alpha.
* **The export** (`best.yaml`) is the stage-2 winner.

`--samples` is the total over both stages, so a joint and a staged study with the same
`--samples`, `--max-epochs` and ASHA settings have the same budget of trials and the same
maximum number of epochs (`trials.csv` and the summary give the epochs actually trained).

Folder `<storage>/<dataset>/<name>/`:

    study.json       kind "staged", settings, the stages, MLflow run, winner
    spaces/          stage1.yaml, stage2.yaml: the search space of each stage
    stage1/ stage2/  ordinary studies (study.json, ray/, trials.csv, best.yaml, ...)
    trials.csv       both stages' trials (column `stage`; the keys a stage fixed filled in)
    best.yaml        the stage-2 winner as a production configuration
    report/          the study report

In MLflow the staged study is one run (tag `bmlr.role=staged`) with the two stages' parent
runs nested under it and their trials under those; `tune.py export --run-id <staged run>`
exports the winner.

The stages hand each other search spaces as objects: stage 1's is the search space with alpha
fixed, stage 2's is the search space with stage 1's winner fixed. `spaces/` records them; a
resumed staged study reads a stage's record only where an earlier run wrote it.
"""
from __future__ import annotations

import contextlib
import shlex
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from bmlr.config import ConfigError, load_config
from bmlr.fileio import abs_path, atomic_write_text, timestamp
from bmlr.methods import METHODS
from bmlr.tuning import tracking
from bmlr.tuning.export import train_command, write_config
from bmlr.tuning.results import format_table, winner_note
from bmlr.tuning.search_space import SearchSpace, SearchSpaceError, load_search_space, project_root
from bmlr.tuning.selection import SCORE, choose_best, score
from bmlr.tuning.store import StoreError, StudyStore, study_folder
from bmlr.tuning.study import (Plan, Runtime, StudyError, StudyOutcome, StudySettings, plan_study, ray_session, resume_store,
                               run_study)

__all__ = ["STAGES", "stage2_budget", "choose_stage2_winner", "run_staged"]

STAGES = ("stage1", "stage2")
SPACES_DIR = "spaces"  # the stages' search spaces, as records: stage1.yaml, stage2.yaml

Row = dict[str, Any]


def stage2_budget(samples: int, stage2_samples: int | None) -> tuple[int, int]:
    """(stage-1 trials, stage-2 trials) out of `samples` in all."""
    n2 = stage2_samples if stage2_samples is not None else max(2, round(samples / 4))
    n1 = samples - n2
    if n2 < 1:
        raise StudyError(f"--stage2-samples must be >= 1, got {n2}")
    if n1 < 1:
        raise StudyError(f"--samples {samples} leaves no trial for stage 1 after {n2} stage-2 trials "
                         f"(--samples is the total of both stages)")
    return n1, n2


def choose_stage2_winner(rows: list[Row]) -> Row | None:
    """The best of the stage-2 candidates (stage 2's trials and the stage-1 winner) by the
    selection rule; on a tie the stage-1 winner stays (an alpha must do better to replace the
    default)."""
    candidates = [r for r in rows if r.get("stage2_candidate") is True]
    return choose_best(candidates, prefer=lambda r: r["stage"] == 1)


def _combined_rows(rows1: list[Row], rows2: list[Row], stage1_alpha: float, fixed2: dict[str, Any],
                   incumbent_id: str | None) -> list[Row]:
    """Both stages' trials in one table: column `stage`, the keys a stage fixed filled in,
    `stage2_candidate` on stage 2's trials and the stage-1 winner."""
    out = []
    for row in rows1:
        r = {"stage": 1, **row}
        r.setdefault("param.alpha", stage1_alpha)
        r["stage2_candidate"] = row["trial_id"] == incumbent_id
        out.append(r)
    for row in rows2:
        r = {"stage": 2, **row}
        for key, value in fixed2.items():
            r.setdefault(f"param.{key}", value)
        r["stage2_candidate"] = True
        out.append(r)
    return out


@dataclass
class _Staged:
    """A staged study in progress: its folder, its study.json and the stage spaces built in
    this process."""

    store: StudyStore
    info: dict[str, Any]
    base: StudySettings
    spaces: dict[str, SearchSpace] = field(default_factory=dict)
    source: SearchSpace | None = None  # the search space the study started from (read on demand)

    @property
    def staged(self) -> dict[str, Any]:
        return self.info["staged"]

    @property
    def runs(self) -> tracking.StudyRuns:
        """The staged study's MLflow run (the stages' parent runs nest under it)."""
        return tracking.StudyRuns(self.info["tracking_uri"], self.info["experiment_id"], self.info["parent_run_id"])

    def save(self) -> None:
        self.store.write_info(self.info)

    def space_record(self, stage: str) -> Path:
        return self.store.dir / SPACES_DIR / f"{stage}.yaml"

    def record(self, stage: str, space: SearchSpace) -> None:
        atomic_write_text(self.space_record(stage), space.text)
        self.spaces[stage] = space

    def stage_space(self, stage: str) -> SearchSpace:
        """The stage's space: built in this run, else its record from an earlier run."""
        if stage not in self.spaces:
            self.spaces[stage] = load_search_space(self.space_record(stage))
        return self.spaces[stage]

    def original_space(self) -> SearchSpace:
        if self.source is None:
            try:
                self.source = load_search_space(self.base.search_space)
            except SearchSpaceError as err:
                raise StudyError(f"stage 2 is built from the search space the staged study started from: {err}") \
                    from None
        return self.source


def run_staged(settings: StudySettings, runtime: Runtime = Runtime(), stage2_samples: int | None = None,
               stage1_alpha: float | None = None, resume: bool = False) -> StudyOutcome:
    """Run (or with `resume`, continue) a staged study; returns the outcome of the whole. The
    staged study's folder is locked for its driver from before its exists-check to the end."""
    log = runtime.log
    with contextlib.ExitStack() as held:
        run = (_resume(settings, log, held) if resume else
               _start(settings, stage2_samples, stage1_alpha, log, held))
        if resume and run.store.is_finished() and run.staged.get("stage2_done") and run.runs.status() == "FINISHED":
            rows = run.store.read_rows()
            log(f"study {run.store.dir} is finished ({len(rows)} trials); nothing to resume")
            winner = run.store.winner(rows)
            return StudyOutcome(run.store.dir, rows, winner, run.store.best_path, run.info["parent_run_id"],
                                run.info["tracking_uri"], False)
        outcome = _run_stages(run, runtime)
        if outcome is not None:
            return outcome
        outcome = _finish(run, log, runtime.top)
    if runtime.report != "none" and outcome.best is not None:
        from bmlr.tuning.report import write_report_safely

        write_report_safely(run.store.dir, baseline_study=runtime.baseline_study, log=log)
    return outcome


def _run_stages(run: _Staged, runtime: Runtime) -> StudyOutcome | None:
    """The stages not done yet; an outcome where the staged study stops before its end."""
    uri, parent, runs, log = run.info["tracking_uri"], run.info["parent_run_id"], run.runs, runtime.log
    with ray_session(runtime.address, runtime.num_cpus, runtime.verbose):
        try:
            runs.reopen(count=False)
            for stage in STAGES:
                if run.staged.get(f"{stage}_done"):
                    continue
                outcome = _run_stage(run, stage, runtime)
                if outcome.interrupted:
                    runs.end("KILLED")
                    log(f"the staged study was interrupted; continue it with: bmlr-tune --strategy staged --dataset "
                        f"{run.base.dataset} --storage {shlex.quote(run.base.storage)} --name {run.base.name} --resume")
                    return StudyOutcome(run.store.dir, [], None, None, parent, uri, True)
                if outcome.best is None:
                    runs.end("FAILED")
                    log(f"{stage}: no trial finished successfully; the staged study stops here")
                    return StudyOutcome(run.store.dir, outcome.rows, None, None, parent, uri, False)
                run.staged[f"{stage}_done"] = True
                run.staged[f"{stage}_best"] = outcome.best["trial_id"]
                run.save()
        except KeyboardInterrupt:
            runs.end("KILLED")
            raise
        except StudyError:  # a stage that stopped on an error (a full disk): its own runs are ended already
            with contextlib.suppress(Exception):  # a full store cannot take this either: a resume ends it
                runs.end("FAILED")
            raise
    return None


def _run_stage(run: _Staged, stage: str, runtime: Runtime) -> StudyOutcome:
    """One stage as an ordinary study in `<study>/<stage>/` (resumed where it exists)."""
    log = runtime.log
    stage_store = StudyStore(run.store.dir / stage)
    again = stage_store.exists()
    space = None if again else (_prepare_stage2(run, log) if stage == "stage2" else run.stage_space(stage))
    staged = run.staged
    stage_settings = replace(run.base, search_space=str(run.space_record(stage)), samples=staged[f"{stage}_samples"],
                             name=f"{run.base.name}.{stage}", folder=str(stage_store.dir),
                             outer_run_id=run.info["parent_run_id"], role=stage,
                             tracking_uri=run.info["tracking_uri"], experiment=run.base.experiment,
                             warm_start=staged.get("warm_start", []) if stage == "stage2" else [])
    log(f"\n=== {stage}: {'resuming' if again else 'searching'} "
        f"{', '.join(staged[f'{stage}_searched'])} ({staged[f'{stage}_samples']} trials) ===")
    return run_study(stage_settings, replace(runtime, report="none"), resume=again, space=space)


def _resume(settings: StudySettings, log: Callable[[str], None], held: contextlib.ExitStack) -> _Staged:
    store = resume_store(settings)
    held.enter_context(store.lock())
    try:
        info = store.read_info()
    except StoreError as err:
        raise StudyError(str(err)) from None
    if info.get("kind") != "staged":
        raise StudyError(f"{store.dir} is not a staged study")
    log(f"resuming staged study {store.dir}")
    return _Staged(store, info, StudySettings(**info["settings"]))


def _start(settings: StudySettings, stage2_samples: int | None, stage1_alpha: float | None,
           log: Callable[[str], None], held: contextlib.ExitStack) -> _Staged:
    """Check everything, record the stage-1 space and create the staged MLflow run."""
    settings.check()
    space = load_search_space(settings.search_space)
    method = settings.method or space.fixed.get("method") or "bmlr"
    for key in ("alpha", "beta"):
        if key not in METHODS.get(method).reads:
            raise StudyError(f"--strategy staged: method {method!r} does not read {key}; use the joint strategy")
        if key not in space.params:
            raise SearchSpaceError(f"{space.source}: --strategy staged needs search.{key} (stage 1 searches beta, "
                                   f"stage 2 alpha)")
    n1, n2 = stage2_budget(settings.samples, stage2_samples)
    alpha_param = space.params["alpha"]
    if stage1_alpha is None:
        stage1_alpha = float(alpha_param.default) if alpha_param.default is not None else 1.0
    storage = abs_path(settings.storage)
    name = settings.name or f"{method}-staged-{timestamp()}"
    store = StudyStore(study_folder(storage, settings.dataset, name))
    held.enter_context(store.lock())
    if store.exists():  # under the lock: a second driver cannot pass it too
        raise StudyError(f"study {store.dir} exists; continue it with --resume --name {name} or choose another --name")
    store.check_unclaimed()  # a folder that is not a study's is never written
    try:
        space1 = space.with_fixed({"alpha": stage1_alpha})
    except (SearchSpaceError, ConfigError) as err:
        raise StudyError(f"--stage1-alpha {stage1_alpha}: {err}") from None
    base = replace(settings, name=name, method=method, storage=str(storage))
    # every check of a plain study (data root, --set keys, tracking store) before anything is written
    probe = plan_study(replace(base, samples=n1, name=f"{name}.stage1", folder=str(store.dir / "stage1")),
                       log=lambda _m: None, space=space1, lock=False)
    base = replace(base, tracking_uri=probe.tracking_uri, experiment=probe.settings.experiment,
                   data_root=probe.settings.data_root, search_space=str(abs_path(settings.search_space)))
    staged = {"stage1_alpha": stage1_alpha, "stage1_samples": n1, "stage2_samples": n2,
              "stage1_searched": list(space1.params), "stage2_searched": ["alpha"]}
    commit = tracking.git_commit(project_root())
    probe.open_experiment()
    parent = _create_run(base, probe, staged, store.dir, commit)
    info = {"kind": "staged", "settings": asdict(base), "tracking_uri": probe.tracking_uri,
            "experiment_id": probe.experiment_id, "parent_run_id": parent, "stages": list(STAGES),
            "trial_epochs": probe.max_epochs, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "git_commit": commit,
            "staged": staged}
    run = _Staged(store, info, base, source=space)
    run.record("stage1", space1)
    store.create(info)
    log(f"staged study {store.dir}: stage 1 searches {', '.join(space1.params)} at alpha = {stage1_alpha} "
        f"({n1} trials), stage 2 searches alpha ({n2} trials); MLflow run {parent}")
    return run


def _create_run(base: StudySettings, probe: Plan, staged: dict[str, Any], folder: Path, commit: str | None) -> str:
    """The staged study's MLflow run (the stages' parent runs nest under it)."""
    tags = {"dataset": base.dataset, "method": base.method, "search_space": base.search_space, "study": base.name,
            "study_dir": str(folder), "bmlr.role": "staged", "strategy": "staged",
            "selection_metric": "val_acc (validation, max)"}
    if commit:
        tags["git_commit"] = commit
    tags.update(tracking.source_tags(commit, "bmlr-tune"))
    params = {"samples": base.samples, "stage1_samples": staged["stage1_samples"],
              "stage2_samples": staged["stage2_samples"], "stage1_alpha": staged["stage1_alpha"],
              "max_epochs": probe.max_epochs, "grace_period": probe.settings.grace_period,
              "reduction_factor": base.reduction_factor, "seed": base.seed,
              "stage1_searched": staged["stage1_searched"], "stage2_searched": staged["stage2_searched"]}
    return tracking.StudyRuns.create(probe.tracking_uri, probe.experiment_id, base.name, tags, params).parent_run_id


def _prepare_stage2(run: _Staged, log: Callable[[str], None]) -> SearchSpace:
    """Stage 2's space: alpha alone, with every key stage 1 searched fixed to its winner; Optuna
    is told the winner's result at the stage-1 alpha (where alpha's range holds it)."""
    staged = run.staged
    rows1 = StudyStore(run.store.dir / "stage1").read_rows()
    winner = next(r for r in rows1 if str(r["trial_id"]) == str(staged["stage1_best"]))
    fixed = {k: winner[f"param.{k}"] for k in staged["stage1_searched"] if f"param.{k}" in winner}
    log(f"stage 1 winner: trial {winner['trial_id']} (validation accuracy {winner[SCORE]:.4f}): "
        + ", ".join(f"{k}={v}" for k, v in fixed.items()))
    if run.space_record("stage2").is_file():  # built by an earlier run that stopped before stage 2 began
        return run.stage_space("stage2")
    space = run.original_space()
    alpha = space.params.get("alpha")
    space2 = space.with_fixed(fixed)  # leaves alpha: stage 1 searched every other key
    space2.text = space2.to_yaml(header=[f"Stage 2 of {run.base.name}: alpha, with stage 1's winner "
                                         f"(trial {winner['trial_id']}) fixed."])
    a0 = float(staged["stage1_alpha"])
    warm = []
    if alpha is not None and alpha.kind in ("uniform", "loguniform") and alpha.low <= a0 <= alpha.high:
        warm = [{"params": {"alpha": a0}, "value": winner[SCORE]}]
    staged.update(warm_start=warm, stage2_fixed=fixed)
    run.record("stage2", space2)
    run.save()
    return space2


def _finish(run: _Staged, log: Callable[[str], None], top: int) -> StudyOutcome:
    """Both stages' trials in `trials.csv`, the stage-2 winner's `best.yaml`, the MLflow run
    ended with the winner's tags."""
    staged, base, store = run.staged, run.base, run.store
    rows1 = StudyStore(store.dir / "stage1").read_rows()
    rows2 = StudyStore(store.dir / "stage2").read_rows()
    rows = _combined_rows(rows1, rows2, staged["stage1_alpha"], staged.get("stage2_fixed", {}), staged["stage1_best"])
    winner = choose_stage2_winner(rows)
    store.write_rows(rows)
    cfg = load_config(StudyStore(store.dir / f"stage{winner['stage']}").best_path)
    epochs = {1: sum(r.get("epochs") or 0 for r in rows1), 2: sum(r.get("epochs") or 0 for r in rows2)}
    header = [f"Best configuration of the staged study {base.name} ({base.dataset}, method {base.method}): the stage-2 "
              f"winner,", f"trial {winner['trial_id']} of stage {winner['stage']}, MLflow run {winner.get('run_id')}, "
              f"validation accuracy {winner[SCORE]:.4f} at epoch {winner.get('best_epoch')} "
              f"(study seed {base.seed}; test never read)",
              f"stage 1: {len(rows1)} trials, {epochs[1]} epochs; stage 2: {len(rows2)} trials, {epochs[2]} epochs",
              f"production: {cfg.epochs} epochs, seeds {cfg.seeds}"]
    best_yaml = write_config(cfg, store.best_path, header)
    run.store.record_winner(winner, best_val_acc=winner[SCORE], epochs_trained=epochs[1] + epochs[2])
    run.info = run.store.read_info()
    _log_winner(run, winner, rows, epochs[1] + epochs[2], best_yaml)
    stage1_best = next(r for r in rows if r["stage"] == 1 and r["stage2_candidate"])
    log(f"\nstaged study {store.dir}: stage 1 best {stage1_best[SCORE]:.4f} (trial "
        f"{stage1_best['trial_id']}, alpha {staged['stage1_alpha']}), stage-2 winner "
        f"{winner[SCORE]:.4f} (trial {winner['trial_id']}, stage {winner['stage']}, alpha "
        f"{winner.get('param.alpha')}); {epochs[1] + epochs[2]} epochs trained in all")
    log("best trials of both stages:\n" + format_table(sorted(rows, key=lambda r: -(score(r) or -1)), top))
    log(f"best configuration: {best_yaml}\n  train it: {train_command(best_yaml)}")
    return StudyOutcome(store.dir, rows, winner, best_yaml, run.info["parent_run_id"], run.info["tracking_uri"], False)


def _log_winner(run: _Staged, winner: Row, rows: list[Row], epochs: int, best_yaml: Path) -> None:
    runs = run.runs
    stage_runs = runs.runs(r["run_id"] for r in rows if r.get("run_id"))  # one marked winner in all
    runs.mark_winner(stage_runs, winner, winner_note(winner, f"staged study {run.base.name}"),
                     best_stage=winner["stage"])
    runs.log_metrics({"epochs_trained": float(epochs)})
    runs.log_artifacts([best_yaml, run.store.trials_path, run.store.info_path, run.space_record("stage1"),
                        run.space_record("stage2")])
    runs.end("FINISHED")
