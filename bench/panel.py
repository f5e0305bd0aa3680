"""Tuned against untuned with the defaults only (issue 27's panel): per data set a default study
(16 trials, the data set's shipped search space, no knob set), then its winner (`best.yaml`) and
the untuned configuration (the data set's `configs/` file) each trained with 3 seeds and tested
once.

* `synthetic` - the embedded default (data v3), `bmlr-tune` with no arguments;
* `avmnist-hard` - AV-MNIST as `configs/avmnist-hard.yaml` defines it (10-pixel images, 540
  training clips), `../shared/data`.

Feature data sets the project had never met, written as manifests of feature views of real
data (under `--work`, never in the repository), studied with `search_spaces/manifest.yaml` and
untuned as `configs/manifest.yaml`:
* `pie` - PIE faces, three views of 680 images of 68 people (intensity 484, LBP 256, Gabor 279
  dimensions), `../shared/data/pie/pie_face_10.npz`;
* `digits` - scikit-learn's handwritten digits (1,797 images of 8 x 8), the top and bottom
  halves as two views;
* `cancer` - scikit-learn's breast-cancer table (569 tumours), the 10 mean features as one view
  and their 20 standard errors and worst values as the other.

    python bench/panel.py --work /tmp/panel [--sets pie digits cancer synthetic avmnist-hard] [--samples 16]
    python bench/panel.py --work /tmp/panel --sets digits --build-only    # only /tmp/panel/data/digits

Prints a table (test accuracy, mean ± std over the 3 seeds; tuned - untuned with two standard
errors of the difference, sqrt(s_t^2 / 3 + s_u^2 / 3)) and writes `--work`/panel.json. A data
set whose source is missing is skipped with the reason.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PIE = SHARED / "pie" / "pie_face_10.npz"
FEATURE_SETS = ("pie", "digits", "cancer")
SETS = (*FEATURE_SETS, "synthetic", "avmnist-hard")


# --- the data sets, as manifests ------------------------------------------------------------------------
def write_manifest(root: Path, views: dict[str, np.ndarray], labels: np.ndarray) -> Path:
    """`root`/manifest.csv with one row index per sample into each view's matrix, modalities.yaml
    (kind features, standard scaling: the default), classes.txt, a seeded 20 % test split."""
    root.mkdir(parents=True, exist_ok=True)
    for name, matrix in views.items():
        np.save(root / f"{name}.npy", matrix.astype(np.float32))
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", *views])
        writer.writerows([f"s{i:05d}", f"c{int(y)}", *([i] * len(views))] for i, y in enumerate(labels))
    modalities = "".join(f"{name}: {{kind: features, matrix: {name}.npy}}\n" for name in views)
    (root / "modalities.yaml").write_text(modalities + "split: {test_fraction: 0.2}\n")
    (root / "classes.txt").write_text("".join(f"c{k}\n" for k in sorted(set(int(y) for y in labels))))
    return root


def build(name: str, work: Path) -> Path:
    """The manifest folder of a feature data set."""
    if name == "pie":
        if not PIE.is_file():
            raise FileNotFoundError(f"{PIE} is absent")
        d = np.load(PIE)
        return write_manifest(work / name, {k: d[k] for k in ("intensity", "lbp", "gabor")}, d["label"])
    if name == "digits":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        return write_manifest(work / name, {"top": x[:, :32], "bottom": x[:, 32:]}, y)
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    return write_manifest(work / name, {"mean": x[:, :10], "spread": x[:, 10:]}, y)


def commands(name: str, work: Path) -> tuple[list[str], list[str]]:
    """The study's arguments after `tune.py` (data set, data root, what defines the data) and
    `bmlr.train`'s for the untuned configuration: the data set's own `configs/` file."""
    if name == "synthetic":  # the default study of `bmlr-tune`, as the quickstart runs it
        return [], ["--config", str(ROOT / "configs" / "synthetic.yaml")]
    if name == "avmnist-hard":  # the data set of configs/avmnist-hard.yaml: 10-pixel images, 540 training clips
        if not (SHARED / "mnist").is_dir():
            raise FileNotFoundError(f"{SHARED / 'mnist'} is absent")
        data = ["--set", "image_size=10", "--set", "val_fraction=0.8", "--set", "frames=1"]
        return (["--dataset", "avmnist", "--data-root", str(SHARED), *data],
                ["--config", str(ROOT / "configs" / "avmnist-hard.yaml"), "--set", f"data_root={SHARED}"])
    if name not in FEATURE_SETS:
        raise SystemExit(f"unknown data set {name!r}; expected one of {', '.join(SETS)}")
    data = build(name, work / "data")
    return (["--dataset", "manifest", "--data-root", str(data), "--search-space",
             str(ROOT / "search_spaces" / "manifest.yaml")],
            ["--config", str(ROOT / "configs" / "manifest.yaml"), "--set", f"data_root={data}", "--set", "threads=1"])


# --- the runs -----------------------------------------------------------------------------------------
def run(cmd: list[str], log: Path) -> None:
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    if done.returncode != 0:
        raise SystemExit(f"exit {done.returncode}: {' '.join(cmd)} (log: {log})")


def test_accuracies(run_dir: Path) -> list[float]:
    results = json.loads((run_dir / "results.json").read_text())
    return [float(s["test"]["acc"]) for s in results["seeds"]]


def panel_row(name: str, work: Path, samples: int) -> dict:
    study_args, untuned_args = commands(name, work)
    log, storage, out = work / f"{name}.log", work / "runs", work / "train"
    cache = ["--set", f"cache_dir={work / 'cache'}"]
    run([sys.executable, str(ROOT / "tune.py"), *study_args, "--samples", str(samples), "--storage", str(storage),
         "--name", name, *cache, "--report", "none"], log)
    study = next(storage.glob(f"*/{name}"))
    run([sys.executable, "-m", "bmlr.train", "--config", str(study / "best.yaml"), "--no-mlflow", "--set",
         f"output_dir={out}", "--set", f"name={name}-tuned"], log)
    run([sys.executable, "-m", "bmlr.train", *untuned_args, "--no-mlflow", *cache, "--set", f"output_dir={out}",
         "--set", f"name={name}-untuned"], log)
    tuned, untuned = test_accuracies(out / f"{name}-tuned"), test_accuracies(out / f"{name}-untuned")
    import yaml

    best = yaml.safe_load((study / "best.yaml").read_text())
    grace = study / "grace_period.json"
    return {"data": name, "tuned": tuned, "untuned": untuned,
            "winner": {k: best.get(k) for k in ("alpha", "beta", "lr", "fusion")},
            "grace_period": json.loads(grace.read_text()) if grace.is_file() else None}


def verdict(row: dict) -> str:
    t, u = np.array(row["tuned"]) * 100, np.array(row["untuned"]) * 100
    diff = t.mean() - u.mean()
    band = 2 * math.sqrt(t.var(ddof=1) / len(t) + u.var(ddof=1) / len(u))
    word = "ahead" if diff > band else "behind" if diff < -band else "within the noise"
    return (f"| {row['data']} | {u.mean():.2f} ± {u.std(ddof=1):.2f} | {t.mean():.2f} ± {t.std(ddof=1):.2f} | "
            f"{diff:+.2f} (2 SE {band:.2f}): {word} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="folder for the manifests, the studies and the trainings")
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--build-only", action="store_true", help="write the feature data sets' manifests under "
                   "--work/data and stop (e.g. for `bmlr-tune compare --dataset manifest --data-root ...`)")
    args = p.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.build_only:
        for name in (s for s in args.sets if s in FEATURE_SETS):
            try:
                print(f"{name}: {build(name, work / 'data')}")
            except FileNotFoundError as err:
                print(f"{name}: skipped ({err})")
        return 0
    rows = []
    for name in args.sets:
        try:
            rows.append(panel_row(name, work, args.samples))
        except FileNotFoundError as err:
            print(f"{name}: skipped ({err})")
            continue
        (work / "panel.json").write_text(json.dumps(rows, indent=2))
        print(verdict(rows[-1]), flush=True)
    print("\n| data | untuned (configs/manifest.yaml) | tuned (best.yaml) | tuned - untuned |\n|---|---|---|---|")
    print("\n".join(verdict(r) for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
