"""The study report: one Markdown page and the same page as a self-contained HTML file (images
inlined), written into `<study>/report/` and logged to the study's MLflow run under `report/`.

    python tune.py report --study tune_runs/synthetic/<study> [--baseline-study DIR] [--fast]

Every study writes it at its end (`--report full|fast|none`). It holds, from the study folder
alone (validation only; test is never read):

1. the best trials table;
2. Optuna's hyperparameter importances (fANOVA over the finished trials' best validation
   accuracy; for a staged study, stage 1's);
3. the alpha x beta surface: the grid of a surface study (`surface.py`), else the study's
   scattered trials binned;
4. learning curves (the paper's Figure 6): multimodal and per-modality validation accuracy per
   epoch of the best trial, beside the best trial of `--baseline-study`, or else the *baseline
   counterpart* of the best trial: the same configuration, seed and epochs with
   `method: baseline`, trained here once (cached in `report/baseline_counterpart.json`;
   `--fast` skips it);
5. reshaped training samples per modality per epoch of the best trial (Figure 3a);
6. per true class, the top-3 predicted classes of each modality's own head and of the fused
   head at the best trial's best epoch (Figure 4), from `trials/trial_<id>/val_top3.json`,
   which the trainable writes whenever a trial reaches a new best validation accuracy.
"""
from __future__ import annotations

import base64
import csv
import html
import json
import math
import shutil
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from bmlr.tuning import plots

REPORT_DIR = "report"
NUMERIC = ("epochs", "best_epoch", "best_val_acc", "train_loss")


class ReportError(RuntimeError):
    """The folder is not a finished study."""


# --- reading a study folder ---------------------------------------------------------------------
def _num(value: Any) -> Any:
    if isinstance(value, str):
        if value == "":
            return None
        try:
            out = float(value)
            return int(out) if out.is_integer() and "." not in value and "e" not in value.lower() else out
        except ValueError:
            return value
    return value


def read_rows(path: Path) -> list[dict[str, Any]]:
    """trials.csv with numbers as numbers (parameter values too)."""
    with Path(path).open() as f:
        rows = list(csv.DictReader(f))
    return [{k: (_num(v) if k != "trial_id" and k != "run_id" else v) for k, v in r.items()} for r in rows]


def _finite(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


class Study:
    """What the report needs from a study folder (a plain, surface or staged study)."""

    def __init__(self, folder: str | Path):
        self.dir = Path(folder).expanduser().resolve()
        if not (self.dir / "study.json").is_file() or not (self.dir / "trials.csv").is_file():
            raise ReportError(f"{self.dir}: not a finished bmlr-tune study (study.json and trials.csv expected)")
        self.info = json.loads((self.dir / "study.json").read_text())
        self.settings = self.info.get("settings") or {}
        self.kind = self.info.get("kind") or self.settings.get("kind") or "search"
        self.rows = read_rows(self.dir / "trials.csv")
        self.stage_dirs = [self.dir / p for p in self.info.get("stages", [])]
        self.name = self.settings.get("name") or self.dir.name
        self.dataset = self.settings.get("dataset", "?")
        self.method = self.settings.get("method", "?")
        data = self.info.get("data") or {}
        if not data:
            for stage in self.stage_dirs:
                try:
                    data = json.loads((stage / "study.json").read_text()).get("data") or {}
                except (OSError, ValueError):
                    continue
                if data:
                    break
        self.data = data

    @property
    def ok_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("status") != "failed" and _finite(r.get("best_val_acc")) is not None]

    def best_row(self) -> dict[str, Any] | None:
        wanted = self.info.get("best_trial_id")
        if wanted:
            for r in self.rows:
                if str(r["trial_id"]) == str(wanted):
                    return r
        if self.kind == "surface":
            from bmlr.tuning.surface import best_cell_row

            return best_cell_row(self.rows)
        from bmlr.tuning.study import choose_best

        ok = [dict(r, best_val_acc=float(r["best_val_acc"])) for r in self.ok_rows]
        chosen = choose_best(ok)
        return next(r for r in self.rows if r["trial_id"] == chosen["trial_id"]) if chosen else None

    def _folders(self) -> list[Path]:
        return [self.dir] + self.stage_dirs

    def history(self, trial_id: str) -> list[dict[str, Any]]:
        """The trial's per-epoch results (Ray's result.json; a redone epoch keeps its last report)."""
        for folder in self._folders():
            path = folder / "ray" / f"trial_{trial_id}" / "result.json"
            if path.is_file():
                by_epoch: dict[int, dict[str, Any]] = {}
                for line in path.read_text().splitlines():
                    if line.strip():
                        try:
                            result = json.loads(line)
                        except ValueError:
                            continue
                        if "epoch" in result:
                            by_epoch[int(result["epoch"])] = result
                return [by_epoch[e] for e in sorted(by_epoch)]
        return []

    def top3(self, trial_id: str) -> dict[str, Any] | None:
        for folder in self._folders():
            path = folder / "trials" / f"trial_{trial_id}" / "val_top3.json"
            if path.is_file():
                return json.loads(path.read_text())
        return None

    def trial_epochs(self) -> int | None:
        return self.info.get("trial_epochs") or self.settings.get("max_epochs")

    def search_space(self, folder: Path | None = None):
        from bmlr.tuning.search_space import load_search_space

        path = (folder or self.dir) / "search_space.yaml"
        try:
            return load_search_space(path) if path.is_file() else None
        except Exception:
            return None

    def modalities(self, history: list[dict[str, Any]]) -> list[str]:
        listed = self.data.get("modalities")
        if listed:
            return list(listed)
        keys = [k[len("val_acc_"):] for h in history for k in h if k.startswith("val_acc_")]
        return list(dict.fromkeys(keys))


# --- importances -----------------------------------------------------------------------------------
def param_importances(rows: list[dict[str, Any]], space) -> tuple[dict[str, float], int]:
    """fANOVA importances (Optuna, seeded) of the searched keys for the trials' best validation
    accuracy; keys that did not vary are left out. Returns ({} , n) when it cannot be computed."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.importance import FanovaImportanceEvaluator

    rows = [r for r in rows if r.get("status") != "failed" and _finite(r.get("best_val_acc")) is not None]
    keys = [k for k in (space.params if space is not None else
                        [c.removeprefix("param.") for c in (rows[0] if rows else {}) if c.startswith("param.")])
            if k != "seeds"]
    dists = {}
    for key in keys:
        values = [r.get(f"param.{key}") for r in rows if r.get(f"param.{key}") is not None]
        if len(set(map(str, values))) < 2:
            continue
        param = space.params.get(key) if space is not None else None
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            if param is not None and param.kind == "int":
                dists[key] = IntDistribution(int(min(values)), int(max(values)))
            else:
                log = param is not None and param.kind == "loguniform" and min(values) > 0
                dists[key] = FloatDistribution(float(min(values)), float(max(values)), log=log)
        else:
            choices = list(param.choices) if param is not None and param.kind == "choice" else sorted(set(map(str, values)))
            dists[key] = CategoricalDistribution(choices)
    usable = [r for r in rows if all(r.get(f"param.{k}") is not None for k in dists)]
    if not dists or len(usable) < 3 or len({float(r["best_val_acc"]) for r in usable}) < 2:
        return {}, len(usable)  # nothing varied, too few trials, or every trial scored the same
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for r in usable:
        params = {}
        for k, d in dists.items():
            v = r[f"param.{k}"]
            if isinstance(d, CategoricalDistribution):
                v = next((c for c in d.choices if str(c) == str(v)), v)
            elif isinstance(d, IntDistribution):
                v = int(v)
            else:
                v = float(v)
            params[k] = v
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(r["best_val_acc"])))
    result = optuna.importance.get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    return {k: float(v) for k, v in result.items()}, len(usable)


# --- the baseline counterpart (Figure 6) ------------------------------------------------------------
def _trial_seed(row: dict[str, Any], study: Study) -> int:
    value = row.get("param.seeds")
    if isinstance(value, str):
        value = yaml.safe_load(value)
    if isinstance(value, (list, tuple)) and value:
        return int(value[0])
    return int(study.settings.get("seed", 0) or 0)


def baseline_counterpart(study: Study, best: dict[str, Any], out_dir: Path,
                         log: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """Train the best trial's configuration with `method: baseline` (same seed and epochs) once,
    in this process; the history is cached in `out_dir/baseline_counterpart.json`."""
    import torch

    from bmlr.config import from_dict, load_config
    from bmlr.engine import Trainer

    best_yaml = study.dir / "best.yaml"
    if not best_yaml.is_file():
        return None
    cfg_dict = load_config(best_yaml).to_dict()
    epochs = int(best.get("epochs") or 0) or study.trial_epochs() or cfg_dict["epochs"]
    epochs = max(int(epochs), int(study.trial_epochs() or 0))
    seed = _trial_seed(best, study)
    cfg_dict.update(method="baseline", epochs=int(epochs), seeds=[seed], name=None)
    cfg = from_dict(cfg_dict, source="baseline counterpart")
    cache = out_dir / "baseline_counterpart.json"
    wanted = cfg.to_dict()
    if cache.is_file():
        try:
            cached = json.loads(cache.read_text())
            if cached.get("config") == json.loads(json.dumps(wanted)):
                return cached["history"], cached["config"]
        except (OSError, ValueError, KeyError):
            pass
    log(f"report: training the baseline counterpart of trial {best['trial_id']} for the learning curves "
        f"(method baseline, {epochs} epochs, seed {seed}; --report fast or --fast skips it)")
    threads_before = torch.get_num_threads()
    start = time.time()
    try:
        if not cfg.threads:
            torch.set_num_threads(max(1, min(4, threads_before)))
        trainer = Trainer(cfg, seed=seed)
        history = []
        while trainer.epoch < cfg.epochs:
            metrics = trainer.step_epoch()
            history.append({k: (float(v) if isinstance(v, (int, float)) and math.isfinite(float(v)) else None)
                            for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    finally:
        torch.set_num_threads(threads_before)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"config": wanted, "history": history, "seconds": time.time() - start}, default=str))
    return history, wanted


# --- page building ---------------------------------------------------------------------------------
class Page:
    """A list of blocks rendered as Markdown and as self-contained HTML."""

    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, head: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", head, rows))

    def img(self, path: Path, alt: str) -> None:
        self.blocks.append(("img", Path(path), alt))

    def images(self) -> list[Path]:
        return [b[1] for b in self.blocks if b[0] == "img"]

    def markdown(self, base: Path) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "table":
                out.append("| " + " | ".join(b[1]) + " |")
                out.append("|" + "---|" * len(b[1]))
                out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in b[2]]
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1].relative_to(base).as_posix()})")
            out.append("")
        return "\n".join(out)

    def html(self, title: str) -> str:
        def inline(text: str) -> str:
            text = html.escape(text)
            parts = text.split("`")
            text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
            parts = text.split("**")
            return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))

        out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
               "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #bbb;"
               "padding:3px 8px;text-align:right}th{background:#eee}img{max-width:100%;display:block;"
               "margin:1em 0;border:1px solid #ddd}code{background:#f3f3f3;padding:0 3px}</style></head><body>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{inline(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{inline(b[1])}</p>")
            elif b[0] == "table":
                out.append("<table><tr>" + "".join(f"<th>{inline(str(h))}</th>" for h in b[1]) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{inline(str(c))}</td>" for c in row) + "</tr>" for row in b[2]]
                out.append("</table>")
            elif b[0] == "img":
                data = base64.b64encode(b[1].read_bytes()).decode()
                out.append(f"<img alt='{html.escape(b[2])}' title='{html.escape(b[2])}' "
                           f"src='data:image/png;base64,{data}'>")
        out.append("</body></html>")
        return "\n".join(out)


def _pct(value: Any, digits: int = 1) -> str:
    v = _finite(value)
    return "-" if v is None else f"{100 * v:.{digits}f}"


def _val(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def best_trials_table(rows: list[dict[str, Any]], modalities: list[str], top: int) -> tuple[list[str], list[list]]:
    params = []
    for r in rows:
        params.extend(k for k in r if k.startswith("param.") and k not in params and k != "param.seeds")
    extra = ["stage"] if any("stage" in r for r in rows) else []
    head = (["#", "trial", *extra, "status", "epochs", "best epoch", "val acc %", "macro-F1 %"]
            + [f"{u} acc %" for u in modalities] + ["imbalance"] + [p.removeprefix("param.") for p in params])
    ok = sorted([r for r in rows if _finite(r.get("best_val_acc")) is not None],
                key=lambda r: (-float(r["best_val_acc"]), r.get("best_epoch") or 0, str(r["trial_id"])))
    failed = [r for r in rows if _finite(r.get("best_val_acc")) is None]
    body = []
    for i, r in enumerate((ok + failed)[:top], 1):
        body.append([i, r["trial_id"], *[r.get("stage", "") for _ in extra], r.get("status"), _val(r.get("epochs")),
                     _val(r.get("best_epoch")), _pct(r.get("best_val_acc")), _pct(r.get("val_macro_f1"))]
                    + [_pct(r.get(f"val_acc_{u}")) for u in modalities]
                    + [_val(_finite(r.get("val_imbalance_ratio")))] + [_val(r.get(p)) for p in params])
    return head, body


def top3_table(data: dict[str, Any], heads: list[str]) -> tuple[list[str], list[list]]:
    names = data["class_names"]
    support = data["support"]
    head = ["true class", "val samples"] + [f"{h}: top-3 classes (% of the class)" for h in heads]
    body = []
    for i, name in enumerate(names):
        row = [name, support[i]]
        for h in heads:
            counts = np.asarray(data["top_k"][h][i], dtype=float)
            order = np.argsort(-counts, kind="stable")[:3]
            cells = []
            for j in order:
                if counts[j] <= 0:
                    continue
                label = f"{names[j]} {100 * counts[j] / max(support[i], 1):.0f}%"
                cells.append(f"**{label}**" if j == i else label)
            row.append(", ".join(cells) or "-")
        body.append(row)
    return head, body


def _copy_into(path: Path, out_dir: Path) -> Path:
    target = out_dir / path.name
    if path.resolve() != target.resolve():
        shutil.copyfile(path, target)
    return target


def write_report(study_dir: str | Path, baseline_study: str | Path | None = None, train_baseline: bool = True,
                 log: Callable[[str], None] = print, mlflow: bool = True, top: int = 10) -> Path:
    """Write `<study>/report/report.md` and `report.html` (and their PNGs); returns the .md path."""
    from bmlr.tuning import surface

    study = Study(study_dir)
    out = study.dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    best = study.best_row()
    if best is None:
        raise ReportError(f"{study.dir}: no trial finished successfully; nothing to report")
    history = study.history(str(best["trial_id"]))
    modalities = study.modalities(history)
    page = Page()
    kind_text = {"surface": "\u03b1 \u00d7 \u03b2 surface (grid, no early stopping)",
                 "staged": "staged search (stage 1: \u03b2 with lr and fusion at a fixed \u03b1; stage 2: \u03b1)",
                 }.get(study.kind, "joint search (Optuna TPE + ASHA)")
    page.h(1, f"Study report: {study.name}")
    counts: dict[str, int] = {}
    for r in study.rows:
        counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
    total_epochs = sum(int(r.get("epochs") or 0) for r in study.rows)
    sizes = study.data.get("sizes") or {}
    page.p(f"Data set **{study.dataset}**"
           + (f" ({sizes.get('train', '?')} train / {sizes.get('val', '?')} validation samples)" if sizes else "")
           + f", method **{study.method}**, {kind_text}. {len(study.rows)} trials ("
           + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f"), {total_epochs} epochs trained in all"
           + (f", at most {study.trial_epochs()} per trial" if study.trial_epochs() else "") + ".")
    page.p(f"Best trial **{best['trial_id']}**: validation accuracy **{_pct(best.get('best_val_acc'))}%** at epoch "
           f"{best.get('best_epoch')} of {best.get('epochs')}. Its production configuration is "
           f"`{study.dir / 'best.yaml'}` (`python -m bmlr.train --config {study.dir / 'best.yaml'}`). Everything "
           f"here is measured on the validation split; the test split is never read during tuning.")
    if study.info.get("tracking_uri"):
        page.p(f"MLflow: `{study.info['tracking_uri']}`, parent run `{study.info.get('parent_run_id')}` "
               f"(this report is its artifact `report/report.html`).")
    if study.kind == "staged":
        st = study.info.get("staged") or {}
        page.p(f"Stage 1 searched {', '.join(st.get('stage1_searched', []))} at \u03b1 = {st.get('stage1_alpha')} "
               f"({st.get('stage1_samples')} trials); stage 2 searched \u03b1 with the stage-1 winner fixed "
               f"({st.get('stage2_samples')} trials, the stage-1 winner counted as a stage-2 candidate). "
               f"The export is the stage-2 winner: trial {study.info.get('best_trial_id')} "
               f"(stage {best.get('stage')}).")

    # 1. best trials
    page.h(2, "Best trials (validation)")
    head, body = best_trials_table(study.rows, modalities, top)
    page.table(head, body)
    page.p("`val acc` is a trial's best validation accuracy over its epochs; the other metrics are taken at that "
           "epoch. `imbalance` is the first modality's accuracy over the second's (the paper's A/V ratio).")

    # 2. importances
    page.h(2, "Hyperparameter importances")
    imp_rows, imp_space, imp_note = study.rows, study.search_space(), ""
    if study.kind == "staged" and study.stage_dirs:
        imp_rows = [r for r in study.rows if str(r.get("stage")) == "1"]
        imp_space = study.search_space(study.stage_dirs[0])
        imp_note = " (stage 1; stage 2 varied \u03b1 only)"
    try:
        imp, n_used = param_importances(imp_rows, imp_space)
    except Exception as err:  # importances are a convenience; say why they are missing
        imp, n_used = {}, 0
        log(f"report: importances failed ({type(err).__name__}: {err})")
    if imp:
        path = plots.importances(imp, out / "importances.png", f"{study.dataset}: hyperparameter importances{imp_note}",
                                 f"fANOVA (Optuna) over {n_used} finished trials' best validation accuracy")
        page.img(path, "hyperparameter importances")
        page.table(["hyperparameter", "importance %"], [[k, f"{100 * v:.1f}"] for k, v in imp.items()])
        page.p("Importance: the share of the variance of validation accuracy across trials that each "
               "hyperparameter explains (Optuna's fANOVA evaluator, seed 0). Few trials make it noisy.")
    else:
        page.p(f"Not computed: it needs at least 3 finished trials, a hyperparameter that varied and "
               f"scores that differ ({n_used} usable trials).")

    # 3. surface
    page.h(2, "\u03b1 \u00d7 \u03b2 surface (the paper's Figure 5)")
    if (study.dir / surface.SURFACE_CSV).is_file():
        cell_rows = surface.read_csv(study.dir / surface.SURFACE_CSV)
        for name in surface.IMAGES:
            if (study.dir / name).is_file():
                page.img(_copy_into(study.dir / name, out), name)
        alphas, betas, values, _ = surface.matrix(cell_rows)
        page.table(["\u03b1 \\ \u03b2"] + [plots.fmt_value(b) for b in betas],
                   [[plots.fmt_value(a)] + [f"{values[i, j]:.1f}" if np.isfinite(values[i, j]) else "-"
                                            for j in range(len(betas))] for i, a in enumerate(alphas)])
        page.p(f"Validation accuracy (%) of every cell (mean over its seeds; `{surface.SURFACE_CSV}` has the "
               f"spread and the trial ids). Read it as the paper does: along \u03b2 accuracy should rise then fall; "
               f"across \u03b1 (the layers) it should change less.")
    else:
        try:
            paths = surface.surface_from_study(study.dir, out_dir=out, log=log, mlflow=False)
            for p in paths[1:]:
                page.img(p, p.name)
            page.p("The study's own trials, binned by \u03b1 (log scale) and \u03b2 over the search ranges: a cell is "
                   "the best trial in its bin (its other hyperparameters differ from its neighbours'); the dots "
                   "are every trial. `tune.py surface` trains a proper grid with everything else fixed.")
        except surface.SurfaceError as err:
            page.p(f"Not drawn: {err}.")

    # 4. learning curves
    page.h(2, "Learning curves without and with BMLR (the paper's Figure 6)")
    panels, note = [], ""
    if baseline_study:
        other = Study(baseline_study)
        other_best = other.best_row()
        if other_best is not None:
            panels.append({"title": f"best trial of {other.name} (method {other.method}): trial {other_best['trial_id']}",
                           "history": other.history(str(other_best["trial_id"])),
                           "best_epoch": other_best.get("best_epoch")})
            note = f"Left: the best trial of the baseline study `{other.dir}`."
    elif study.method in ("baseline",):
        note = "The study's method is the baseline itself; pass `--baseline-study` of a BMLR study to compare."
    elif train_baseline:
        counterpart = baseline_counterpart(study, best, out, log)
        if counterpart is not None:
            hist, cfg = counterpart
            best_epoch = max(hist, key=lambda h: (h.get("val_acc") or 0, -h["epoch"]))["epoch"] if hist else None
            panels.append({"title": f"baseline counterpart (method baseline, seed {cfg['seeds'][0]})",
                           "history": hist, "best_epoch": best_epoch})
            note = ("Left: the best trial's configuration trained again with `method: baseline` (multimodal "
                    "cross-entropy only), same seed and epochs (cached in `report/baseline_counterpart.json`).")
    else:
        note = "No baseline shown (`--fast`); pass `--baseline-study DIR` or drop `--fast` to train the counterpart."
    panels.append({"title": f"best trial {best['trial_id']} (method {study.method})", "history": history,
                   "best_epoch": best.get("best_epoch")})
    if history:
        path = plots.learning_curves(panels, modalities, out / "learning_curves.png",
                                     f"{study.dataset}: validation accuracy per epoch, multimodal and per modality")
        page.img(path, "learning curves")
        page.p(note + " Each modality's accuracy is that of its own head (W^u z^u + b/|M|): how well the encoder "
               "learned on its own. BMLR should lift the weaker modality and narrow the gap.")
    else:
        page.p("Not drawn: the best trial's per-epoch results (ray/trial_<id>/result.json) are missing.")

    # 5. reshaped counts
    page.h(2, "Reshaped training samples per epoch (the paper's Figure 3a)")
    if any(k.startswith("reshaped/") for h in history for k in h):
        path = plots.reshaped_counts(history, modalities, sizes.get("train"), out / "reshaped_counts.png",
                                     f"{study.dataset}: training samples whose label was reshaped, best trial "
                                     f"{best['trial_id']}")
        page.img(path, "reshaped samples per epoch")
        page.table(["epoch"] + [f"reshaped {u}" for u in modalities] + [f"wrong top {u}" for u in modalities],
                   [[h["epoch"]] + [_val(_int(h.get(f"reshaped/{u}"))) for u in modalities]
                    + [_val(_int(h.get(f"wrong_top/{u}"))) for u in modalities] for h in history])
        page.p("Only the more confident modality of a sample is reshaped, and only while it is less than 1/\u03b2 "
               "times as confident as the other. `wrong top`: reshaped targets whose largest entry is not the "
               "label (possible for \u03b2 < 0.5).")
    else:
        page.p(f"Method {study.method} reshapes no labels (no `reshaped/<modality>` counts logged).")

    # 6. top-3 per class
    page.h(2, "Top-3 predicted classes per true class (the paper's Figure 4)")
    top3 = study.top3(str(best["trial_id"]))
    if top3:
        heads = [h for h in modalities if h in top3["top_k"]] + ["multimodal"]
        path = plots.top3_matrices(top3, heads, out / "top3_per_class.png",
                                   f"{study.dataset}: how often each class is in the top-3 predictions, best trial "
                                   f"{best['trial_id']} (validation, epoch {top3.get('epoch')})")
        page.img(path, "top-3 predicted classes per true class")
        head, body = top3_table(top3, heads)
        page.table(head, body)
        page.p("For each true class (rows) the three classes most often among a sample's top-3 predictions of each "
               "head, as a share of that class's validation samples (the true class in bold). Classes that share "
               "the top-3 of one modality are the relations its reshaped labels carry.")
    else:
        page.p("Not available: this trial has no `trials/trial_<id>/val_top3.json` (studies run before it was "
               "recorded).")

    md_path = out / "report.md"
    md_path.write_text(page.markdown(out))
    (out / "report.html").write_text(page.html(f"Study report: {study.name}"))
    log(f"report: {md_path} (and report.html, {len(page.images())} figures)")
    if mlflow:
        _log_report(study, out, log)
    return md_path


def _int(value: Any) -> int | None:
    v = _finite(value)
    return None if v is None else int(round(v))


def _log_report(study: Study, out: Path, log: Callable[[str], None]) -> None:
    from bmlr.tuning import tracking

    uri, run_id = study.info.get("tracking_uri"), study.info.get("parent_run_id")
    if not uri or not run_id:
        return
    try:
        client = tracking.client_for(uri)
        for path in sorted(out.iterdir()):
            if path.suffix in (".md", ".html", ".png"):
                client.log_artifact(run_id, str(path), REPORT_DIR)
    except Exception as err:
        log(f"note: could not log the report to MLflow run {run_id} at {uri} ({type(err).__name__}: {err})")


def write_report_safely(study_dir: str | Path, log: Callable[[str], None] = print, **kwargs) -> Path | None:
    """The end-of-study report: a failure is reported, never raised (the study itself succeeded)."""
    try:
        return write_report(study_dir, log=log, **kwargs)
    except Exception as err:
        log(f"warning: the study report could not be written ({type(err).__name__}: {err}); retry with "
            f"`tune.py report --study {study_dir}`\n" + "".join(traceback.format_exc(limit=3)))
        return None
