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


class ParameterError(ConfigError):
    """One named parameter has a bad value. The message names it as the API spells it (``max_failures must be >=
    0, got -1``); the CLI says the flag that set it instead (``--max-failures must be ...``)."""

    def __init__(self, parameter: str, problem: str):
        super().__init__(f"{parameter} {problem}")
        self.parameter, self.problem = parameter, problem


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


class StorageError(RobustTuneError):
    """A place robusttune must write to is full or read-only (exit code 1); what was already written is kept."""

    exit_code = 1


class Interrupted(RobustTuneError):
    """A signal stopped a sweep (Ctrl-C, SIGTERM, SIGHUP); its state is saved and ``robusttune resume`` continues it.
    Exit code 128 + the signal's number, as shells report it: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""

    exit_code = 130

    def __init__(self, message: str, *, signal_number: int = 2):
        super().__init__(message)
        self.exit_code = 128 + signal_number


# Errors a full disk raises without saying so: torch.save's zip writer, and readers of a file cut short by one.
_FULL_DISK_MARKERS = ("unexpected pos", "PytorchStreamWriter failed writing", "No space left on device")


def storage_error(error: BaseException, place: object) -> StorageError | None:
    """``error`` said in one line when it means that ``place`` (a folder) is full or cannot be written, else None.

    Checks the error and what caused it: ``OSError`` with ENOSPC/EDQUOT (full), EROFS/EACCES/EPERM (read-only or not
    ours), and torch's ``RuntimeError: ... unexpected pos`` that ``torch.save`` raises on a full disk."""
    import errno

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        number = getattr(current, "errno", None) if isinstance(current, OSError) else None
        if number in (errno.ENOSPC, errno.EDQUOT) or any(m in str(current) for m in _FULL_DISK_MARKERS):
            return StorageError(f"no space left on {place}; free some space, then run the command again "
                                f"(what was written before is kept)")
        if number in (errno.EROFS, errno.EACCES, errno.EPERM):
            what = "read-only" if number == errno.EROFS else "not writable (permission denied)"
            return StorageError(f"{place}: {what}")
        current = current.__cause__ or current.__context__
    return None
