"""Experiment trackers, as Ray Tune callbacks (driver side); the console is ``robusttune.search.console``.

``--logger wandb|mlflow|tensorboard`` adds Ray Tune's own integration callbacks: every reported result (each
evaluation's metrics and the heartbeats between them) and each trial's sampled config reach the tracker. They
default to places inside the experiment that need no network: W&B offline runs in ``<exp>/wandb`` (upload later with
``wandb sync``; ``WANDB_MODE=online`` and an API key log live), an MLflow SQLite store ``<exp>/mlflow.db`` (or
``$MLFLOW_TRACKING_URI``; ``mlflow ui --backend-store-uri sqlite:///<exp>/mlflow.db``), TensorBoard event files
beside each trial in ``<exp>/tune``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ray.tune import Callback

from robusttune.config import Tracker
from robusttune.errors import ParameterError

# each tracker's package, and the extra that installs it
LOGGERS = {Tracker.WANDB: ("wandb", "wandb"), Tracker.MLFLOW: ("mlflow", "mlflow"),
           Tracker.TENSORBOARD: ("tensorboardX", "tensorboard")}


def check_loggers(loggers: Sequence[str]) -> None:
    """Each tracker's package is importable (one-line error naming the extra to install otherwise)."""
    import importlib.util

    for name in loggers:
        if name not in LOGGERS:
            raise ParameterError("loggers", f"has an unknown logger '{name}'; known: {', '.join(LOGGERS)}")
        module, extra = LOGGERS[name]
        if importlib.util.find_spec(module) is None:
            raise ParameterError("loggers", f"{name} needs the '{module}' package: pip install 'robusttune[{extra}]'")


def tracker_callbacks(loggers: Sequence[str], experiment: Path) -> list[Callback]:
    check_loggers(loggers)
    places = tracker_places(LOGGERS, experiment)
    callbacks: list[Callback] = []
    for name in dict.fromkeys(loggers):
        if name == "tensorboard":
            from ray.tune.logger import TBXLoggerCallback

            callbacks.append(TBXLoggerCallback())
        elif name == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            callbacks.append(MLflowLoggerCallback(tracking_uri=places["mlflow"], experiment_name=experiment.name,
                                                  save_artifact=False))
        elif name == "wandb":
            from ray.air.integrations.wandb import WandbLoggerCallback

            Path(places["wandb"]).mkdir(exist_ok=True)
            mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
            if mode == "offline":
                os.environ["WANDB_MODE"] = mode  # Ray's callback asks for an API key unless the mode says offline
            callbacks.append(WandbLoggerCallback(project=os.environ.get("WANDB_PROJECT", "robusttune"),
                                                 group=experiment.name, mode=mode, dir=str(experiment.resolve()),
                                                 log_config=True))
    return callbacks


def mlflow_store(experiment: Path) -> str:
    """The experiment's own MLflow store: SQLite (MLflow 3 keeps its file store in maintenance mode)."""
    return f"sqlite:///{(experiment / 'mlflow.db').resolve()}"


def tracker_places(loggers: Sequence[str], experiment: Path) -> dict[str, str]:
    """Where each tracker writes (for the sweep's closing lines)."""
    places = {"wandb": str(experiment / "wandb"), "mlflow": os.environ.get("MLFLOW_TRACKING_URI") or mlflow_store(experiment),
              "tensorboard": str(experiment / "tune")}
    return {name: places[name] for name in dict.fromkeys(loggers)}
