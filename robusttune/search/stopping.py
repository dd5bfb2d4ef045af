"""Stopping a sweep driver safely on the signals people, clusters and schedulers send.

Ctrl-C (SIGINT), SIGTERM (Kubernetes, Slurm, systemd, ``timeout``) and SIGHUP (a closed terminal) all get the same
treatment, for the whole life of the driver (``StopSignals``):

- while Ray Tune runs the trials, the first one stops the search at a safe point: Tune saves its state and the
  trials' checkpoints stay (SIGUSR1 is Tune's own stop signal); a second one stops at once;
- at any other moment (starting Ray, restoring, the baselines after the trials) it stops at once: every step there is
  resumable row by row;
- either way the driver ends with ``Interrupted`` (exit 128 + the signal's number: 130, 143, 129) naming the resume
  command, and shuts down the Ray it started with further signals held off, so that no Ray process outlives it.

Without a handler, Ray's driver aborts on SIGTERM (exit 134, a C++ stack dump) and a SIGHUP leaves Ray's agents running.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from robusttune.errors import Interrupted

log = logging.getLogger(__name__)

STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


class StoppedAtOnce(KeyboardInterrupt):
    """Raised by the handler where the driver cannot stop at a safe point (a KeyboardInterrupt, so that no
    ``except Exception`` on the way swallows it)."""

    def __init__(self, signal_number: int):
        super().__init__(STOP_SIGNALS.get(signal_number, str(signal_number)))
        self.signal_number = signal_number


class StopSignals:
    """The stop signals' handler for one sweep or resume driver (see the module docstring). ``tune_running()`` marks
    the stretch in which Tune can stop at a safe point; ``started_ray()`` makes the exit shut that Ray down."""

    def __init__(self, experiment: Path):
        self.experiment = experiment
        self.received: int | None = None
        self._tune_running = False
        self._shutdown_ray = False
        self._previous: dict[int, object] = {}
        self._tune_sigint_env: str | None = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._on_signal)
            self._tune_sigint_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Tune's own SIGINT handler would swallow the signal
        return self

    def claim(self) -> None:
        """Set the handlers again after ``ray.init``: Ray's core worker installs a C++ handler for SIGTERM that
        prints a stack dump and aborts the driver."""
        for number in self._previous:
            signal.signal(number, self._on_signal)

    def signalled(self, number: int) -> None:
        """A stop signal that another handler caught first (ray.init's own SIGTERM handler), taken as ours."""
        self._on_signal(number, None)

    def _on_signal(self, number: int, frame) -> None:
        first = self.received is None
        if first:
            self.received = number
        tune_can_stop = signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        if first and self._tune_running and tune_can_stop:
            log.warning("%s: stopping the sweep after the trials' current step (again to stop at once)",
                        STOP_SIGNALS[number])
            os.kill(os.getpid(), signal.SIGUSR1)
            return
        raise StoppedAtOnce(number)

    @contextmanager
    def tune_running(self) -> Iterator[None]:
        """Around ``Tuner.fit()``: a first signal stops Tune at a safe point, and fit's return then ends the sweep."""
        self._tune_running = True
        try:
            yield
        finally:
            self._tune_running = False
        if self.received is not None:
            raise self.interrupted("the sweep is saved")

    def started_ray(self) -> None:
        self._shutdown_ray = True

    def interrupted(self, how: str) -> Interrupted:
        number = self.received or signal.SIGINT
        return Interrupted(f"{STOP_SIGNALS.get(number, number)}: {how}; continue with: robusttune resume {self.experiment}",
                           signal_number=number)

    def __exit__(self, kind, error, traceback) -> None:
        if self._previous:
            signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))  # the clean-up below must not be cut short
        try:
            if self._shutdown_ray:
                import ray

                ray.shutdown()  # this driver started it: no raylet, GCS or agent may outlive the driver
        finally:
            for number, handler in self._previous.items():
                signal.signal(number, handler)
            if self._previous:
                if self._tune_sigint_env is None:
                    os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
                else:
                    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._tune_sigint_env
                signal.pthread_sigmask(signal.SIG_UNBLOCK, set(STOP_SIGNALS))
        if isinstance(error, StoppedAtOnce):
            self.received = self.received or error.signal_number
            raise self.interrupted("stopped at once") from None
