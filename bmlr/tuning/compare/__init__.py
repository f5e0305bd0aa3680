"""Equal-budget comparisons of balancing methods, and the paper's tables as recipes.

    python tune.py compare --dataset cremad --data-root /data/CREMA-D \\
        --methods baseline uniform_baseline bmlr ogm_ge dgl aug udi --samples 32
    python tune.py compare --methods baseline bmlr ogm_ge --no-tune      # untuned defaults, all seeds
    python tune.py recipe table5 --dataset avmnist --data-root ../shared/data --no-tune
    python tune.py compare --resume --name compare-20250101-120000      # continue an interrupted one

Each row of a comparison (an *arm*: a method, plus the Config keys the row fixes, e.g. a
fusion) is either

* **tuned** (`--samples N`): one study per arm (`bmlr.tuning.study`), all with the same
  number of trials, the same ASHA budget (`--max-epochs`, `--grace-period`,
  `--reduction-factor`) and the same seed, each on its method's own search space
  (`SearchSpace.for_method`: the shared entries minus the keys the method ignores, plus
  its `methods.<name>` section), then the best configuration trained for production with
  every seed; or
* **untuned** (`--no-tune`): the search space's untuned configuration (its fixed part
  and each searched key's `default`: the paper's and the methods' authors' values)
  trained with every seed.

Production training is `python -m bmlr.train` (`--jobs` at a time), which selects the
epoch on validation and reads test once per seed. The tables (`comparison.md`) come from
those `results.json` files only: Table I style (test accuracy, mean ± std over seeds) and
Table III style (per-modality accuracy and the imbalance ratio, the reference row
"before" each method "after"); Table II's recipe adds its with/without-BMLR pivot.

Modules, one job each (data flows down this list):

* `settings`   - `ComparisonSettings`, its checks, a row's `StudySettings`;
* `identity`   - a production run's identity, finished runs, `--reuse`;
* `spaces`     - each row's search space, untuned and production configuration;
* `tables`     - the Markdown tables (`comparison.md`);
* `pool`       - the production trainings, in this process or `--jobs` processes;
* (its MLflow parent run and the rows' runs: `bmlr.tuning.tracking.comparison`);
* `runner`     - `Comparison`: plan, studies, production, tables (`comparison.json`);
* `cli`        - `bmlr-tune compare` and `bmlr-tune recipe` (not imported here).

The names below are imported from their modules when first used (PEP 562), so that importing
`bmlr.tuning.compare.cli` (for `bmlr-tune --help`) imports none of the modules above.
"""
from __future__ import annotations

import importlib
from typing import Any

# public name -> the module (in this package) that defines it
EXPORTS = {
    "identity": ("find_reusable", "is_complete", "load_results", "run_key"),
    "runner": ("COMPARISON_FILE", "TABLE_FILE", "Comparison", "ComparisonOutcome"),
    "settings": ("ComparisonError", "ComparisonSettings", "slug"),
    "spaces": ("arm_space", "check_method", "check_overrides", "overrides_for", "production_settings",
               "untuned_config"),
    "tables": ("accuracy_table", "fusion_table", "modality_table", "render_markdown"),
}
MODULE_OF = {name: module for module, names in EXPORTS.items() for name in names}


__all__ = sorted(MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{MODULE_OF[name]}"), name)
    globals()[name] = value  # the next look-up finds it without this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
