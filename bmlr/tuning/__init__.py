"""Hyperparameter tuning of bmlr with Ray Tune (ASHA), Optuna (TPE) and MLflow.

This package adapts the library for tuning; the library itself (`bmlr/` outside
this package) never imports Ray or MLflow. Modules, one job each:

* `search_space` - the YAML grammar of `search_spaces/<dataset>.yaml`, its
  validation and its conversion to Optuna distributions (no Ray import);
* `trainable`   - the Ray Tune function trainable over `bmlr.engine.Trainer`;
* `tracking`    - MLflow: one parent run per study, one nested run per trial;
* `export`      - a trial's configuration -> a production YAML for `bmlr.train`;
* `study`       - run (or resume) a study: checks, Ray, Tuner, export, summary;
* `staged`      - the staged strategy: beta (with lr, fusion) first, then alpha;
* `surface`     - alpha x beta grids (the paper's Figure 5) and surfaces of scattered trials;
* `report`      - the study report (best trials, importances, surface, Figures 6, 3a, 4);
* `plots`       - the figures (matplotlib, PNG);
* `cli`         - `bmlr-tune` / `python tune.py`.

Imports are kept lazy so that `import bmlr.tuning` stays cheap.
"""
