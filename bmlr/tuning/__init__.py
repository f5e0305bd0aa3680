"""Hyperparameter tuning of bmlr with Ray Tune (ASHA), Optuna (TPE) and MLflow.

This package adapts the library for tuning; the library itself (`bmlr/` outside
this package) never imports Ray or MLflow. Modules, one job each:

* `search_space` - the YAML grammar of `search_spaces/<dataset>.yaml`, its
  validation and its conversion to Optuna distributions (no Ray import);
* `trainable`   - the Ray Tune function trainable over `bmlr.engine.Trainer`;
* `tracking`    - MLflow: one parent run per study, one nested run per trial;
* `export`      - a trial's configuration -> a production YAML for `bmlr.train`;
* `study`       - run (or resume) a study: checks, Ray, Tuner, export, summary;
* `cli`         - `bmlr-tune` / `python tune.py`.

Imports are kept lazy so that `import bmlr.tuning` stays cheap.
"""
