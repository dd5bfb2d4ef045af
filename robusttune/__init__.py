"""robusttune: hyperparameter search for robust fine-tuning of CLIP with counterfactual images.

The library logs; the CLI (``robusttune``) prints. Heavy imports (torch, ray, optuna) happen in the
modules that need them, never here, so ``import robusttune`` stays cheap.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("robusttune")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
