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
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

from bmlr.config import ConfigError, load_config
from bmlr.tuning import tracking
from bmlr.tuning.export import write_config
from bmlr.tuning.search_space import SearchSpaceError, load_search_space, method_reads
from bmlr.tuning.study import (STUDY_FILE, StudyError, StudyOutcome, StudySettings, _abs, _timestamp, _write_json,
                               choose_best, format_table, init_ray, plan_study, quiet_ray, sampled_values,
                               write_csv)

STAGES = ("stage1", "stage2")


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


def _combined_rows(rows1: list[dict[str, Any]], rows2: list[dict[str, Any]], stage1_alpha: float,
                   fixed2: dict[str, Any], incumbent_id: str | None) -> list[dict[str, Any]]:
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


def choose_stage2_winner(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best of the stage-2 candidates (stage 2's trials and the stage-1 winner): the highest
    validation accuracy; on a tie the stage-1 winner stays (an alpha must do better to replace
    the default), then `choose_best`'s order (fewer epochs, trial id)."""
    candidates = [r for r in rows if r.get("stage2_candidate") in (True, "True", "true")
                  and r.get("status") != "failed" and r.get("best_val_acc") not in (None, "")]
    if not candidates:
        return None
    top = max(float(r["best_val_acc"]) for r in candidates)
    tied = [r for r in candidates if float(r["best_val_acc"]) == top]
    incumbent = [r for r in tied if int(r["stage"]) == 1]
    return incumbent[0] if incumbent else choose_best([dict(r, best_val_acc=float(r["best_val_acc"])) for r in tied])


def run_staged(settings: StudySettings, stage2_samples: int | None = None, stage1_alpha: float | None = None,
               resume: bool = False, address: str | None = None, num_cpus: int | None = None, verbose: int = 1,
               top: int = 5, log: Callable[[str], None] = print, report: str = "fast",
               baseline_study: str | None = None) -> StudyOutcome:
    """Run (or with `resume`, continue) a staged study; returns the outcome of the whole."""
    if resume:
        top_dir = _find_staged(settings)
        info = json.loads((top_dir / STUDY_FILE).read_text())
        base = StudySettings(**info["settings"])
        staged = info["staged"]
        log(f"resuming staged study {top_dir}")
    else:
        base, top_dir, info, staged = _start(settings, stage2_samples, stage1_alpha, log)
    uri = info["tracking_uri"]
    client = tracking.client_for(uri)
    quiet_ray(verbose)
    started = init_ray(address, num_cpus, verbose)
    outcomes = {}
    try:
        client.update_run(info["parent_run_id"], status="RUNNING")
        for stage in STAGES:
            stage_dir = top_dir / stage
            if staged.get(f"{stage}_done"):
                outcomes[stage] = None
                continue
            if stage == "stage2":
                _prepare_stage2(top_dir, info, staged, base, log)
            stage_settings = replace(base, search_space=str(top_dir / "spaces" / f"{stage}.yaml"),
                                     samples=staged[f"{stage}_samples"], name=f"{base.name}.{stage}",
                                     folder=str(stage_dir), outer_run_id=info["parent_run_id"], role=stage,
                                     tracking_uri=uri, experiment=base.experiment,
                                     warm_start=staged.get("warm_start", []) if stage == "stage2" else [])
            again = (stage_dir / STUDY_FILE).is_file()
            log(f"\n=== {stage}: {'resuming' if again else 'searching'} "
                f"{', '.join(staged[f'{stage}_searched'])} ({staged[f'{stage}_samples']} trials) ===")
            from bmlr.tuning.study import run_study

            outcome = run_study(stage_settings, resume=again, address=address, num_cpus=num_cpus, verbose=verbose,
                                top=top, log=log, report="none")
            outcomes[stage] = outcome
            if outcome.interrupted:
                client.set_terminated(info["parent_run_id"], "KILLED")
                log(f"the staged study was interrupted; continue it with: bmlr-tune --strategy staged --dataset "
                    f"{base.dataset} --storage {base.storage} --name {base.name} --resume")
                return StudyOutcome(top_dir, [], None, None, info["parent_run_id"], uri, True)
            if outcome.best is None:
                client.set_terminated(info["parent_run_id"], "FAILED")
                log(f"{stage}: no trial finished successfully; the staged study stops here")
                return StudyOutcome(top_dir, outcome.rows, None, None, info["parent_run_id"], uri, False)
            staged[f"{stage}_done"] = True
            staged[f"{stage}_best"] = outcome.best["trial_id"]
            info["staged"] = staged
            _write_json(top_dir / STUDY_FILE, info)
    except KeyboardInterrupt:
        client.set_terminated(info["parent_run_id"], "KILLED")
        raise
    finally:
        if started:
            import ray

            ray.shutdown()
    outcome = _finish(top_dir, info, staged, base, log, top)
    if report != "none" and outcome.best is not None:
        from bmlr.tuning.report import write_report_safely

        write_report_safely(top_dir, baseline_study=baseline_study, train_baseline=report == "full", log=log)
    return outcome


def _find_staged(settings: StudySettings) -> Path:
    from bmlr.tuning.study import find_study

    storage = _abs(settings.storage)
    folder = find_study(storage, settings.dataset, settings.name)
    if json.loads((folder / STUDY_FILE).read_text()).get("kind") != "staged":
        raise StudyError(f"{folder} is not a staged study")
    return folder


def _start(settings: StudySettings, stage2_samples: int | None, stage1_alpha: float | None,
           log: Callable[[str], None]):
    """Check everything, write the stage-1 space and create the staged MLflow run."""
    settings.check()
    space = load_search_space(settings.search_space)
    method = settings.method or space.fixed.get("method") or "bmlr"
    for key in ("alpha", "beta"):
        if key not in method_reads(method):
            raise StudyError(f"--strategy staged: method {method!r} does not read {key}; use the joint strategy")
        if key not in space.params:
            raise SearchSpaceError(f"{space.source}: --strategy staged needs search.{key} (stage 1 searches beta, "
                                   f"stage 2 alpha)")
    n1, n2 = stage2_budget(settings.samples, stage2_samples)
    alpha_param = space.params["alpha"]
    if stage1_alpha is None:
        stage1_alpha = float(alpha_param.default) if alpha_param.default is not None else 1.0
    storage = _abs(settings.storage)
    name = settings.name or f"{method}-staged-{_timestamp()}"
    top_dir = storage / settings.dataset / name
    if (top_dir / STUDY_FILE).exists():
        raise StudyError(f"study {top_dir} exists; continue it with --resume --name {name} or choose another --name")
    try:
        space1 = space.with_fixed({"alpha": stage1_alpha})
    except (SearchSpaceError, ConfigError) as err:
        raise StudyError(f"--stage1-alpha {stage1_alpha}: {err}") from None
    base = replace(settings, name=name, method=method, storage=str(storage))
    # every check of a plain study (data root, --set keys, tracking store) before anything is written
    (top_dir / "spaces").mkdir(parents=True, exist_ok=True)
    space1_path = top_dir / "spaces" / "stage1.yaml"
    space1_path.write_text(space1.text)
    try:
        probe = plan_study(replace(base, search_space=str(space1_path), samples=n1, name=f"{name}.stage1",
                                   folder=str(top_dir / "stage1")), log=lambda _m: None)
    except Exception:
        space1_path.unlink(missing_ok=True)
        for folder in (top_dir / "spaces", top_dir):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    base = replace(base, tracking_uri=probe.tracking_uri, experiment=probe.settings.experiment,
                   data_root=probe.settings.data_root, search_space=str(_abs(settings.search_space)))
    commit = tracking.git_commit(Path(__file__).resolve().parents[2])
    tags = {"dataset": base.dataset, "method": method, "search_space": base.search_space, "study": name,
            "study_dir": str(top_dir), "bmlr.role": "staged", "strategy": "staged",
            "selection_metric": "val_acc (validation, max)"}
    if commit:
        tags["git_commit"] = commit
    params = {"samples": base.samples, "stage1_samples": n1, "stage2_samples": n2, "stage1_alpha": stage1_alpha,
              "max_epochs": probe.max_epochs, "grace_period": base.grace_period,
              "reduction_factor": base.reduction_factor, "seed": base.seed,
              "stage1_searched": list(space1.params), "stage2_searched": ["alpha"]}
    parent = tracking.create_parent_run(probe.tracking_uri, probe.experiment_id, name, tags, params)
    staged = {"stage1_alpha": stage1_alpha, "stage1_samples": n1, "stage2_samples": n2,
              "stage1_searched": list(space1.params), "stage2_searched": ["alpha"]}
    info = {"kind": "staged", "settings": asdict(base), "tracking_uri": probe.tracking_uri,
            "experiment_id": probe.experiment_id, "parent_run_id": parent, "stages": list(STAGES),
            "trial_epochs": probe.max_epochs, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "git_commit": commit,
            "staged": staged}
    _write_json(top_dir / STUDY_FILE, info)
    log(f"staged study {top_dir}: stage 1 searches {', '.join(space1.params)} at alpha = {stage1_alpha} "
        f"({n1} trials), stage 2 searches alpha ({n2} trials); MLflow run {parent}")
    return base, top_dir, info, staged


def _prepare_stage2(top_dir: Path, info: dict[str, Any], staged: dict[str, Any], base: StudySettings,
                    log: Callable[[str], None]) -> None:
    """Stage 2's space: alpha alone, with every key stage 1 searched fixed to its winner."""
    from bmlr.tuning.report import read_rows

    space = load_search_space(base.search_space if Path(base.search_space).is_file()
                              else top_dir / "stage1" / "search_space.yaml")
    space1 = load_search_space(top_dir / "stage1" / "search_space.yaml")
    rows1 = read_rows(top_dir / "stage1" / "trials.csv")
    winner = next(r for r in rows1 if str(r["trial_id"]) == str(staged["stage1_best"]))
    fixed = sampled_values(winner, space1)
    path = top_dir / "spaces" / "stage2.yaml"
    if not path.is_file():
        alpha = space.params.get("alpha")
        space2 = space.with_fixed(fixed)  # leaves alpha: stage 1 searched every other key
        path.write_text(space2.to_yaml(header=[f"Stage 2 of {base.name}: alpha, with stage 1's winner "
                                               f"(trial {winner['trial_id']}) fixed."]))
        warm = []
        a0 = float(staged["stage1_alpha"])
        if alpha is not None and alpha.kind in ("uniform", "loguniform") and alpha.low <= a0 <= alpha.high:
            warm = [{"params": {"alpha": a0}, "value": float(winner["best_val_acc"])}]
        staged["warm_start"] = warm
        staged["stage2_fixed"] = fixed
        info["staged"] = staged
        _write_json(top_dir / STUDY_FILE, info)
    log(f"stage 1 winner: trial {winner['trial_id']} (validation accuracy {float(winner['best_val_acc']):.4f}): "
        + ", ".join(f"{k}={v}" for k, v in fixed.items()))


def _finish(top_dir: Path, info: dict[str, Any], staged: dict[str, Any], base: StudySettings,
            log: Callable[[str], None], top: int) -> StudyOutcome:
    from bmlr.tuning.report import read_rows

    rows1 = read_rows(top_dir / "stage1" / "trials.csv")
    rows2 = read_rows(top_dir / "stage2" / "trials.csv")
    rows = _combined_rows(rows1, rows2, staged["stage1_alpha"], staged.get("stage2_fixed", {}), staged["stage1_best"])
    winner = choose_stage2_winner(rows)
    write_csv(rows, top_dir / "trials.csv")
    uri, parent = info["tracking_uri"], info["parent_run_id"]
    client = tracking.client_for(uri)
    source = top_dir / f"stage{winner['stage']}" / "best.yaml"
    cfg = load_config(source)
    epochs = {1: sum(int(r.get("epochs") or 0) for r in rows1), 2: sum(int(r.get("epochs") or 0) for r in rows2)}
    header = [f"Best configuration of the staged study {base.name} ({base.dataset}, method {base.method}): the stage-2 "
              f"winner,", f"trial {winner['trial_id']} of stage {winner['stage']}, MLflow run {winner.get('run_id')}, "
              f"validation accuracy {float(winner['best_val_acc']):.4f} at epoch {winner.get('best_epoch')} "
              f"(study seed {base.seed}; test never read)",
              f"stage 1: {len(rows1)} trials, {epochs[1]} epochs; stage 2: {len(rows2)} trials, {epochs[2]} epochs",
              f"production: {cfg.epochs} epochs, seeds {cfg.seeds}"]
    best_yaml = write_config(cfg, top_dir / "best.yaml", header)
    info.update(best_trial_id=str(winner["trial_id"]), best_run_id=winner.get("run_id"),
                best_val_acc=float(winner["best_val_acc"]), epochs_trained=epochs[1] + epochs[2])
    _write_json(top_dir / STUDY_FILE, info)
    client.set_tag(parent, "best_run_id", winner.get("run_id") or "")
    client.set_tag(parent, "best_trial_id", str(winner["trial_id"]))
    client.set_tag(parent, "best_stage", str(winner["stage"]))
    client.log_metric(parent, "best_val_acc", float(winner["best_val_acc"]))
    client.log_metric(parent, "epochs_trained", float(epochs[1] + epochs[2]))
    for path in (best_yaml, top_dir / "trials.csv", top_dir / STUDY_FILE, top_dir / "spaces" / "stage1.yaml",
                 top_dir / "spaces" / "stage2.yaml"):
        client.log_artifact(parent, str(path))
    client.set_terminated(parent, "FINISHED")
    stage1_best = next(r for r in rows if r["stage"] == 1 and r["stage2_candidate"])
    log(f"\nstaged study {top_dir}: stage 1 best {float(stage1_best['best_val_acc']):.4f} (trial "
        f"{stage1_best['trial_id']}, alpha {staged['stage1_alpha']}), stage-2 winner "
        f"{float(winner['best_val_acc']):.4f} (trial {winner['trial_id']}, stage {winner['stage']}, alpha "
        f"{winner.get('param.alpha')}); {epochs[1] + epochs[2]} epochs trained in all")
    log("best trials of both stages:\n" + format_table(sorted(
        rows, key=lambda r: -(float(r["best_val_acc"]) if r.get("best_val_acc") not in (None, "") else -1)), top))
    log(f"best configuration: {best_yaml}\n  train it: python -m bmlr.train --config {best_yaml}")
    return StudyOutcome(top_dir, rows, winner, best_yaml, parent, uri, False)
