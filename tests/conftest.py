"""Shared fixtures: a per-session cache directory, the small, fast test world, the session's local Ray with its
faults armed, and places that fail (a full disk, a read-only folder). Helpers that are not fixtures: helpers.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import Faults, kill_9_when_ready

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
def tiny_run(tmp_path_factory, tiny_world_config, tiny_prepared, cache_dir) -> Path:
    """A 2-step ``robusttune train`` run on the tiny world (its folder: final.pt, checkpoint.pt, ...); read it only."""
    import robusttune as rt

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    summary = rt.train({"steps": 2, "batch_size": 16, "eval_batch_size": 256}, task={"world": tiny_world_config.to_dict()},
                       out=out, cache_dir=cache_dir)
    assert summary.status == "complete"
    return out


@pytest.fixture(scope="session")
def default_world_data(cache_dir):
    from robusttune.config import default_world
    from robusttune.data.mini.world import load_world

    return load_world(default_world(), cache_dir)


@dataclass(frozen=True)
class NanLoss:
    """A fault armed in the session's Ray: a run trained at learning rate ``lr`` gets a NaN loss at ``step``."""

    lr: float  # a rate no other test uses, so that only the runs meant to fail do
    step: int


NAN_MIDWAY, NAN_AT_START = NanLoss(lr=0.00234, step=3), NanLoss(lr=0.00345, step=0)  # at start: before any evaluation


@pytest.fixture(scope="session")
def nan_midway(ray_local) -> NanLoss:
    """Trials at ``nan_midway.lr`` in the session's Ray diverge at step 3, after their first evaluation."""
    return NAN_MIDWAY


@pytest.fixture(scope="session")
def nan_at_start(ray_local) -> NanLoss:
    """Trials at ``nan_at_start.lr`` in the session's Ray diverge at step 0, before their first evaluation."""
    return NAN_AT_START


@pytest.fixture(scope="session")
def faults() -> Faults:
    """``faults.nan_loss((step, lr))``, ``faults.kill_after_final(n)``: environments that arm a fault in a subprocess."""
    return Faults()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for every in-process sweep of the session, with the NaN faults armed."""
    import os

    import ray

    if ray.is_initialized():  # a test that should have asked for this fixture started its own
        ray.shutdown()
    saved = dict(os.environ)
    os.environ.update(Faults.nan_loss(*((f.step, f.lr) for f in (NAN_MIDWAY, NAN_AT_START))))  # inherited by the raylet, hence by every worker
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield
    ray.shutdown()


@pytest.fixture()
def kill_9_when():
    """``kill_9_when(args, env, ready, timeout=..., never=...)``: a CLI subprocess killed with -9 once ready()."""
    return kill_9_when_ready


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
