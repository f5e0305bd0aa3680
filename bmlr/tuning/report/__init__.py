"""The study report: one Markdown page and the same page as a self-contained HTML file (images
inlined), written into `<study>/report/` and logged to the study's MLflow run under `report/`.

    python tune.py report --study tune_runs/synthetic/<study> [--baseline-study DIR] [--fast]

Every study writes it at its end (`--report full|fast|none`; full and fast are the same now).
It holds, from the study folder alone (validation only; test is never read; nothing is trained),
one module per section, as Optuna keeps one module per figure in `optuna/visualization/`: a
section computes its figure's numbers apart from drawing them (`figure` holds what the drawings
share: the backend, the modality colours, the PNG writer):

1. `best_trials`  - the best trials table: each trial's score by the study's rule beside its
   binomial standard error (`scoring` names the rule and the noise for every section);
   `confirmation` - where the study ran a confirmation stage (`confirmation.csv`): each
   candidate's search score beside its mean +- std over new seeds, the winner starred, as a
   table and a figure, with the seeds, epochs and cost;
2. `importances`  - Optuna's hyperparameter importances (fANOVA over the finished trials'
   scores; for a staged study, stage 1's): Optuna's figure and a table;
   `optuna_figures` - Optuna's views of the study (optimization history, parallel
   coordinates, slice, contour of alpha x beta), drawn by `optuna.visualization.matplotlib`
   into `<study>/optuna/` and logged to the MLflow parent run under `optuna/`; both read
   the study `optuna_study` rebuilds from the finished trials and the search space;
3. `surface`      - the alpha x beta surface: the grid of a surface study
   (`bmlr.tuning.surface`), else the study's scattered trials binned; `surface_figures` draws
   both figures of either;
4. `curves`       - learning curves (the paper's Figure 6): multimodal and per-modality
   validation accuracy per epoch of the best trial, beside the best trial of
   `--baseline-study`, or else the study's baseline reference (the same configuration, seed and
   epochs with `method: baseline`, its history in `references.json`, written by
   `bmlr.tuning.references`); a study without one shows the best trial alone and says so;
5. `reshaped`     - reshaped training samples per modality per epoch of the best trial
   (Figure 3a);
6. `top3`         - per true class, the top-3 predicted classes of each modality's own head and
   of the fused head at the best trial's best epoch (Figure 4), from
   `trials/trial_<id>/val_top3.json`, which the trainable writes whenever a trial reaches a new
   best validation accuracy;
7. `tsne_features`, `tsne_labels` - t-SNE (scikit-learn) of the unimodal and fused features
   (the paper's Figure 1) and of uniform / BMLR / per-sample label distributions (Figure 3)
   for a sample of validation clips, from the validation sample the best trial saved
   (`trials/trial_<id>/val_sample.pt`, read by `best_model`); where it saved none, the
   sections say why and how to get one.

`summary` writes the paragraphs above them, `page` renders the page, `study_view` reads the
study folder (through `bmlr.tuning.store`; the best trial by `bmlr.tuning.selection`, or the
confirmation's winner) and `build` puts the sections together. (`baseline` is the baseline
reference's training for `bmlr.tuning.references`, which imports it; it moves there.)
"""
from bmlr.tuning.report.best_trials import best_trials_table
from bmlr.tuning.report.build import log_to_mlflow, write_report, write_report_safely
from bmlr.tuning.report.confirmation import confirmation_table
from bmlr.tuning.report.importances import param_importances
from bmlr.tuning.report.optuna_study import optuna_study
from bmlr.tuning.report.page import Page
from bmlr.tuning.report.study_view import REPORT_DIR, Context, ReportError, StudyView
from bmlr.tuning.report.top3 import top3_table

__all__ = ["REPORT_DIR", "ReportError", "StudyView", "Context", "Page", "write_report", "write_report_safely",
           "log_to_mlflow", "param_importances", "optuna_study", "best_trials_table", "confirmation_table", "top3_table"]
