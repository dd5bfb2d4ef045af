"""Shared fixtures: a per-session cache directory and the small, fast test world."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_world_config():
    from robusttune.config import tiny_test_world

    return tiny_test_world()


@pytest.fixture(scope="session")
def tiny_prepared(tiny_world_config, cache_dir):
    from robusttune.training.world import prepare_world

    return prepare_world(tiny_world_config, cache_dir)


@pytest.fixture(scope="session")
def default_world_data(cache_dir):
    from robusttune.config import default_world
    from robusttune.data.mini.world import load_world

    return load_world(default_world(), cache_dir)


FAULTS = Path(__file__).resolve().parent / "faults"


def nan_fault_env(step: int, *, lr: float | None = None) -> dict[str, str]:
    """Environment for a subprocess (and the Ray workers it starts) whose training loss turns NaN at ``step`` in
    runs with learning rate ``lr`` (every run when None); see tests/faults/sitecustomize.py."""
    import json
    import os

    path = os.pathsep.join(p for p in (str(FAULTS), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "ROBUSTTUNE_TEST_NAN": json.dumps({"step": step, "lr": lr})}


@pytest.fixture()
def kill_9_when():
    return _kill_9_when


def _kill_9_when(args, env, ready, *, timeout: float, never: str) -> None:
    """Run ``robusttune ARGS`` in its own session until ``ready()`` is true, then ``kill -9`` it and the Ray
    processes it started (its process group, nothing else); fail with ``never`` if that takes over ``timeout`` s."""
    import os
    import signal
    import subprocess
    import sys
    import time

    driver = subprocess.Popen([sys.executable, "-m", "robusttune.cli", *map(str, args)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            time.sleep(0.3)
            if ready():
                return
        pytest.fail(never)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
