"""Modality imbalance on the synthetic data set, measured: where each method lands, and whether
joint training under-optimizes the slow modality (the test of OGM-GE's Fig. 1 and the BMLR
paper's motivation).

For each training seed (the data set itself is fixed: `--data-seed`):

* **alone**: each encoder trained on its own modality (the same ResNet, its own linear head,
  plain cross-entropy, the same optimizer, lr and epochs: `Trainer` on the data set with one
  modality kept);
* **methods**: each of `--methods` trained jointly, untuned (the search space's defaults, the
  same Adam optimizer for every method unless `--protocol authors`), or tuned (`--tuned
  METHOD=best.yaml`: that file's configuration with this seed and `--epochs`).

Reported on the test split (720 clips; validation only picks the epoch):

* `fused`: the method's fused accuracy at its best validation epoch (the production protocol);
* `audio`, `visual`: each modality's own head at that epoch (the concat split of the fused layer
  for the baseline, as the paper's Table III reads it);
* `probe_audio`, `probe_visual`: a linear probe (scikit-learn logistic regression on the frozen
  encoder's features of the training split) after the last epoch, for the joint model and for the
  encoder trained alone: the same encoder, the same epochs, two ways of training it;
* `gap_visual` = probe accuracy of the visual encoder alone - in the joint model (positive:
  joint training under-optimizes it);
* `oracle`: the fused accuracy the two encoders trained alone reach together: the product of
  their test posteriors (at each one's best validation epoch, calibrated by a temperature fitted
  on validation; the modalities are independent given the class by construction, so this is
  the Bayes rule for combining them), at the same epochs;
* `ceiling` (row `ceiling`, first seed only, `--ceiling-epochs`): the same with each encoder
  trained alone for longer, a measured lower bound of what the data allow.

    python bench/bench_imbalance.py --seeds 0 1 2 --epochs 20 --out bench/results/imbalance
    python bench/bench_imbalance.py --seeds 0 --epochs 20 --set audio_swap=0.1 --methods baseline

Rows go to `<out>/rows.jsonl` as they finish (a rerun skips what is there) and the table to
`<out>/table.md` (mean +- sd over seeds).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bmlr.config import from_dict, load_config  # noqa: E402
from bmlr.data import build_datasets  # noqa: E402
from bmlr.data.synthetic import LATEST, ensure_synthetic  # noqa: E402
from bmlr.engine import Trainer  # noqa: E402
from bmlr.tuning.compare.spaces import untuned_config  # noqa: E402
from bmlr.tuning.recipes import Arm  # noqa: E402
from bmlr.tuning.search_space import load_search_space  # noqa: E402
from synthetic_ceiling import calibrated_log_posteriors  # noqa: E402  (bench/)

METHODS = ("baseline", "uniform_baseline", "only_tpo", "bmlr", "ogm_ge", "dgl")
KEYS = ("fused", "audio", "visual", "probe_audio", "probe_visual", "gap_visual", "oracle")
TABLE_KEYS = KEYS + ("ceiling",)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--version", default=LATEST, help="generator version (bmlr.data.synthetic.VERSIONS)")
    p.add_argument("--set", dest="generator", action="append", default=[], metavar="KEY=VALUE",
                   help="a generator argument (audio_swap=0.1, contrast=0.05,0.25, visual_noise=0.15)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--ceiling-epochs", type=int, default=0,
                   help="also train each encoder alone this long (first seed) for the fused ceiling; 0: no")
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--tuned", action="append", default=[], metavar="METHOD=YAML",
                   help="also train this exported configuration (row `METHOD tuned`) with each seed")
    p.add_argument("--protocol", choices=("shared", "authors"), default="shared",
                   help="shared: every method with the space's optimizer (Adam); authors: bmlr.methods.protocols")
    p.add_argument("--cache-dir", default=None, help="where the data set is generated (default: the bmlr cache)")
    p.add_argument("--out", default="bench/results/imbalance")
    return p.parse_args(argv)


def generator_kwargs(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = tuple(float(v) for v in value.split(",")) if "," in value else float(value)
    return out


def base_overrides(args, data_root: Path) -> dict[str, Any]:
    return {"data_root": str(data_root), "epochs": args.epochs, "threads": 1, "cache_dir": args.cache_dir,
            "data_version": args.version}


def method_config(args, method: str, data_root: Path, seed: int):
    space = load_search_space(ROOT / "search_spaces" / "synthetic.yaml")
    arm = Arm(method, method, protocol=args.protocol == "authors")
    cfg = untuned_config(space, arm, "synthetic", str(data_root), base_overrides(args, data_root))
    return cfg.replace(seeds=[seed])


def tuned_config(args, path: str, data_root: Path, seed: int):
    cfg = load_config(path)
    return cfg.replace(**base_overrides(args, data_root), seeds=[seed], name=None, source=None)


@dataclasses.dataclass
class Trained:
    trainer: Trainer  # its model holds the last epoch's weights (what the probes read)
    best: dict[str, float]  # test metrics at the best validation epoch
    logits: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (fused logits, labels) at that epoch


def train(cfg, seed: int, data) -> Trained:
    trainer = Trainer(cfg, seed, data=data)
    trainer.fit()
    final_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.load_best()
    best = trainer.evaluate("test")
    logits = {}
    for split in ("val", "test"):
        fused, _, labels = trainer.predict(split)
        logits[split] = (fused.numpy(), labels.numpy())
    trainer.model.load_state_dict(final_state)
    return Trained(trainer, best, logits)


def features(trainer: Trainer, split: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each encoder's output on a whole split (evaluation mode, no augmentation)."""
    import torch

    trainer.model.eval()
    feats: dict[str, list] = {}
    labels = []
    with torch.no_grad():
        for inputs, y in trainer.loader(split):
            for u, f in trainer.model.encode(trainer.to_device(inputs, y)[0]).items():
                feats.setdefault(u, []).append(f.float().cpu().numpy())
            labels.append(y.numpy())
    return {u: np.concatenate(f) for u, f in feats.items()}, np.concatenate(labels)


def probes(trained: Trained) -> dict[str, float]:
    """Test accuracy of a logistic-regression probe on each encoder's frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, train_y = features(trained.trainer, "train")
    test_x, test_y = features(trained.trainer, "test")
    out = {}
    for u in train_x:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
        model.fit(train_x[u], train_y)
        out[f"probe_{u}"] = float(model.score(test_x[u], test_y))
    return out


def posteriors(trained: Trained) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated log posteriors of a single-modality model on test, at its best validation
    epoch: the logits divided by the temperature that minimises the validation NLL."""
    val, val_y = trained.logits["val"]
    test, test_y = trained.logits["test"]
    return calibrated_log_posteriors(val, val_y, test, 0.05, 20.0), test_y


def row_key(row: dict[str, Any]) -> tuple:
    return row["row"], row["seed"]


def train_alone(cfg, seed: int, data, name: str) -> dict[str, Any]:
    """Each encoder trained on its own modality; their accuracies, probes and Bayes combination."""
    alone = {u: train(cfg, seed, dataclasses.replace(data, modalities={u: data.modalities[u]}))
             for u in data.modalities}
    logp = {u: posteriors(t) for u, t in alone.items()}
    labels = next(iter(logp.values()))[1]
    combined = float(np.mean(sum(lp for lp, _ in logp.values()).argmax(1) == labels))
    return {"row": name, "seed": seed, "oracle" if name == "alone" else "ceiling": combined,
            "epochs": cfg.epochs, **{u: alone[u].best["acc"] for u in alone},
            **{k: v for t in alone.values() for k, v in probes(t).items()}}


def run_seed(args, data_root: Path, seed: int, done: set, out: Path) -> None:
    base = method_config(args, "baseline", data_root, seed)
    data = build_datasets(base)
    if ("alone", seed) not in done:
        write_row(out, train_alone(base, seed, data, "alone"))
    if args.ceiling_epochs and seed == args.seeds[0] and ("ceiling", seed) not in done:
        write_row(out, train_alone(base.replace(epochs=args.ceiling_epochs), seed, data, "ceiling"))
    rows = [(m, method_config(args, m, data_root, seed)) for m in args.methods]
    rows += [(f"{item.split('=')[0]} tuned", tuned_config(args, item.split("=", 1)[1], data_root, seed))
             for item in args.tuned]
    for name, cfg in rows:
        if (name, seed) in done:
            continue
        start = time.time()
        trained = train(cfg, seed, data)
        row = {"row": name, "seed": seed, "fused": trained.best["acc"], "audio": trained.best.get("acc_audio"),
               "visual": trained.best.get("acc_visual"), **probes(trained), "seconds": round(time.time() - start, 1)}
        write_row(out, row)


def write_row(out: Path, row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)
    with open(out / "rows.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def read_rows(out: Path) -> list[dict[str, Any]]:
    path = out / "rows.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def table(rows: list[dict[str, Any]]) -> str:
    """Mean +- sd over seeds (percent) per row; gap_visual against the same seed's alone encoder."""
    alone = {r["seed"]: r for r in rows if r["row"] == "alone"}
    for r in rows:
        if r["row"] != "alone" and r["seed"] in alone and r.get("probe_visual") is not None:
            r["gap_visual"] = alone[r["seed"]]["probe_visual"] - r["probe_visual"]
    names = list(dict.fromkeys(r["row"] for r in rows))
    lines = ["| row | seeds | " + " | ".join(TABLE_KEYS) + " |", "|---" * (len(TABLE_KEYS) + 2) + "|"]
    for name in names:
        group = [r for r in rows if r["row"] == name]
        cells = []
        for key in TABLE_KEYS:
            values = [100 * r[key] for r in group if r.get(key) is not None]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} +- {sd:.1f}" if values else "")
        lines.append(f"| {name} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache_dir) if args.cache_dir else None
    from bmlr.data.cache import cache_root

    root = ensure_synthetic(cache_root(from_dict({"cache_dir": args.cache_dir})) if cache is None else cache,
                            seed=args.data_seed, version=args.version, **generator_kwargs(args.generator))
    (out / "settings.json").write_text(json.dumps({**vars(args), "data_root": str(root)}, indent=2))
    done = {row_key(r) for r in read_rows(out)}
    for seed in args.seeds:
        run_seed(args, root, seed, done, out)
    text = table(read_rows(out))
    (out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
