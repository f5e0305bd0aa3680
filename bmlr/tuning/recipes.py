"""The paper's experiments as recipes: one command per table, on any supported data set.

    python tune.py recipe table1 --dataset avmnist --data-root ../shared/data --no-tune
    python tune.py recipe table2 --dataset cremad --data-root /data/CREMA-D --samples 32
    python tune.py recipe --list

A recipe is a list of rows (`Arm`: a label, a method and the Config keys the row fixes,
e.g. the fusion of Table II) run by `bmlr.tuning.compare`: with `--samples N` every row is
tuned with the same budget (one study per row) and its best configuration trained with
all production seeds; with `--no-tune` every row trains the search space's untuned
configuration (its fixed part and each searched key's `default`) with all seeds.

Every row trains concat fusion unless it fixes its own (Table II) or `--search-fusion` is
given: the paper's Tables I and III-VI are concat ("we adopt the combination of BMLR and
concatenation as a representative method", Section IV-C), and a fusion searched per row
would confound the method with the fusion. Each row trains with its method's authors'
optimizer settings (`bmlr.methods.protocols`) unless `--protocol shared`.

The paper's Tables II-V call their reference row "Baseline", but its numbers (70.88% on
CREMA-D, 68.00% on Kinetics-Sounds, 70.52% on AVE) are Table I's Uniform-Baseline (the
multimodal loss plus unimodal losses, eq. 9), not Table I's Baseline (multimodal loss
only, 64.35%). The recipes therefore carry both rows where the paper has "Baseline", and
Table II's rows without BMLR are Uniform-Baseline with that fusion. Table VI (MOSI, MOSEI)
builds the rows of the paper's Table VI that have an implementation here; its notes name
the others.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bmlr.methods import METHODS


@dataclass(frozen=True)
class Arm:
    """One row of a comparison: `method` trained with `fixed` Config keys, shown as `label`;
    `protocol`: with its method's authors' optimizer settings (`bmlr.methods.protocols`)
    where neither `fixed`, `--set` nor the method's search-space section names the key."""

    label: str
    method: str
    fixed: tuple[tuple[str, Any], ...] = ()  # (key, value) pairs, hashable
    protocol: bool = True

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
PAPER_FUSION = "concat"  # the fusion of the paper's Tables I, III-VI
# Table II: each fusion without BMLR (Uniform-Baseline, see the module doc) and with it.
TABLE2_PLAIN = "uniform_baseline"
# Table VI (MOSI, MOSEI): the paper's rows in its order; LFM is not uni_reshaping (that is
# LFM-style smoothing inside BMLR's gate and TPO, Table IV), so it has no row here
TABLE6_PAPER_ROWS = ("baseline", "agm", "reconboost", "mmpareto", "opm", "lfm", "dgl", "bmlr")


def method_arms(methods: list[str] | tuple[str, ...], fusion: str | None = PAPER_FUSION) -> tuple[Arm, ...]:
    """One row per method, labelled with its name, each with `fusion` fixed (None: the
    fusion is left to the search space, `--search-fusion`)."""
    fixed = (("fusion", fusion),) if fusion else ()
    return tuple(Arm(m, m, fixed) for m in methods)


def table6_rows() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The paper's Table VI rows that have an implementation here, and those that do not."""
    built = tuple(m for m in TABLE6_PAPER_ROWS if m in METHODS)
    return built, tuple(m for m in TABLE6_PAPER_ROWS if m not in built)


def without_fusion(arm: Arm) -> Arm:
    """`arm` with its fixed fusion left to the search (`--search-fusion`)."""
    return Arm(arm.label, arm.method, tuple((k, v) for k, v in arm.fixed if k != "fusion"), arm.protocol)


def fusion_arms(plain: str = TABLE2_PLAIN) -> tuple[Arm, ...]:
    """Table II's rows: each fusion trained with `plain` and with BMLR ('<fusion>+bmlr')."""
    arms = []
    for fusion in FUSIONS:
        arms.append(Arm(f"{fusion}", plain, (("fusion", fusion),)))
        arms.append(Arm(f"{fusion}+bmlr", "bmlr", (("fusion", fusion),)))
    return tuple(arms)


# the paper's Table I rows besides Baseline, Uniform-Baseline and BMLR, by their registry names
TABLE1_PAPER_ROWS = ("ogm_ge", "agm", "cml", "mbsd", "lfm", "diag_re", "reconboost", "mmpareto", "opm", "remix",
                     "dgl")


def absent_rows_note(paper_rows: tuple[str, ...], arms: tuple[Arm, ...]) -> str:
    """Which of the paper's rows a recipe leaves out: without an implementation here, or
    implemented but not a row of the recipe (then `compare --methods` runs them)."""
    present = {a.method for a in arms}
    missing = [m for m in paper_rows if m not in present and m not in METHODS]
    left = [m for m in paper_rows if m not in present and m in METHODS]
    parts = [f"the paper's rows {', '.join(missing)} have no implementation here and are not reproduced"] \
        if missing else []
    if left:
        parts.append(f"{', '.join(left)} are implemented but not rows of this recipe (add them with "
                     f"`tune.py compare --methods`)")
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:] if parts else "Every row of the paper's table is built."


def _table1() -> Recipe:
    arms = method_arms(TABLE1_METHODS)
    return Recipe("table1", "Table I: comparison with balanced multimodal learning methods",
                  "test accuracy of each method on CREMA-D, Kinetics-Sounds and AVE, concat fusion",
                  arms, reference="baseline",
                  notes=(absent_rows_note(TABLE1_PAPER_ROWS, arms),
                         "AUG (NeurIPS 2025) and UDI (arXiv 2025) are not rows of the paper's Table I: later methods, "
                         "added as peers (UDI is our own reading of an abstract, no public code)."))


def _table6() -> Recipe:
    built, missing = table6_rows()
    arms = method_arms(built)
    notes = [absent_rows_note(TABLE6_PAPER_ROWS, arms),
             "The paper's Table VI is on MOSI and MOSEI (`--dataset mosi` / `mosei`) with a Transformer-based "
             "model for feature processing and fusion; the rows here use concat fusion."]
    if "lfm" in missing:
        notes.append("LFM is not uni_reshaping: Uni-Reshaping (Table IV) smooths inside BMLR's gate and TPO.")
    return Recipe("table6", "Table VI: balanced multimodal learning methods on three modalities",
                  "test accuracy of each method on MOSI and MOSEI", arms, reference="baseline", notes=tuple(notes))


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    _table1(),
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
    _table6(),
)}


def get_recipe(name: str) -> Recipe:
    """The recipe `name` ('table3', 'Table-III', 'tableiii'...); KeyError names the choices."""
    key = name.lower().replace("_", "").replace("-", "")
    aliases = {"tablei": "table1", "tableii": "table2", "tableiii": "table3", "tableiv": "table4",
               "tablev": "table5", "tablevi": "table6"}
    key = aliases.get(key, key)
    if key not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[key]


def describe_recipes() -> str:
    """`recipe --list`: each recipe's name, title, rows and notes (what it leaves out, and why)."""
    lines = []
    for r in RECIPES.values():
        rows = ", ".join(a.label for a in r.arms)
        lines.append(f"{r.name:7s} {r.title}\n        rows: {rows}")
        lines += [f"        - {n}" for n in r.notes]
    return "\n".join(lines)


__all__ = ["Arm", "Recipe", "RECIPES", "TABLE1_METHODS", "TABLE1_PAPER_ROWS", "TABLE6_PAPER_ROWS", "FUSIONS",
           "PAPER_FUSION", "get_recipe", "describe_recipes", "method_arms", "fusion_arms", "table6_rows",
           "absent_rows_note", "without_fusion"]
