"""Production training: `python -m bmlr.train --config run.yaml` (also `bmlr-train`).

For every seed in the config: train for `epochs`, keep the epoch with the best
validation multimodal accuracy, then evaluate the test split once with that
model. Writes `<output_dir>/<name>/results.json` (updated after every seed, so
nothing finished is lost if a later seed fails; `"complete": false` until every
seed has finished) and `seed<k>/model.pt`, and prints the mean and standard
deviation over seeds. The run folder is created once the configuration and the
data have been checked. Every file is written whole or not at all (a temporary file moved
into place), so a reader, a kill or a full disk never leaves half a `model.pt` or
`results.json`. Ctrl-C, SIGTERM or SIGHUP (a closed terminal or SSH session) ends the run
with one line saying what `results.json` keeps, exit status 130; bad input, and an output
that cannot be written (a full disk, a quota, a read-only folder): `error: ...` naming the
file and `output_dir`, exit status 2.

`--from-run <MLflow run id>` trains a trial chosen in the MLflow UI (a study's run: its
best trial) with its configuration as trained and the study's production epochs and seeds.
The run is logged to MLflow (`bmlr.production_tracking`: one run, a nested run per seed)
where a store is known: `--tracking-uri`, `$MLFLOW_TRACKING_URI`, or the study that exported
the configuration (its `source`); `--no-mlflow` turns that off. A store that cannot be used
stops the run before training, exit status 2. The run ends FINISHED, KILLED (interrupted) or
FAILED; one left RUNNING by a process killed outright (kill -9, power loss) is ended KILLED
the next time a production run uses the same store on the same host.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from bmlr.config import Config, ConfigError, from_dict, load_config
from bmlr.data import DataError, build_datasets
from bmlr.data.cache import cache_root
from bmlr.engine import Trainer, mean_std, resolve_device
from bmlr.fileio import atomic_torch_save, write_failure_line, write_json
from bmlr.methods import resolved_method_args
from bmlr.mlflow_store import TrackingError, check_store, fetch_trial, store_of
from bmlr.predictor import Predictor, signature_example
from bmlr.production_tracking import (ProductionRun, Target, Untracked, check_target, open_run, resolve_target,
                                      stderr_line)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs, values parsed as YAML (so 1e-3, true, [0, 1] work). Kept here,
    below `bmlr.tuning`, so that every command line taking `--set` can share it."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def run_config(path: str | None, overrides: list[str]) -> Config:
    """The run's configuration: the YAML at `path` (all defaults, the synthetic data set,
    without one) with the `--set` overrides applied."""
    parsed = parse_overrides(overrides)
    return load_config(path, parsed) if path else from_dict(parsed, source="--set")


def config_from_run(run_id: str, overrides: list[str], tracking_uri: str | None = None,
                    storage: str = "tune_runs") -> Config:
    """The production configuration of MLflow run ``run_id`` (a trial, or a study's run: its
    best trial): the trial's configuration as trained (its `threads` included), the study's
    production epochs and seeds, ``source`` naming the run, then the ``--set`` overrides.
    Never creates a store; TrackingError naming the run and the store where it cannot be read."""
    uri, origin = store_of(tracking_uri, storage)
    try:
        check_store(uri, origin)
    except TrackingError as err:
        raise TrackingError(f"--from-run {run_id}: {err}") from None
    trial = fetch_trial(uri, run_id)
    data = {**trial.config, "name": None, "source": trial.source}
    if trial.epochs is not None:
        data["epochs"] = trial.epochs
    if trial.seeds is not None:
        data["seeds"] = trial.seeds
    return from_dict({**data, **parse_overrides(overrides)}, source=f"MLflow run {trial.run_id} at {uri}")


def run_dir_for(cfg: Config) -> Path:
    name = cfg.name or f"{cfg.dataset}-{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(cfg.output_dir).expanduser().resolve() / name
    suffix = 1
    while path.exists():  # never overwrite an earlier run
        path = path.with_name(f"{name}-{suffix}")
        suffix += 1
    return path


def summarize(per_seed: list[dict]) -> dict[str, dict[str, float]]:
    summary = {}
    for key in per_seed[0]["test"]:
        values = [r["test"][key] for r in per_seed]
        mean, std = mean_std(values)
        summary[f"test_{key}"] = {"mean": mean, "std": std}
    return summary


def epoch_line(seed: int, metrics: dict[str, float], epochs: int) -> str:
    """One epoch's progress: loss, validation accuracy and F1, per-modality accuracy, reshaping counts."""
    m = metrics
    accs = " ".join(f"{k[4:]}={v:.3f}" for k, v in m.items() if k.startswith("val_acc_"))
    reshaped = " ".join(f"{k}={int(v)}" for k, v in m.items() if k.startswith("reshaped/"))
    return (f"[seed {seed}] epoch {m['epoch']:3d}/{epochs} loss {m['train_loss']:.4f} "
            f"val acc {m['val_acc']:.4f} f1 {m['val_macro_f1']:.4f} {accs} {reshaped}")


def train_seed(cfg: Config, seed: int, data, run_dir: Path, progress: bool,
               job: ProductionRun | Untracked | None = None) -> dict:
    """Train one seed for `cfg.epochs`, keep its best validation epoch, test that model once
    and save it to `<run_dir>/seed<k>/model.pt`; returns the seed's results. ``job`` (MLflow)
    hears the seed's epochs, test metrics and checkpoint."""
    job = job or Untracked()
    job.seed_started(seed)

    def on_epoch(metrics: dict[str, float]) -> None:
        print(epoch_line(seed, metrics, cfg.epochs), flush=True)
        job.epoch(seed, metrics)

    trainer = Trainer(cfg, seed, data=data, progress=progress)
    start = time.time()
    history = trainer.fit(on_epoch=on_epoch)
    trainer.load_best()
    test = trainer.evaluate("test")  # the only time this run reads test
    seed_dir = run_dir / f"seed{seed}"
    with writing(seed_dir / "model.pt", cfg):  # atomic: a full disk leaves no half checkpoint
        seed_dir.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"model": trainer.best_model_state, "config": cfg.to_dict(), "seed": seed,
                           "class_names": trainer.data.class_names, "best_epoch": trainer.best_epoch,
                           "scaling": getattr(trainer.data, "scaling", {})},
                          seed_dir / "model.pt")
    result = {"seed": seed, "best_epoch": trainer.best_epoch, "val": trainer.best_val, "test": test,
              "seconds": time.time() - start, "history": history}
    if isinstance(job, ProductionRun):  # the MLflow model: the best epoch as its method predicts
        predictor = Predictor(trainer.model, trainer.method, trainer.data.class_names,
                              getattr(trainer.data, "scaling", {}))
        inputs, _ = next(iter(trainer.loader("val")))
        job.seed_finished(seed, result, seed_dir / "model.pt", predictor, signature_example(predictor, inputs))
    else:
        job.seed_finished(seed, result, seed_dir / "model.pt")
    return result


def make_run_dir(cfg: Config) -> Path:
    """Create the run's folder (see :func:`run_dir_for`); ConfigError naming `output_dir` where
    it cannot be created (a read-only mount, a path under a file)."""
    run_dir = run_dir_for(cfg)
    try:
        run_dir.mkdir(parents=True)
    except OSError as err:
        raise ConfigError(f"cannot create the run folder {run_dir} (output_dir {cfg.output_dir!r}): "
                          f"{err.strerror or type(err).__name__}") from None
    return run_dir


class TrainingInterrupted(Exception):
    """Ctrl-C, SIGTERM or SIGHUP during training; the message says what `results.json` keeps."""


class OutputError(RuntimeError):
    """An output of the run (a checkpoint, `results.json`, `config.yaml`) could not be written:
    a full disk, a quota, a read-only folder. The message names the file, `output_dir`, what
    to do and what `results.json` keeps; the file itself is left as it was (atomic writes)."""


@contextlib.contextmanager
def writing(path: Path, cfg: Config, what: str | None = None) -> Iterator[None]:
    """An OSError within the block (writing ``path``) raised as :class:`OutputError` naming the
    file and `output_dir`; the caller adds what `results.json` keeps. With ``what`` (a folder
    the block writes into, such as the data cache) only the write failures of
    :data:`bmlr.fileio.WRITE_FAILURES` are caught: other errors there are the data's, reported as such."""
    try:
        yield
    except OSError as err:
        where = f"{what} {path}" if what else f"{path} (output_dir {cfg.output_dir})"
        line = write_failure_line(err, where)
        if line is None and what is not None:
            raise
        problem = (err.strerror or type(err).__name__).lower()
        raise OutputError(line or f"{problem} writing {where}; fix it and run again") from None


def train(cfg: Config, progress: bool = True, target: Target | None = None,
          config_file: str | None = None, register: str | None = None) -> dict:
    """Train every seed of `cfg`. The run folder is created only once the device, the data and
    the MLflow store (``target``; None: no MLflow) are ready (a bad data root or a store that
    refuses leaves no folder). `results.json` is written at the start and after every seed,
    with `"complete": false` until every seed has finished. ``register``: the Model Registry
    name that the seed with the best validation accuracy is registered under, once all finished."""
    device = resolve_device(cfg.device)
    with writing(cache_root(cfg), cfg, what="the data cache"):  # a full disk while it is built: one line
        data = build_datasets(cfg)  # once: the data do not depend on the training seed
    job = open_run(target, cfg, config_file)
    results: dict[str, Any] = {"seeds": []}
    status = "FAILED"  # what the MLflow run ends as unless training finishes or is interrupted
    try:
        run_dir = make_run_dir(cfg)
        job.folder(run_dir)
        print(f"run: {run_dir}\ndevice: {device}\ndata: {cfg.dataset} {data.info} "
              f"modalities {list(data.modalities)} classes {data.num_classes}", flush=True)
        results = {"config": cfg.to_dict(), "method_args": resolved_method_args(cfg.method, cfg.method_args),
                   "run_dir": str(run_dir), "complete": False, "seeds_planned": list(cfg.seeds), "seeds": []}
        try:
            with writing(run_dir / "config.yaml", cfg):
                cfg.to_yaml(run_dir / "config.yaml")
            with writing(run_dir / "results.json", cfg):
                write_json(run_dir / "results.json", results)
        except OutputError as err:
            raise OutputError(f"{err}: nothing was trained, {run_dir} holds no results") from None
        _train_seeds(cfg, data, run_dir, progress, job, results)
        status = "FINISHED"  # trained: a registry that refuses (TrackingError, exit 2) does not undo that
        if register and isinstance(job, ProductionRun):
            print(job.register(register, results), flush=True)
    except (KeyboardInterrupt, TrainingInterrupted):
        status = "KILLED"
        raise
    finally:
        job.end(results, Path(results["run_dir"]) / "results.json" if "run_dir" in results else None, status)
    print(format_summary(results))
    return results


def _train_seeds(cfg: Config, data, run_dir: Path, progress: bool, job: ProductionRun | Untracked,
                 results: dict[str, Any]) -> None:
    """Every seed, `results.json` rewritten after each; TrainingInterrupted on Ctrl-C, OutputError
    (saying which seeds `results.json` keeps) where an output cannot be written."""
    saved: list[int] = []  # the seeds of the last results.json written whole
    try:
        for seed in cfg.seeds:
            results["seeds"].append(train_seed(cfg, seed, data, run_dir, progress, job))
            results["summary"] = summarize(results["seeds"])
            results["complete"] = len(results["seeds"]) == len(cfg.seeds)
            with writing(run_dir / "results.json", cfg):
                write_json(run_dir / "results.json", results)
            saved = [r["seed"] for r in results["seeds"]]
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"{run_dir / 'results.json'} keeps the finished seeds {saved} of "
                                  f"{list(cfg.seeds)}, marked \"complete\": false") from None
    except OutputError as err:
        raise OutputError(f"{err}: {run_dir / 'results.json'} keeps seeds {saved} of {list(cfg.seeds)}, "
                          f"marked \"complete\": false") from None


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Within the block, SIGTERM (what `timeout`, schedulers and Kubernetes send) and SIGHUP (a
    closed terminal or SSH session) are handled like Ctrl-C: by the SIGINT handler in place
    when one arrives (Ray Tune's graceful stop during a tuner's run, else Python's
    KeyboardInterrupt), so the runs end KILLED rather than being left RUNNING. A SIGHUP that
    is ignored (started under `nohup`) stays ignored. The previous handlers are restored
    after. Off the main thread (where signals cannot be caught) it does nothing. An interrupt
    that lands in a finalizer or a garbage-collector callback, where Python cannot raise it, is
    not printed as a traceback ("Exception ignored in ..."): the stop the first one began goes on."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hook = sys.unraisablehook
    sys.unraisablehook = _quiet_interrupts(hook)
    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)  # no SIGHUP on Windows
        if signum is None or (name == "SIGHUP" and signal.getsignal(signum) == signal.SIG_IGN):
            continue  # under nohup a hang-up stays ignored
        previous[signum] = signal.signal(signum, _sigterm_like_sigint)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        sys.unraisablehook = hook


def _quiet_interrupts(hook):
    def quiet(unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            hook(unraisable)
    return quiet


def _sigterm_like_sigint(signum, frame) -> None:
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # SIGINT ignored or not handled from Python (a background job of a script): still stop
        raise KeyboardInterrupt


def format_summary(results: dict) -> str:
    lines = [f"test results over seeds {[r['seed'] for r in results['seeds']]} (mean ± std):"]
    for key, stats in results["summary"].items():
        lines.append(f"  {key:24s} {stats['mean']:.4f} ± {stats['std']:.4f}")
    lines.append(f"written: {results['run_dir']}/results.json")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bmlr-train", description=__doc__.splitlines()[0])
    what = p.add_mutually_exclusive_group()
    what.add_argument("--config", help="YAML configuration (default: all defaults, the synthetic data set)")
    what.add_argument("--from-run", metavar="RUN_ID", help="train the MLflow run's trial (a study's run: its best "
                      "trial) with the study's production epochs and seeds, e.g. one chosen in the MLflow UI")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one configuration key (repeatable), e.g. --set epochs=5")
    p.add_argument("--no-progress", action="store_true", help="no per-batch progress bar")
    g = p.add_argument_group("MLflow")
    g.add_argument("--tracking-uri", help="MLflow store to log to (and read --from-run from); default: "
                   "$MLFLOW_TRACKING_URI, else the store of the study the configuration came from")
    g.add_argument("--storage", default="tune_runs", help="with --from-run and no other store: the study's --storage "
                   "folder, whose mlflow.db holds the run (never created here)")
    g.add_argument("--experiment", help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else the study's, "
                   "else bmlr-train-<dataset>)")
    g.add_argument("--no-mlflow", action="store_true", help="log nothing to MLflow")
    g.add_argument("--register", metavar="NAME", help="register the seed with the best validation accuracy in "
                   "MLflow's Model Registry as a new version of NAME")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with sigterm_as_ctrl_c():
            if args.from_run:
                cfg = config_from_run(args.from_run, args.overrides, args.tracking_uri, args.storage)
            else:
                cfg = run_config(args.config, args.overrides)
            target = resolve_target(cfg, args.tracking_uri, args.experiment, args.no_mlflow)
            if target is None and args.register:
                raise ConfigError(f"--register {args.register}: needs an MLflow store" + (", not --no-mlflow" if
                                  args.no_mlflow else "; pass --tracking-uri or set MLFLOW_TRACKING_URI"))
            if target is None and args.experiment and not args.no_mlflow:
                raise ConfigError("--experiment: no MLflow store known; pass --tracking-uri or set MLFLOW_TRACKING_URI")
            if target is not None:
                check_target(target)  # before the data are read: a store that refuses fails fast
            train(cfg, progress=not args.no_progress, target=target,
                  config_file=args.config or (args.from_run and f"--from-run {args.from_run}"), register=args.register)
    except (ConfigError, DataError, TrackingError, OutputError) as err:
        stderr_line(f"error: {err}")
        return 2
    except TrainingInterrupted as err:
        stderr_line(f"interrupted: {err}")
        return 130
    except KeyboardInterrupt:
        stderr_line("interrupted before training started; nothing was written")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
