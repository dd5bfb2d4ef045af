"""A trial given a GPU that torch cannot use fails at once, in one line, and nothing trains on the CPU: a local Ray
started with ``--num-gpus 1`` on a machine whose torch sees no GPU hands a ``resources: {gpu: 1}`` trial GPU id 0,
exactly as a node with too old a driver does. The test starts its own Ray head and stops only that one."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from helpers import processes_of, running
import torch
import yaml
from helpers import records, tiny_space

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a GPU here: no fake GPU can be planted")]

RAY = [sys.executable, "-m", "ray.scripts.scripts"]  # the `ray` CLI of this interpreter


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def fake_gpu_ray():
    """A local Ray head that believes it has one GPU (and 2 CPUs); yields its address; stops only it."""
    temp_dir = tempfile.mkdtemp(prefix="rtgpu", dir="/tmp")  # short: Ray puts sockets in it
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    start = subprocess.run([*RAY, "start", "--head", "--num-gpus", "1", "--num-cpus", "2", "--node-ip-address",
                            "127.0.0.1", "--port", str(port), f"--temp-dir={temp_dir}", "--include-dashboard=false",
                            "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        yield f"127.0.0.1:{port}", env
    finally:
        ours = processes_of(temp_dir)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in ours + processes_of(temp_dir):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 10
            while time.time() < deadline and any(running(p) for p in ours):
                time.sleep(0.2)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_trial_given_a_gpu_torch_cannot_use_fails_in_one_line_and_trains_nothing(fake_gpu_ray, tmp_path,
                                                                                    tiny_world_config, tiny_prepared,
                                                                                    cache_dir):
    address, env = fake_gpu_ray
    space = tiny_space(tiny_world_config, budget={"trials": 1, "concurrency": 1}, resources={"cpu": 1, "gpu": 1})
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    sweep = subprocess.run([sys.executable, "-m", "robusttune.cli", "sweep", str(tmp_path / "space.yaml"), "--address",
                            address, "--storage", str(tmp_path / "runs"), "--name", "gpu", "--json"],
                           env={**env, "ROBUSTTUNE_CACHE_DIR": str(cache_dir)}, capture_output=True, text=True,
                           timeout=600)
    experiment = tmp_path / "runs" / "gpu"
    rows = records(experiment)
    assert rows, sweep.stderr[-3000:]
    (final,) = [r for r in rows if r.get("final")]
    failure = final["failure"]
    assert final["status"] == "failed" and "\n" not in failure, failure
    assert failure.startswith(f"trial {final['trial_id']}: Ray assigned GPU(s) 0, but no CUDA device is visible to "
                              f"torch {torch.__version__} (built for CUDA {torch.version.cuda})"), failure
    assert "NVIDIA driver" in failure and "or run on the CPU (resources.gpu: 0 or device: cpu)" in failure
    # nothing trained: no evaluation, no step, no checkpoint, no baseline run (its task fails the same way)
    assert not any(r.get("step") for r in rows) and not any(r.get("evaluation") for r in rows)
    assert not [p for p in experiment.rglob("*.pt")], sorted(experiment.rglob("*.pt"))
    assert not [r for r in records(experiment, trials_only=False) if r.get("kind") in ("baseline", "wise")]
    # the baselines' task after the trials is given the GPU too: the sweep ends with the same line, not a traceback
    last = sweep.stderr.strip().splitlines()[-1]
    assert sweep.returncode == 2 and last.startswith("robusttune: error: the WiSE-FT baselines: Ray assigned GPU(s) 0, "
                                                     "but no CUDA device is visible to torch"), sweep.stderr[-3000:]
    assert "Traceback" not in sweep.stderr, sweep.stderr[-3000:]
    print(json.dumps({"returncode": sweep.returncode, "failure": failure, "last": last}))
