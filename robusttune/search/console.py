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

import math
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
