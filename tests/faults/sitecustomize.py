"""Test-only fault injection for subprocesses and Ray workers (never shipped: it lives under tests/).

A process started with this folder on ``PYTHONPATH`` arms the faults its environment names, by wrapping a function
once its module is imported:

- ``ROBUSTTUNE_TEST_NAN='{"step": S, "lr": LR}'`` (or a list of such objects): the training loss is NaN at step
  ``S`` of every run whose learning rate is ``LR`` (any run when ``lr`` is null) (``StepComputer.loss``);
- ``ROBUSTTUNE_TEST_KILL_AFTER_FINAL=N``: the sweep driver kills itself (SIGKILL) right after the records got the
  N-th trial's end row, before Ray Tune can save its state again (``RecordsCallback.on_trial_complete``).

Tests use them to drive the real failure paths through real processes (``robusttune train``, sweeps, Ray workers).
"""

import importlib.abc
import importlib.util
import json
import os
import signal
import sys

_NAN = os.environ.get("ROBUSTTUNE_TEST_NAN")
_KILL_AFTER_FINAL = os.environ.get("ROBUSTTUNE_TEST_KILL_AFTER_FINAL")


def _nan_loss(module) -> None:
    faults = json.loads(_NAN)
    faults = faults if isinstance(faults, list) else [faults]
    original = module.StepComputer.loss

    def loss(self, images, labels, step, *args, **kwargs):
        value, parts = original(self, images, labels, step, *args, **kwargs)
        if any(step == f["step"] and (f.get("lr") is None or self.config.lr == f["lr"]) for f in faults):
            value = value * float("nan")
        return value, parts

    module.StepComputer.loss = loss


def _kill_after_final(module) -> None:
    original, ended = module.RecordsCallback.on_trial_complete, []

    def on_trial_complete(self, *args, **kwargs):
        original(self, *args, **kwargs)
        ended.append(1)
        if len(ended) == int(_KILL_AFTER_FINAL):
            os.kill(os.getpid(), signal.SIGKILL)

    module.RecordsCallback.on_trial_complete = on_trial_complete


_PATCHES = {name: patch for name, patch, armed in [("robusttune.training.loop", _nan_loss, _NAN),
                                                    ("robusttune.search.adapters", _kill_after_final, _KILL_AFTER_FINAL)]
            if armed}


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


if _PATCHES:
    sys.meta_path.insert(0, _Finder())
