"""Shared fixtures: a per-session cache directory and the small, fast test world."""

from __future__ import annotations

from dataclasses import dataclass
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
# The sweeps that run in the test process share one local Ray (``ray_local``), started with these faults armed: a
# trial whose learning rate is exactly NAN_LR gets a NaN loss at step NAN_STEP, one with NAN_AT_START_LR at step 0
# (before its first evaluation). No other test uses these rates.
NAN_LR, NAN_STEP = 0.00234, 3
NAN_AT_START_LR = 0.00345


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def invoke(*args, cwd: Path | None = None, env: dict[str, str] | None = None) -> CliResult:
    """``robusttune ARGS`` run in this process (``main([...])``): the exit code and what it printed. For commands
    where a subprocess adds nothing; the drills that kill the driver keep real subprocesses."""
    import contextlib
    import io
    import os

    from robusttune.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.update(env or {})
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exit_:  # argparse's usage errors and --help
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for every in-process sweep of the session, with the NaN faults armed."""
    import os

    import ray

    if ray.is_initialized():  # a test that should have asked for this fixture started its own
        ray.shutdown()
    saved = dict(os.environ)
    os.environ.update(nan_fault_env((NAN_STEP, NAN_LR), (0, NAN_AT_START_LR)))  # inherited by the raylet, hence by every worker
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield
    ray.shutdown()


def nan_fault_env(*faults: tuple[int, float | None]) -> dict[str, str]:
    """Environment for a subprocess (and the Ray workers it starts) whose training loss turns NaN at ``step`` in
    runs with learning rate ``lr`` (every run when None), for each ``(step, lr)``; see tests/faults/sitecustomize.py."""
    import json
    import os

    path = os.pathsep.join(p for p in (str(FAULTS), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "ROBUSTTUNE_TEST_NAN": json.dumps([{"step": s, "lr": lr} for s, lr in faults])}


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


def train_run(prepared, config, task=None, **kwargs):
    """One fine-tuning run of the prepared world's zero-shot classifier: ``(student, TrainResult)``."""
    from robusttune.models.classifier import frozen_copy
    from robusttune.training.loop import train

    student = prepared.classifier()
    return student, train(config, student, frozen_copy(student), task or prepared.task(), **kwargs)


def interrupted_then_resumed(prepared, config, checkpoint: Path, *, stop_at: int, task=None):
    """Train until the evaluation at step ``stop_at`` is saved, stop there as a kill would, and resume from that
    checkpoint in a fresh run: ``(student, TrainResult)`` of the resumed run."""
    from robusttune.training.checkpoint import load_checkpoint, save_checkpoint

    class Interrupt(Exception):
        pass

    def stop(row):
        if row["step"] == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_run(prepared, config, task, save_checkpoint=lambda state: save_checkpoint(checkpoint, state), report=stop)
    return train_run(prepared, config, task, resume=load_checkpoint(checkpoint))


def assert_same_run(a, b) -> None:
    """Two ``(student, TrainResult)`` pairs with equal evaluations and bit-identical weights."""
    assert [r["metrics"] for r in a[1].history] == [r["metrics"] for r in b[1].history]
    for key, value in a[0].state_dict().items():
        assert torch.equal(value, b[0].state_dict()[key]), key


@pytest.fixture()
def small_fs(tmp_path):
    """``small_fs(megabytes)``: a fresh tmpfs of that size (only root can mount one; skipped otherwise), unmounted
    at the end of the test."""
    import os
    import subprocess

    mounted = []

    def mount(megabytes: int) -> Path:
        if os.geteuid() != 0:
            pytest.skip("a full disk is drilled on a small tmpfs, which only root can mount")
        place = tmp_path / f"fs{len(mounted)}"
        place.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(place)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(place)
        return place

    yield mount
    for place in mounted:
        subprocess.run(["umount", "-l", str(place)], capture_output=True)


@pytest.fixture()
def read_only(tmp_path):
    """``read_only(folder, keep=False)``: make ``folder`` (created if missing; its contents kept with ``keep``)
    read-only for this process: by permissions for a normal user, by a read-only mount for root (whom permissions
    do not stop). Undone at the end of the test."""
    import os
    import shutil
    import stat
    import subprocess

    undo = []

    def make(folder: Path, keep: bool = False) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            for path in [folder, *folder.rglob("*")]:
                path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
            undo.append(lambda: [p.chmod(p.stat().st_mode | stat.S_IWUSR) for p in [folder, *folder.rglob("*")]])
            return folder
        saved = tmp_path / f".kept-{folder.name}"
        if keep:
            shutil.copytree(folder, saved)
        for command in (["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)],
                        *([["cp", "-a", f"{saved}/.", str(folder)]] if keep else []),
                        ["mount", "-o", "remount,ro", str(folder)]):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", str(folder)], capture_output=True)
                pytest.skip(f"cannot make a read-only place here: {done.stderr.strip()}")
        undo.append(lambda: subprocess.run(["umount", "-l", str(folder)], capture_output=True))
        return folder

    yield make
    for step in reversed(undo):
        step()
