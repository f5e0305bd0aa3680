"""The baseline counterpart of a study's best trial (for the learning curves, the paper's
Figure 6): the same configuration, seed, schedule and budget with `method: baseline`,
trained once in this process by the library's training loop (`Trainer.fit`) and cached in
the report folder."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from bmlr.config import Config, from_dict, load_config
from bmlr.fileio import finite_or_none, read_json, write_json
from bmlr.tuning.report.study_view import Log, StudyView

__all__ = ["CACHE_FILE", "baseline_counterpart", "counterpart_config", "train_history", "write_counterpart"]

CACHE_FILE = "baseline_counterpart.json"

History = list[dict[str, Any]]


def _trial_seed(row: dict[str, Any], study: StudyView) -> int:
    """The training seed of a trial (its searched `seeds`, else the study's seed)."""
    value = row.get("param.seeds")
    if isinstance(value, str):
        value = yaml.safe_load(value)
    if isinstance(value, (list, tuple)) and value:
        return int(value[0])
    return int(study.settings.get("seed", 0) or 0)


def counterpart_config(study: StudyView, best: dict[str, Any]) -> tuple[Config, int] | None:
    """The best trial's production configuration with `method: baseline` and one seed (the
    trial's), and its budget: as many epochs as a trial could train. The configuration keeps
    the production epochs as its schedule's horizon, as the trials do (a budget beyond them
    stretches the horizon); None without a `best.yaml`."""
    best_yaml = study.store.best_path
    if not best_yaml.is_file():
        return None
    cfg_dict = load_config(best_yaml).to_dict()
    budget = int(best.get("epochs") or 0) or study.trial_epochs() or cfg_dict["epochs"]
    budget = max(int(budget), int(study.trial_epochs() or 0))
    cfg_dict.update(method="baseline", epochs=max(int(cfg_dict["epochs"]), budget),
                    seeds=[_trial_seed(best, study)], name=None)
    return from_dict(cfg_dict, source="baseline counterpart"), budget


def _cached(cache: Path, wanted: dict[str, Any], log: Log) -> tuple[History, dict[str, Any]] | None:
    """The cached history if it was trained with exactly this configuration."""
    if not cache.is_file():
        return None
    try:
        cached = read_json(cache)
        if cached.get("config") == _as_json(wanted):
            return cached["history"], cached["config"]
    except (OSError, ValueError, KeyError, AttributeError) as err:
        log(f"report: {cache} is unreadable ({type(err).__name__}: {err}); training the counterpart again")
    return None


def _as_json(data: dict[str, Any]) -> Any:
    """`data` as it reads back from a JSON file (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(data, default=str))


def _numbers(metrics: dict[str, Any]) -> dict[str, float | None]:
    """An epoch's numeric metrics as JSON-safe floats (None where not finite)."""
    return {k: finite_or_none(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def train_history(cfg: Config, budget: int) -> History:
    """Train `cfg` from scratch for `budget` epochs (validation only), on at most 4 threads
    unless it sets its own."""
    import torch

    from bmlr.engine import Trainer

    threads_before = torch.get_num_threads()
    try:
        if not cfg.threads:
            torch.set_num_threads(max(1, min(4, threads_before)))
        return [_numbers(m) for m in Trainer(cfg, seed=cfg.seeds[0]).fit(budget)]
    finally:
        torch.set_num_threads(threads_before)


def baseline_counterpart(study: StudyView, best: dict[str, Any], out_dir: Path,
                         log: Log) -> tuple[History, dict[str, Any]] | None:
    """Train the best trial's configuration with `method: baseline` (same seed and epochs) once,
    in this process; the history is cached in `out_dir/baseline_counterpart.json`. Returns
    (history, configuration), or None where the study has no `best.yaml`."""
    planned = counterpart_config(study, best)
    if planned is None:
        return None
    cfg, budget = planned
    wanted = {**cfg.to_dict(), "max_epochs": budget}
    cache = out_dir / CACHE_FILE
    cached = _cached(cache, wanted, log)
    if cached is not None:
        return cached
    log(f"report: training the baseline counterpart of trial {best['trial_id']} for the learning curves "
        f"(method baseline, {budget} of {cfg.epochs} epochs, seed {cfg.seeds[0]}; --report fast or --fast skips it)")
    start = time.time()
    history = train_history(cfg, budget)
    write_counterpart(out_dir, cfg.to_dict(), budget, history, time.time() - start)
    return history, wanted


def write_counterpart(out_dir: Path, config: dict[str, Any], budget: int, history: History, seconds: float) -> None:
    """Cache a counterpart trained with `config` for `budget` epochs where the report reads it
    (also how the study's baseline reference, bmlr.tuning.references, hands its run over)."""
    write_json(out_dir / CACHE_FILE, {"config": {**config, "max_epochs": budget}, "history": history,
                                      "seconds": seconds})
