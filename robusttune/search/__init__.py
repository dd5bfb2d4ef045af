"""The search layer: sweeps and their resumption, the Ray Tune trainable, the Optuna searcher and samplers, MO-ASHA,
the baselines and cluster launch. With ``robusttune.bench`` (built on it), the only package that imports ray/optuna."""
