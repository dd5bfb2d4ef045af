"""Test-only fault injection for subprocesses and Ray workers (never shipped: it lives under tests/).

A process started with this folder on ``PYTHONPATH`` and ``ROBUSTTUNE_TEST_NAN='{"step": S, "lr": LR}'`` (or a
list of such objects) in its environment makes the training loss NaN at step ``S`` of every run whose learning
rate is ``LR`` (any run when ``lr`` is null), by wrapping ``StepComputer.loss`` once ``robusttune.training.loop`` is imported. Tests use it to
drive the real failure path through real processes (``robusttune train``, sweep trials in Ray workers).
"""

import importlib.abc
import importlib.util
import json
import os
import sys

_SPEC = os.environ.get("ROBUSTTUNE_TEST_NAN")
_TARGET = "robusttune.training.loop"


def _patch(module) -> None:
    faults = json.loads(_SPEC)
    faults = faults if isinstance(faults, list) else [faults]
    original = module.StepComputer.loss

    def loss(self, images, labels, step):
        value, parts = original(self, images, labels, step)
        if any(step == f["step"] and (f.get("lr") is None or self.config.lr == f["lr"]) for f in faults):
            value = value * float("nan")
        return value, parts

    module.StepComputer.loss = loss


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _TARGET:
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
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if _SPEC:
    sys.meta_path.insert(0, _Finder())
