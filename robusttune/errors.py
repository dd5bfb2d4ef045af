"""One exception family. Every error a user can cause says what was wrong in one line.

``exit_code`` follows the CLI convention: 2 for bad input (arguments, files, configs), 1 for a job
that failed while running (a diverged trial, a failed restore).
"""

from __future__ import annotations


class RobustTuneError(Exception):
    """Base of every error robusttune raises on purpose."""

    exit_code: int = 1


class ConfigError(RobustTuneError, ValueError):
    """A configuration value, file or command-line argument is invalid."""

    exit_code = 2


class DataError(RobustTuneError):
    """A dataset folder or cached data file is missing or malformed."""

    exit_code = 2


class ModelError(RobustTuneError):
    """A model name, pretrained tag or checkpoint cannot be used."""

    exit_code = 2


class CheckpointError(RobustTuneError):
    """A checkpoint file is missing, corrupt or does not match the model."""

    exit_code = 2


class TrainingError(RobustTuneError):
    """Training failed while running, e.g. the loss became non-finite."""

    exit_code = 1


class SweepError(RobustTuneError):
    """A sweep could not run or be restored (exit code 1)."""

    exit_code = 1


class LaunchError(RobustTuneError):
    """Bringing up a cluster or submitting a sweep to it failed (exit code 1)."""

    exit_code = 1


class Interrupted(RobustTuneError):
    """The user stopped a sweep (Ctrl-C); its state is saved and ``robusttune resume`` continues it (exit 130)."""

    exit_code = 130
