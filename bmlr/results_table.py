"""Markdown table of finished training runs: `python -m bmlr.results_table RUN_DIR [RUN_DIR ...]`.

Reads each run's `results.json` (written by `bmlr.train`) and prints, per run,
the method, fusion, test multimodal and per-modality accuracy, the imbalance
ratio (mean ± std over seeds) and how many samples were reshaped per modality
in the last training epoch (averaged over seeds).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _pm(stats: dict) -> str:
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def load(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results.json (is {run_dir} a finished bmlr.train run?)")
    return json.loads(path.read_text())


def table(results: list[dict]) -> str:
    modalities = [k[len("test_acc_"):] for k in results[0]["summary"] if k.startswith("test_acc_")]
    head = (["method", "fusion", "seeds", "test acc %"] + [f"{u} acc %" for u in modalities]
            + ["imbalance ratio"] + [f"reshaped {u} (last epoch)" for u in modalities])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        s, cfg = r["summary"], r["config"]
        ratio = s["test_imbalance_ratio"]
        last = [seed["history"][-1] for seed in r["seeds"]]
        reshaped = [f"{sum(h.get(f'reshaped/{u}', 0) for h in last) / len(last):.0f}"
                    if any(f"reshaped/{u}" in h for h in last) else "-" for u in modalities]
        cells = ([cfg["method"], cfg["fusion"], str(len(r["seeds"])), _pm(s["test_acc"])]
                 + [_pm(s[f"test_acc_{u}"]) for u in modalities]
                 + [f"{ratio['mean']:.2f} ± {ratio['std']:.2f}"] + reshaped)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders written by bmlr.train")
    args = parser.parse_args(argv)
    try:
        print(table([load(d) for d in args.runs]))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
