"""The paper's experiments as recipes: one command per table, on any supported data set.

    python tune.py recipe table1 --dataset avmnist --data-root ../shared/data --no-tune
    python tune.py recipe table2 --dataset cremad --data-root /data/CREMA-D --samples 32
    python tune.py recipe --list

A recipe is a list of rows (`Arm`: a label, a method and the Config keys the row fixes,
e.g. the fusion of Table II) run by `bmlr.tuning.compare`: with `--samples N` every row is
tuned with the same budget (one study per row) and its best configuration trained with
all production seeds; with `--no-tune` every row trains the search space's untuned
configuration (its fixed part and each searched key's `default`) with all seeds.

The paper's Tables II-V call their reference row "Baseline", but its numbers (70.88% on
CREMA-D, 68.00% on Kinetics-Sounds, 70.52% on AVE) are Table I's Uniform-Baseline (the
multimodal loss plus unimodal losses, eq. 9), not Table I's Baseline (multimodal loss
only, 64.35%). The recipes therefore carry both rows where the paper has "Baseline", and
Table II's rows without BMLR are Uniform-Baseline with that fusion. Table VI (MOSI,
MOSEI) is `table1` on those data sets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Arm:
    """One row of a comparison: `method` trained with `fixed` Config keys, shown as `label`."""

    label: str
    method: str
    fixed: tuple[tuple[str, Any], ...] = ()  # (key, value) pairs, hashable

    @property
    def fixed_dict(self) -> dict[str, Any]:
        return dict(self.fixed)


@dataclass(frozen=True)
class Recipe:
    """One of the paper's tables: its rows, the reference row and how the tables show them."""

    name: str
    title: str
    paper: str  # what the paper reports in that table
    arms: tuple[Arm, ...]
    reference: str  # label of the "before" row of the Table III-style table and of the deltas
    layout: str = "methods"  # "methods": one row per arm; "fusions": Table II's with/without pivot
    notes: tuple[str, ...] = field(default_factory=tuple)


# Table I: the methods implemented here (the paper's other rows have no implementation).
TABLE1_METHODS = ("baseline", "uniform_baseline", "ogm_ge", "dgl", "aug", "udi", "bmlr")
FUSIONS = ("concat", "sum", "film", "gated")
# Table II: each fusion without BMLR (Uniform-Baseline, see the module doc) and with it.
TABLE2_PLAIN = "uniform_baseline"


def method_arms(methods: list[str] | tuple[str, ...]) -> tuple[Arm, ...]:
    """One row per method, labelled with its name."""
    return tuple(Arm(m, m) for m in methods)


def fusion_arms(plain: str = TABLE2_PLAIN) -> tuple[Arm, ...]:
    """Table II's rows: each fusion trained with `plain` and with BMLR ('<fusion>+bmlr')."""
    arms = []
    for fusion in FUSIONS:
        arms.append(Arm(f"{fusion}", plain, (("fusion", fusion),)))
        arms.append(Arm(f"{fusion}+bmlr", "bmlr", (("fusion", fusion),)))
    return tuple(arms)


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("table1", "Table I: comparison with balanced multimodal learning methods",
           "test accuracy of each method on CREMA-D, Kinetics-Sounds and AVE (Table VI: MOSI, MOSEI)",
           method_arms(TABLE1_METHODS), reference="baseline",
           notes=("AGM, CML, MBSD, LFM, Diag&Re, ReconBoost, MMPareto, OPM and Remix have no implementation "
                  "here; their rows are not reproduced.",)),
    Recipe("table2", "Table II: fusions with and without BMLR",
           "test accuracy of concat, sum, FiLM and bi-gated fusion, each without and with BMLR",
           fusion_arms(), reference="concat", layout="fusions",
           notes=("The rows without BMLR train Uniform-Baseline (the paper's Table II 'Concat' equals its "
                  "Table I Uniform-Baseline).",)),
    Recipe("table3", "Table III: modality imbalance before and after BMLR",
           "multimodal, audio and visual accuracy and the A/V ratio, baseline vs BMLR",
           method_arms(("baseline", "uniform_baseline", "bmlr")), reference="baseline",
           notes=("The paper's 'Baseline' here has Table I's Uniform-Baseline numbers; both rows are shown.",)),
    Recipe("table4", "Table IV: uniform label smoothing vs BMLR's reshaping",
           "test accuracy of Uni-Reshaping (LFM-style smoothing at BMLR's intensity) and BMLR vs the baseline",
           method_arms(("baseline", "uniform_baseline", "uni_reshaping", "bmlr")), reference="baseline"),
    Recipe("table5", "Table V: ablations of BMLR",
           "test accuracy of Only-Reshape, Only-TPO, Uni-Distill, Vanilla-Reshape and BMLR vs the baseline",
           method_arms(("baseline", "uniform_baseline", "only_reshape", "only_tpo", "uni_distill",
                        "vanilla_reshape", "bmlr")), reference="baseline"),
)}


def get_recipe(name: str) -> Recipe:
    """The recipe `name` ('table3', 'Table-III', 'tableiii'...); KeyError names the choices."""
    key = name.lower().replace("_", "").replace("-", "")
    aliases = {"tablei": "table1", "tableii": "table2", "tableiii": "table3", "tableiv": "table4",
               "tablev": "table5", "table6": "table1", "tablevi": "table1"}
    key = aliases.get(key, key)
    if key not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)} (table6 = table1 on mosi/mosei)")
    return RECIPES[key]


def describe_recipes() -> str:
    """`recipe --list`: each recipe's name, title and rows."""
    lines = []
    for r in RECIPES.values():
        rows = ", ".join(a.label for a in r.arms)
        lines.append(f"{r.name:7s} {r.title}\n        rows: {rows}")
    return "\n".join(lines)


__all__ = ["Arm", "Recipe", "RECIPES", "TABLE1_METHODS", "FUSIONS", "get_recipe", "describe_recipes",
           "method_arms", "fusion_arms"]
