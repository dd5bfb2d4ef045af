"""A real autoscaling cluster on this machine: Ray's fake multinode provider, a head with 0 CPUs, workers of 1 CPU.

The test starts its own Ray head (and stops only that one): the sweep's 1-CPU trials make the autoscaler launch
worker nodes, the trials run on them, and the idle workers are released after the sweep.
"""

import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from helpers import processes_of, running

pytestmark = pytest.mark.slow

FAKE_CLUSTER = {
    "cluster_name": "robusttune-fake", "max_workers": 2, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "auth": {}, "docker": {},
    # the head's type must be named like the node `ray start --head` registers
    "available_node_types": {"ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
                             "worker": {"resources": {"CPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2}},
    "head_node_type": "ray.head.default", "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
    "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
    "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
}

RAY = [sys.executable, "-m", "ray.scripts.scripts"]  # the `ray` CLI of this interpreter

NODES = """
import json, ray
ray.init(logging_level="ERROR")  # RAY_ADDRESS names our head
print("NODES=" + json.dumps([{"id": n["NodeID"], "alive": n["Alive"], "cpu": n["Resources"].get("CPU", 0),
                              "head": "node:__internal_head__" in n["Resources"]} for n in ray.nodes()]), flush=True)
"""


@pytest.fixture(scope="module")
def fake_cluster(tmp_path_factory):
    """One fake cluster for this module's tests (the first ends with its workers released, as the second starts)."""
    import signal
    import tempfile

    tmp_path = tmp_path_factory.mktemp("fake-cluster")
    temp_dir = tempfile.mkdtemp(prefix="rtfake", dir="/tmp")  # short: Ray puts sockets in it
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "disabled",
           "RAY_ADDRESS": "127.0.0.1:6379"}  # 'auto' would look in the default temp dir
    config = tmp_path / "fake.yaml"
    config.write_text(yaml.safe_dump(FAKE_CLUSTER))
    start = subprocess.run([*RAY, "start", "--head", "--num-cpus=0", f"--autoscaling-config={config}", f"--temp-dir={temp_dir}",
                            "--include-dashboard=false", "--disable-usage-stats"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        yield env
    finally:  # stop only the processes of the cluster this test started
        ours = processes_of(temp_dir)  # collected before killing: orphans get re-parented
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in ours + processes_of(temp_dir):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(2)
        deadline = time.time() + 20  # a SIGKILLed process lingers until its parent (or init) reaps it
        while time.time() < deadline and (left := [pid for pid in ours + processes_of(temp_dir) if running(pid)]):
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        assert not left, f"processes of the fake cluster still running: {left}"


def all_nodes(env) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", NODES], env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("NODES=")]
    assert lines, out.stdout[-1000:] + out.stderr[-2000:]
    return json.loads(lines[-1].removeprefix("NODES="))


def alive_workers(env) -> list[str]:
    return [n["id"] for n in all_nodes(env) if n["alive"] and n["cpu"] > 0]


def test_sweep_scales_workers_up_and_back_down(fake_cluster, tmp_path, tiny_world_config, tiny_prepared, cache_dir):
    env = {**fake_cluster, "ROBUSTTUNE_CACHE_DIR": str(cache_dir)}
    assert alive_workers(env) == []  # starts from zero workers
    space = {"name": "fake", "task": {"world": tiny_world_config.to_dict()}, "sampler": {"name": "random", "seed": 0},
             "parameters": {"w_distill": {"type": "float", "low": 0.1, "high": 10.0, "log": True}},
             "fixed": {"steps": 4, "batch_size": 16, "eval_every": 2, "eval_batch_size": 128, "lr": 1e-3},
             "budget": {"trials": 4, "concurrency": 2}, "resources": {"cpu": 1}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    started = time.time()
    sweep = subprocess.run([sys.executable, "-m", "robusttune.cli", "sweep", str(tmp_path / "space.yaml"), "--address",
                            env["RAY_ADDRESS"],
                            # the 6 s idle timeout can release a worker as the next trial is placed on it: a
                            # trial on a node that goes away is retried, as `robusttune launch` sweeps are
                            "--storage", str(tmp_path / "runs"), "--name", "fake", "--max-failures", "2", "--json"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    summary = json.loads(sweep.stdout.strip().splitlines()[-1])
    assert summary["counts"]["complete"] == 4, (summary["counts"], sweep.stderr[-3000:])
    rows = [json.loads(line) for line in (tmp_path / "runs" / "fake" / "records.jsonl").read_text().splitlines()]
    used = {r["node_id"] for r in rows if r.get("node_id")}
    workers_after = alive_workers(env)
    assert used, "trials reported no node ids"
    # the head has 0 CPUs, so every 1-CPU trial ran on a worker the autoscaler launched (a released worker is
    # listed dead with no resources: tell the head by its marker resource, not by its CPU count)
    head = [n["id"] for n in all_nodes(env) if n["head"]]
    assert len(head) == 1
    assert not used & set(head)
    print(f"scaled up and ran 4 trials in {time.time() - started:.0f} s on {len(used)} worker node(s); alive now: {len(workers_after)}")
    deadline = time.time() + 120
    while alive_workers(env) and time.time() < deadline:  # idle workers are released (idle_timeout 6 s)
        time.sleep(3)
    assert alive_workers(env) == [], "idle workers were not released"
    print(f"back to 0 workers {time.time() - started:.0f} s after the sweep started")


def test_a_killed_worker_node_costs_at_most_one_evaluation(fake_cluster, tmp_path, tiny_world_config, tiny_prepared, cache_dir):
    import signal

    env = {**fake_cluster, "ROBUSTTUNE_CACHE_DIR": str(cache_dir)}
    space = {"name": "node-failure", "task": {"world": tiny_world_config.to_dict()}, "sampler": {"name": "random", "seed": 0},
             "parameters": {"w_distill": {"type": "float", "low": 0.1, "high": 10.0, "log": True}},
             "fixed": {"steps": 160, "batch_size": 16, "eval_every": 20, "eval_batch_size": 128, "lr": 1e-3},
             "budget": {"trials": 1, "concurrency": 1}, "resources": {"cpu": 1}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    records = tmp_path / "runs" / "nf" / "records.jsonl"
    sweep = subprocess.Popen([sys.executable, "-m", "robusttune.cli", "sweep", str(tmp_path / "space.yaml"), "--address",
                              env["RAY_ADDRESS"], "--storage", str(tmp_path / "runs"), "--name", "nf", "--max-failures", "2",
                              "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, victim = time.time() + 240, None
        while time.time() < deadline and victim is None:  # wait until the trial has reported twice
            time.sleep(0.5)
            rows = [json.loads(line) for line in records.read_text().splitlines()] if records.exists() else []
            running = [r for r in rows if r.get("status") == "running" and r.get("node_id")]
            if len(running) >= 2:
                victim = running[-1]
        assert victim is not None, "the trial never reported"
        raylets = processes_of("--node_id=" + victim["node_id"])  # that node's raylet and its workers
        assert raylets, "no raylet found for the trial's node"
        for pid in raylets:
            os.kill(pid, signal.SIGKILL)  # the worker node dies mid-trial
        out, err = sweep.communicate(timeout=400)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, err[-3000:]
    rows = [json.loads(line) for line in records.read_text().splitlines() if '"trial_id"' in line]
    assert any(r.get("retry") for r in rows), "the records do not show the retry"
    final = [r for r in rows if r.get("final")][-1]
    assert final["status"] == "complete" and final["step"] == 160
    # the trial may have gone on between our reading the records and the kill: its last step is in the records
    on_victim = [i for i, r in enumerate(rows) if r.get("node_id") == victim["node_id"] and "evaluation" in r]
    last_on_victim = rows[on_victim[-1]]["step"]
    after = [r for r in rows[on_victim[-1] + 1:] if r.get("node_id") and r["node_id"] != victim["node_id"]
             and "evaluation" in r]
    assert after, "the retry did not run on another node"
    # the retry starts by re-reporting the checkpoint it resumed from: the last one, at most one evaluation on
    first = after[0]["step"]
    assert last_on_victim <= first <= last_on_victim + 20 and first >= 40, (last_on_victim, first)
    print(f"node killed after step {last_on_victim}; the retry resumed from the checkpoint of step {first}")


def test_a_folder_no_worker_node_sees_stops_the_sweep_before_any_trial(fake_cluster, tmp_path, cache_dir):
    """The check runs where trials run (a 1-CPU worker the autoscaler starts: the head has no CPU)."""
    (tmp_path / "train").mkdir()
    space = {"name": "staged", "objective": {"metrics": ["id_val_acc", "id_acc"], "directions": ["max", "max"]},
             "task": {"imagenet": {"model": "ViT-B-32-quickgelu", "train_dir": str(tmp_path / "train"),
                                   "val_dir": str(tmp_path / "missing-val"),
                                   "pretrained": str(tmp_path / "weights" / "vit_b32.pt")}},
             "parameters": {"w_distill": {"type": "float", "low": 0.1, "high": 10.0, "log": True}},
             "budget": {"trials": 1, "concurrency": 1}, "resources": {"cpu": 1}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    env = {**fake_cluster, "ROBUSTTUNE_CACHE_DIR": str(cache_dir)}
    sweep = subprocess.run([sys.executable, "-m", "robusttune.cli", "sweep", str(tmp_path / "space.yaml"), "--address",
                            env["RAY_ADDRESS"], "--storage", str(tmp_path / "runs"), "--name", "staged", "--json"],
                           env=env, capture_output=True, text=True, timeout=600)
    error = sweep.stderr.strip().splitlines()[-1]
    assert sweep.returncode == 1, sweep.stderr[-2000:]
    assert error.startswith("robusttune: error: not visible from worker node ")
    assert f"val_dir {tmp_path / 'missing-val'}; pretrained weights {tmp_path / 'weights' / 'vit_b32.pt'} (every node" in error
    assert "train_dir" not in error  # the folder that exists is seen
    assert not (tmp_path / "runs" / "staged").exists()  # nothing ran: nothing is left behind
