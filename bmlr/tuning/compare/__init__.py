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
* `mlflow_run` - the comparison's MLflow parent run and the rows' runs;
* `runner`     - `Comparison`: plan, studies, production, tables (`comparison.json`);
* `cli`        - `bmlr-tune compare` and `bmlr-tune recipe` (not imported here).
"""
from bmlr.tuning.compare.identity import find_reusable, is_complete, load_results, run_key
from bmlr.tuning.compare.runner import COMPARISON_FILE, TABLE_FILE, Comparison, ComparisonOutcome
from bmlr.tuning.compare.settings import ComparisonError, ComparisonSettings, slug
from bmlr.tuning.compare.spaces import (arm_space, check_method, check_overrides, overrides_for,
                                        production_settings, untuned_config)
from bmlr.tuning.compare.tables import accuracy_table, fusion_table, modality_table, render_markdown

__all__ = ["COMPARISON_FILE", "TABLE_FILE", "Comparison", "ComparisonError", "ComparisonOutcome",
           "ComparisonSettings", "accuracy_table", "arm_space", "check_method", "check_overrides",
           "find_reusable", "fusion_table", "is_complete", "load_results", "modality_table", "overrides_for",
           "production_settings", "render_markdown", "run_key", "slug", "untuned_config"]
