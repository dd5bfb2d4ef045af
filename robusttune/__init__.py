"""robusttune: hyperparameter search for robust fine-tuning of CLIP with counterfactual images.

The Python API (``robusttune.api``) is re-exported here::

    import robusttune as rt
    result = rt.sweep("demo", trials=4)      # also: rt.train, rt.resume, rt.status, rt.plan, rt.report, rt.wise

The library logs; the CLI (``robusttune``) prints. Heavy imports (torch, ray, optuna) happen in the functions
that need them, never at import time, so ``import robusttune`` stays cheap.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("robusttune")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

API = ("train", "wise", "sweep", "resume", "status", "plan", "report", "TrainSummary", "SweepResult", "Status", "ReportResult")

__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:  # imported on first use: the API module pulls in pydantic and yaml
        from robusttune import api

        return getattr(api, name)
    raise AttributeError(f"module 'robusttune' has no attribute {name!r}")
