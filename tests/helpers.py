"""What the tests share besides fixtures (those are in conftest.py): running the CLI in this process or as a
subprocess, the one-line exit-2 assertion, folder snapshots, the fault-injection environment, and train-and-resume
helpers. Imported as ``from helpers import ...`` (pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent  # the repository
FAULTS = Path(__file__).resolve().parent / "faults"


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def invoke(*args, cache_dir: Path | None = None, cwd: Path | None = None, env: dict[str, str] | None = None) -> CliResult:
    """``robusttune ARGS`` run in this process (``main([...])``): the exit code and what it printed. For commands
    where a subprocess adds nothing; the drills that kill the driver keep real subprocesses."""
    import contextlib
    import io
    import os

    from robusttune.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.update({**(env or {}), **({"ROBUSTTUNE_CACHE_DIR": str(cache_dir)} if cache_dir is not None else {})})
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


def run_cli(*args, cache_dir: Path | None = None, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """``robusttune ARGS`` as a real subprocess (``python -m robusttune.cli``), for what a process boundary
    changes: exit codes through the shell, signals, environment, imports."""
    full = {**os.environ, **(env or {})}
    if cache_dir is not None:
        full["ROBUSTTUNE_CACHE_DIR"] = str(cache_dir)
    return subprocess.run([sys.executable, "-m", "robusttune.cli", *map(str, args)], capture_output=True, text=True,
                          env=full, cwd=cwd, timeout=timeout)


def in_cache(cache_dir: Path, **env: str) -> dict[str, str]:
    """The environment that points robusttune at ``cache_dir`` (plus ``env``)."""
    return {"ROBUSTTUNE_CACHE_DIR": str(cache_dir), **env}


def assert_one_line_exit_2(result, expected: str) -> None:
    """Bad input: exit code 2, one line on stderr that contains ``expected``, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes (to assert that a refused command touched nothing)."""
    # the experiment's lock file stays once made (never unlinked, so that it excludes): it is not a change
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def _with_faults(env: dict[str, str]) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(FAULTS), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, **env}


class Faults:
    """Environments that arm tests/faults/sitecustomize.py in a subprocess and in the Ray workers it starts."""

    @staticmethod
    def nan_loss(*faults: tuple[int, float | None]) -> dict[str, str]:
        """The training loss turns NaN at ``step`` in runs with learning rate ``lr`` (every run when None), for
        each ``(step, lr)``."""
        import json

        return _with_faults({"ROBUSTTUNE_TEST_NAN": json.dumps([{"step": s, "lr": lr} for s, lr in faults])})

    @staticmethod
    def kill_after_final(trials: int) -> dict[str, str]:
        """The sweep driver kills itself (SIGKILL) right after the records got the ``trials``-th trial's end."""
        return _with_faults({"ROBUSTTUNE_TEST_KILL_AFTER_FINAL": str(trials)})


def kill_9_when_ready(args, env, ready, *, timeout: float, never: str) -> None:
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
        _wait_until_gone(driver.pid)


def _wait_until_gone(group: int, timeout: float = 30.0) -> None:
    """Wait until every process of the killed group has exited: a forked child (a data loader's worker) shares
    the driver's open files, its experiment lock included, until it is gone, and a resume started before then is
    refused as 'in use' (a user reruns once the processes are gone; a test must wait for that too). A zombie has
    closed its files: it counts as gone (nobody may reap it in a container)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and _live_members(group):
        time.sleep(0.1)


def _live_members(group: int) -> list[int]:
    """The processes of process group ``group`` that are not zombies (from /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == group and fields[0] != "Z":  # fields after the name: state, ppid, pgrp, ...
            members.append(int(stat.parent.name))
    return members


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
    """Two ``(student, TrainResult)`` pairs with equal evaluations and bit-identical weights (the method's own
    weights too, e.g. FLYP's text tower)."""
    assert [r["metrics"] for r in a[1].history] == [r["metrics"] for r in b[1].history]
    for key, value in a[0].state_dict().items():
        assert torch.equal(value, b[0].state_dict()[key]), key
    assert (a[1].method_state is None) == (b[1].method_state is None)
    for key, value in (a[1].method_state or {}).items():
        assert torch.equal(value, b[1].method_state[key]), f"method_state {key}"


# ------------------------------------------------------------------------------------------------ sweeps


def tiny_space(tiny_world_config, **overrides):
    """A search space on the tiny world: 3 random trials of 4 steps, 2 evaluations each (``overrides`` replace keys)."""
    space = {
        "name": "tiny",
        "task": {"world": tiny_world_config.to_dict()},
        "objective": {"metrics": ["id_val_acc", "ood_mean"], "directions": ["max", "max"]},
        "sampler": {"name": "random", "seed": 0},
        "parameters": {"w_distill": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
                       "region": {"type": "categorical", "choices": ["object", "none"]}},
        "fixed": {"steps": 4, "batch_size": 16, "eval_every": 2, "eval_batch_size": 128, "lr": 1e-3},
        "budget": {"trials": 3, "concurrency": 1},
        "resources": {"cpu": 2},
    }
    space.update(overrides)
    return space


def write_space(path: Path, space: dict) -> Path:
    path.write_text(yaml.safe_dump(space))
    return path


def records(experiment: Path, *, trials_only: bool = True):
    """Rows of records.jsonl; by default only trial rows (not the baseline/WiSE-FT rows, which have no trial_id)."""
    from robusttune.experiment import read_records

    rows = list(read_records(experiment))  # the one reader: a torn line is skipped, never glued to the next
    return [r for r in rows if "trial_id" in r] if trials_only else rows


# ------------------------------------------------------------------------------------------------ data


def v2_folder(root, classes=(0, 5, 999), per_class=3):
    """An ImageNet-V2-style folder (class index as folder name) of odd-sized random images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in classes:
        (root / str(cls)).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            size = (int(rng.integers(30, 60)), int(rng.integers(30, 60)), 3)
            Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(root / str(cls) / f"{j}.jpg", quality=95)
    return root


def train_config(**flat):
    """A TrainConfig spelled flat, knobs beside the common settings (``train_config(region="none", lr=1e-3)``), as
    a search space spells a trial: the knobs go under the method (``robusttune.config.with_method``)."""
    from robusttune.config import TrainConfig, with_method

    return TrainConfig.model_validate(with_method(flat))


# ------------------------------------------------------------------ a synthetic continuous benchmark

SYNTHETIC_EVALUATIONS, SYNTHETIC_NOISE_SD = 3, 0.01
SYNTHETIC_SPACE = {
    "name": "synthetic_continuous",
    "objective": {"metrics": ["id_val_acc", "ood_mean"], "directions": ["max", "max"]},
    "sampler": {"name": "random", "seed": 0},
    "parameters": {
        "method": {"type": "categorical", "choices": ["ft", "l2sp"]},
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "strength": {"type": "float", "low": 1e-3, "high": 1.0, "log": True, "when": {"method": ["l2sp"]}},
    },
    "fixed": {"steps": 30, "eval_every": 10},
    "budget": {"trials": 8, "concurrency": 1},
    "scheduler": {"name": "none"},
}


def synthetic_truth(config, evaluation):
    """A known landscape: ID rises with lr and training, OOD falls with lr; L2-SP's strength trades ID for OOD."""
    import math

    x = (math.log10(config["lr"]) + 4) / 2  # 0..1
    pull = (math.log10(config["strength"]) + 3) / 3 if config["method"] == "l2sp" else 0.0
    progress = evaluation / SYNTHETIC_EVALUATIONS
    return 0.80 + 0.15 * x * progress - 0.05 * pull, 0.85 - 0.20 * x * progress + 0.08 * pull * x


def synthetic_points_table(path, points=120, repeated=12, seeds=3):
    """A points table of the known landscape; the first ``repeated`` points at ``seeds`` seeds, each seed's curve
    shifted by one N(0, SYNTHETIC_NOISE_SD) offset per metric (fully correlated along the curve)."""
    import numpy as np
    import pandas as pd
    import yaml

    from robusttune.bench.surrogate import random_config
    from robusttune.bench.table import FORMAT, write_table
    from robusttune.config import parse
    from robusttune.space import SearchSpace

    space = parse(SearchSpace, SYNTHETIC_SPACE, "synthetic")
    rng = np.random.default_rng(0)
    rows = []
    for point in range(points):
        config = random_config(space, rng)
        for seed in range(seeds if point < repeated else 1):
            offset = rng.normal(0.0, SYNTHETIC_NOISE_SD, size=2)
            for evaluation in range(1, SYNTHETIC_EVALUATIONS + 1):
                id_val, ood = synthetic_truth(config, evaluation)
                rows.append({"point": point, "seed": seed, "method": config["method"], "lr": config["lr"],
                             "strength": config.get("strength"), "evaluation": evaluation, "step": 10 * evaluation,
                             "epoch": 0.5 * evaluation, "id_val_acc": id_val + offset[0], "ood_mean": ood + offset[1],
                             "time_s": 2.0 * evaluation + (1.0 if config["method"] == "l2sp" else 0.0),
                             "status": "complete" if evaluation == SYNTHETIC_EVALUATIONS else "running"})
    meta = {"format": FORMAT, "kind": "points", "space": SYNTHETIC_SPACE["name"], "space_yaml": yaml.safe_dump(SYNTHETIC_SPACE),
            "grid": None, "points": points, "evaluations": SYNTHETIC_EVALUATIONS, "objective": SYNTHETIC_SPACE["objective"],
            "metrics": ["id_val_acc", "ood_mean"], "seeds": list(range(seeds)), "noise_points": repeated}
    return write_table(pd.DataFrame(rows), meta, path)


def processes_of(marker: str) -> list[int]:
    """The processes whose command line names ``marker`` (e.g. a Ray head's own temp dir), and their descendants:
    what a test that started a cluster must see gone once it stopped it."""
    parents, roots = {}, []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stream:
                parents[int(entry)] = int(stream.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as stream:
                if marker.encode() in stream.read():
                    roots.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    found, changed = set(roots), True
    while changed:
        changed = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.add(pid)
                changed = True
    return sorted(found)


def running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; it only waits for its parent to read its status)."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
