"""robusttune: hyperparameter search for robust fine-tuning of CLIP with counterfactual images.

The Python API (``robusttune.api``) is re-exported here::

    import robusttune as rt
    result = rt.sweep("demo", trials=4)      # every command: rt.train, rt.resume, rt.report, rt.launch, ...

The library logs; the CLI (``robusttune``) prints. Heavy imports (torch, ray, optuna) happen in the functions
that need them, never at import time, so ``import robusttune`` stays cheap.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("robusttune")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]  # and every name of robusttune.api.__all__, imported on first use


def __getattr__(name: str) -> Any:
    if not name.startswith("_") and name != "api":  # the API pulls in pydantic and yaml: imported when first asked for
        from importlib import import_module

        api = import_module("robusttune.api")
        if name in api.__all__:
            return getattr(api, name)
    raise AttributeError(f"module 'robusttune' has no attribute {name!r}")
