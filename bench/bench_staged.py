"""Staged vs joint search at equal budget (issue: staged search, Section IV-E1 of the paper).

For every study seed, the same `tune.py` command is run twice, once with `--strategy joint`
and once with `--strategy staged`: same `--samples` (the total over both stages), same
`--max-epochs`, same ASHA settings, same seed. Printed per strategy (mean ± std over the study
seeds): the epochs actually trained (ASHA stops trials at different rungs, so budgets are equal
in trials and maximum epochs, and the epochs spent are shown), the winner's validation accuracy,
and, with `--production`, the winner's test accuracy when its exported `best.yaml` is trained
with the production seeds (test is evaluated there once, never during the search).

    python bench/bench_staged.py --dataset synthetic --samples 16 --max-epochs 12 --seeds 0 1 2 --production
    python bench/bench_staged.py --dataset avmnist --data-root ../shared/data --samples 12 --max-epochs 6 \\
        --seeds 0 1 --set model_width=8

Studies already in `--storage` are reused (delete the folder to measure again).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bmlr.engine import mean_std  # noqa: E402  (sample std, as in results.json)
from bmlr.tuning.selection import SCORE, choose_best  # noqa: E402
from bmlr.tuning.store import StudyStore  # noqa: E402

STRATEGIES = ("joint", "staged")


def run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)


def study(args, strategy: str, seed: int) -> Path:
    name = f"{strategy}-n{args.samples}-e{args.max_epochs}-s{seed}"
    folder = Path(args.storage).resolve() / args.dataset / name
    if not (folder / "best.yaml").is_file():
        cmd = [sys.executable, "tune.py", "--dataset", args.dataset, "--strategy", strategy,
               "--samples", str(args.samples), "--max-epochs", str(args.max_epochs), "--seed", str(seed),
               "--concurrent", str(args.concurrent), "--cpus-per-trial", "1", "--name", name,
               "--storage", str(Path(args.storage).resolve()), "--report", "none", "-v", "0"]
        if args.data_root:
            cmd += ["--data-root", str(Path(args.data_root).resolve())]
        for item in args.set:
            cmd += ["--set", item]
        run(cmd)
    return folder


def epochs_and_best(folder: Path) -> tuple[int, float]:
    """Epochs trained by all trials of the study (both stages for staged) and the winner's val acc."""
    store = StudyStore(folder)
    rows = store.read_rows()
    epochs = sum(r.get("epochs") or 0 for r in rows)
    if store.kind() == "staged":  # the stage-2 winner, which a stage-1 trial may beat on validation
        return epochs, float(store.read_info()["best_val_acc"])
    return epochs, float(choose_best(rows)[SCORE])


def production(args, folder: Path) -> float:
    out = folder / "production"
    results = out / "results.json"
    if not results.is_file():
        cmd = [sys.executable, "-m", "bmlr.train", "--config", str(folder / "best.yaml"),
               "--set", f"output_dir={folder}",
               "--set", "name=production", "--set", "threads=1"]
        if args.production_epochs:
            cmd += ["--set", f"epochs={args.production_epochs}"]
        run(cmd)
    return float(json.loads(results.read_text())["summary"]["test_acc"]["mean"])


def fmt(xs: list[float], scale: float, digits: int) -> str:
    """mean ± std of `xs` times `scale`, or - when there are none."""
    if not xs:
        return "-"
    m, sd = mean_std(xs)
    return f"{m * scale:.{digits}f} ± {sd * scale:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-root")
    p.add_argument("--samples", type=int, default=16, help="trials per study (staged: both stages together)")
    p.add_argument("--max-epochs", type=int, default=12)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="study seeds")
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--storage", default=str(ROOT / "tune_runs" / "staged-vs-joint"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="passed on to tune.py (and so into the exported best.yaml)")
    p.add_argument("--production", action="store_true", help="also train each winner's best.yaml (test accuracy)")
    p.add_argument("--production-epochs", type=int, help="override the exported epochs (default: the YAML's)")
    args = p.parse_args(argv)

    rows = {s: {"epochs": [], "val": [], "test": []} for s in STRATEGIES}
    for seed in args.seeds:
        for strategy in STRATEGIES:
            folder = study(args, strategy, seed)
            epochs, best = epochs_and_best(folder)
            rows[strategy]["epochs"].append(epochs)
            rows[strategy]["val"].append(best)
            if args.production:
                rows[strategy]["test"].append(production(args, folder))
            print(f"{strategy} seed {seed}: {epochs} epochs, winner val acc {best:.4f}"
                  + (f", production test acc {rows[strategy]['test'][-1]:.4f}" if args.production else ""),
                  flush=True)
    print(f"\n{args.dataset}: {args.samples} trials of at most {args.max_epochs} epochs per study, "
          f"study seeds {args.seeds}")
    print("| strategy | epochs trained | winner val acc (%) | winner test acc (%) |")
    print("|---|---|---|---|")
    for strategy, r in rows.items():
        print(f"| {strategy} | {fmt(r['epochs'], 1, 0)} | {fmt(r['val'], 100, 1)} | {fmt(r['test'], 100, 1)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
