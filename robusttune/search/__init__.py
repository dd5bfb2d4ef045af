"""The search layer: search spaces, the Ray Tune trainable, Optuna searchers and sweeps (the only ray/optuna users)."""
