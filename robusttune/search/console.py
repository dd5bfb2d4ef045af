"""The sweep's console for people (driver side): one line per trial event, on stderr.

By default (``verbose=1``) a sweep prints, instead of Ray Tune's boxed configuration and result tables, one line when a
trial starts (its sampled values), one per evaluation (its objective metrics, in %), one when it ends (complete with
its objective metrics, stopped by the scheduler at which evaluation, failed with the reason, or crashed and retried),
and the heartbeats between evaluations; the closing table comes from the CLI. ``verbose=2`` (``--verbose``) brings Ray
Tune's own tables back; ``verbose=0`` (``--json``) prints nothing here.

    trial 3a2f0001 started: region=object refill=single mask_ratio=0.42 w_distill=1.3 lr=0.00032
    trial 3a2f0001 evaluation 2 (step 50/150): id_val_acc 61.5  ood_mean 48.2
    trial 3a2f0001 stopped by the scheduler after evaluation 3 (step 75/150): id_val_acc 62.0  ood_mean 48.9
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from ray.tune import Callback

from robusttune.metrics import WISE_ALPHA
from robusttune.progress import duration


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _percent(value: Any) -> str:
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


EVALUATION_LINE_SECONDS = 30.0  # a trial's evaluations are shown at most this often (its first and its end always)


class TrialEvents(Callback):
    """One line per trial event (see the module's docstring); a trial's evaluations at most every
    ``evaluation_seconds`` (short trials would fill the screen with them; a long trial's all show)."""

    def __init__(self, metrics: Sequence[str], parameters: Sequence[str], stream: TextIO | None = None,
                 evaluation_seconds: float = EVALUATION_LINE_SECONDS):
        self.metrics, self.parameters, self.stream = list(metrics), list(parameters), stream
        self.evaluation_seconds = evaluation_seconds
        self._shown: dict[str, float] = {}  # trial id -> when its last evaluation line was shown

    def _say(self, trial, text: str) -> None:
        print(f"trial {trial.trial_id} {text}", file=self.stream or sys.stderr, flush=True)

    def _scores(self, result: dict[str, Any]) -> str:
        scores = "  ".join(f"{m} {_percent(result.get(m))}" for m in self.metrics)
        alpha = result.get(WISE_ALPHA)  # a WiSE-aware objective: where on the trial's curve its best point lies
        return f"{scores}  (WiSE-FT alpha {alpha:g})" if isinstance(alpha, float) and math.isfinite(alpha) else scores

    @staticmethod
    def _at(result: dict[str, Any]) -> str:
        where, step, total = f"evaluation {result.get('evaluation')}", result.get("step"), result.get("total_steps")
        return f"{where} (step {step}/{total})" if step is not None and total else where

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        sampled = " ".join(f"{k}={_value(trial.config[k])}" for k in self.parameters if k in trial.config)
        self._say(trial, f"started: {sampled}" if sampled else "started")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get("heartbeat") or result.get("trial_status") == "failed":
            return  # heartbeats have their own lines; a failure is said when the trial ends
        now = time.monotonic()
        if now - self._shown.get(trial.trial_id, -math.inf) >= self.evaluation_seconds:
            self._shown[trial.trial_id] = now
            self._say(trial, f"{self._at(result)}: {self._scores(result)}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        from robusttune.experiment import end_status

        result = trial.last_result or {}
        status = end_status(result)
        if status == "complete":
            self._say(trial, f"complete: {self._scores(result)}")
        elif status == "stopped-early":
            self._say(trial, f"stopped by the scheduler after {self._at(result)}: {self._scores(result)}")
        else:
            self._say(trial, f"failed: {result.get('failure', 'no reason given')}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        from robusttune.search.adapters import error_reason

        self._say(trial, f"failed: {error_reason(trial)}")

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._say(trial, "crashed (a lost node or worker?); retried from its last checkpoint")


class HeartbeatPrinter(Callback):
    """One compact line per heartbeat on stderr: ``trial 3a2f_00001  step 120/400  loss 1.234  312 img/s  ETA 4m10s``."""

    def __init__(self, stream=None, min_interval_s: float = 0.0):
        self.stream, self.min_interval_s = stream, min_interval_s
        self._last: dict[str, float] = {}

    def on_trial_result(self, iteration, trials, trial, result: dict[str, Any], **info) -> None:
        if not result.get("heartbeat"):
            return
        now = time.monotonic()
        if now - self._last.get(trial.trial_id, -1e9) < self.min_interval_s:
            return
        self._last[trial.trial_id] = now
        line = (f"trial {trial.trial_id}  step {result['step']}/{result['total_steps']}  loss {result['loss']:.4f}  "
                f"{result['images_per_s']:.0f} img/s  ETA {duration(result['eta_s'])}")
        print(line, file=self.stream or sys.stderr, flush=True)


# ------------------------------------------------------------------------- other libraries' words, off the console

LIBRARY_LOG = "robusttune.log"  # in the experiment: what Ray, Ray Tune, PyTorch and matplotlib said during a run
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _QuietFileHandler(logging.FileHandler):
    """A log file that never speaks on the console: opened on the first record, and a record it cannot write (a full
    or read-only disk) is dropped instead of printing logging's own ``--- Logging error ---`` traceback."""

    def __init__(self, path):
        super().__init__(path, mode="a", encoding="utf-8", delay=True)

    def emit(self, record) -> None:
        try:
            super().emit(record)  # opening the file on the first record is outside logging's own error handling
        except OSError:
            pass

    def flush(self) -> None:
        try:
            super().flush()
        except OSError:
            pass

    def close(self) -> None:
        try:
            super().close()  # flushes: on a full disk that raises, and the record is dropped as any other
        except OSError:
            pass

    def handleError(self, record) -> None:  # noqa: N802 (logging's name)
        pass


class LibraryLog:
    """Without ``--debug`` and ``--verbose``: the loggers of Ray, Ray Tune and Ray Train (their tracebacks, Tune's
    ``Resume experiment with: Tuner.restore(...)``), Python's warnings (PyTorch's, matplotlib's) and the lines Ray's
    workers print (``(robusttune_trial pid=...)``, coloured) go to ``<experiment>/robusttune.log`` instead of the
    console, so that a failure is robusttune's one line. A ``RobustTuneError`` that ends the run (other than an
    interruption, whose one line is the resume command) names the log when something was written to it.
    ``enabled=False`` (``--debug``, ``--verbose``) leaves everything as it is."""

    LOGGERS = ("ray", "torch", "matplotlib", "py.warnings", "filelock", "urllib3")

    def __init__(self, experiment, *, enabled: bool = True):
        from pathlib import Path

        self.path = Path(experiment) / LIBRARY_LOG
        self.enabled = enabled
        self._saved: list[tuple[Any, list, bool, int]] = []
        self._workers: list = []
        self._handler = None
        self._last_resort = None
        self._size = 0
        self._captured = False

    @staticmethod
    def wanted() -> bool:
        """Whether to route (not under ``--debug``: the CLI sets the root logger to DEBUG there)."""
        return not logging.getLogger().isEnabledFor(logging.DEBUG)

    def __enter__(self) -> LibraryLog:
        if not self.enabled:
            return self
        import ray.tune  # noqa: F401  (Ray configures its loggers on import: take them over after that)

        self._size = self.path.stat().st_size if self.path.is_file() else 0
        self._handler = _QuietFileHandler(self.path)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        names = set(self.LOGGERS) | {name for name in logging.root.manager.loggerDict
                                     if name.startswith("ray.") and logging.getLogger(name).handlers}
        for name in sorted(names):
            logger = logging.getLogger(name)
            self._saved.append((logger, list(logger.handlers), logger.propagate, logger.level))
            logger.handlers = [self._handler] if name in self.LOGGERS else []
            logger.propagate = name not in self.LOGGERS  # a ray.* logger with its own handler: through "ray"
        logging.getLogger("py.warnings").setLevel(logging.WARNING)
        self._captured = True
        logging.captureWarnings(True)
        workers = logging.getLogger("robusttune.ray_workers")
        self._saved.append((workers, list(workers.handlers), workers.propagate, workers.level))
        workers.handlers, workers.propagate = [self._handler], False
        workers.setLevel(logging.INFO)
        self._last_resort = logging.lastResort
        logging.lastResort = self._handler  # a logger left without handlers (ray.init clears "ray"'s) writes here
        self._workers = []
        self.take_over_ray()
        LibraryLog._active = self
        return self

    _active: LibraryLog | None = None

    def take_over_ray(self) -> None:
        """Again after ``ray.init``: it clears the "ray" logger's handlers (``configure_logging=False``) and adds
        its printer of the workers' lines (``log_to_driver=True``)."""
        logging.getLogger("ray").handlers = [self._handler]
        try:
            from robusttune.search import ray_compat as door

            self._workers += door.swap_worker_lines_handler(self._worker_lines)
        except Exception:  # a Ray without the dispatcher: its lines stay on the console
            pass

    @staticmethod
    def after_ray_init() -> None:
        """Called by the driver right after ``ray.init``: the active ``LibraryLog`` (if any) takes Ray over again."""
        if LibraryLog._active is not None:
            LibraryLog._active.take_over_ray()

    @staticmethod
    def _worker_lines(data: dict) -> None:
        name = data.get("actor_name") or data.get("task_name") or ""
        prefix = f"({name} pid={data.get('pid')})".replace("( ", "(")
        workers = logging.getLogger("robusttune.ray_workers")
        lines = data.get("lines", [])
        if data.get("pid") == "autoscaler":  # its status every few seconds; its events only, as Ray prints them
            lines = [line for line in lines if ":event_summary:" in str(line)]
        for line in lines:
            workers.info("%s %s", prefix, _ANSI.sub("", str(line)))

    def wrote(self) -> bool:
        try:
            return self.path.stat().st_size > self._size
        except OSError:
            return False

    def __exit__(self, kind, error, traceback) -> None:
        if not self.enabled:
            return
        from robusttune.errors import Interrupted, RobustTuneError

        LibraryLog._active = None
        logging.lastResort = self._last_resort
        try:
            import ray

            from robusttune.search import ray_compat as door

            # Ray's printer back only while its Ray runs (ray.shutdown removes it; a later ray.init adds its own)
            door.swap_worker_lines_handler(None, previous=self._workers if ray.is_initialized() else [])
        except Exception:
            pass
        for logger, handlers, propagate, level in reversed(self._saved):
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)
        if self._captured:
            logging.captureWarnings(False)
        if self._handler is not None:
            self._handler.close()
        if (isinstance(error, RobustTuneError) and not isinstance(error, Interrupted) and self.wrote()
                and error.args and isinstance(error.args[0], str) and str(self.path) not in error.args[0]):
            error.args = (f"{error.args[0]} (Ray's and other libraries' messages: {self.path})", *error.args[1:])
