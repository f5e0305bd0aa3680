"""bmlr: Balanced Multimodal Label Reshaping, with tools to tune it (Ray Tune, Optuna, MLflow)."""

__version__ = "0.1.0"
