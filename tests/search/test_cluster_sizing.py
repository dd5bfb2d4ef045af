"""Cluster files sized for their trials: whole GPUs above one, the trials a local machine really runs at once, the
data loaders' shared memory (the formula, and ``launch --dry-run``'s check of each node type's ``--shm-size``), and
``num_workers`` tied to the trial's CPUs. Fast: no Ray cluster starts."""

import logging
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, invoke

IMAGE_224 = 3 * 224 * 224


def tiny_space(tmp_path: Path, **sections) -> Path:
    space = {"name": "sized", "task": {"world": {"name": "tiny"}}, "fixed": {"steps": 4},
             "budget": {"trials": 4, "concurrency": 1}, "resources": {"cpu": 1}, **sections}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def test_a_gpu_share_above_one_must_be_whole(tmp_path, cache_dir):
    from robusttune.config import parse
    from robusttune.errors import ConfigError
    from robusttune.space import SearchSpace

    for gpu in (0.25, 0.5, 1):  # a fraction of one GPU, or one GPU: what a trial's process uses
        assert parse(SearchSpace, {"resources": {"gpu": gpu}}, "s").resources.gpu == gpu
    with pytest.raises(ConfigError, match=r"resources.gpu is 2, .* give resources \{gpu: 1, workers: 2\}"):
        parse(SearchSpace, {"resources": {"gpu": 2}}, "s")  # more GPUs are more workers
    with pytest.raises(ConfigError, match="resources.gpu: above 1 must be a whole number of GPUs"):
        parse(SearchSpace, {"resources": {"gpu": 2.5}}, "s")
    # through the CLI: one line, exit 2, before anything is created
    space = tiny_space(tmp_path, resources={"cpu": 1, "gpu": 1.5})
    result = invoke("sweep", space, cwd=tmp_path, env={"ROBUSTTUNE_CACHE_DIR": str(cache_dir)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "resources.gpu: above 1 must be a whole number of GPUs" in lines[0] and "1.5" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]


def check(space_path: Path, *, concurrency: int, trials: int = 48):
    from robusttune.search.sweep import SweepOptions, check_runnable
    from robusttune.space import load_space

    space, _ = load_space(str(space_path))
    return check_runnable(space, SweepOptions(trials=trials, concurrency=concurrency, seed=0))


def test_concurrency_beyond_the_machine_says_how_many_trials_run_at_once(tmp_path, monkeypatch, caplog):
    import torch

    import robusttune.search.sweep as sweep

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 16)
    space = tiny_space(tmp_path, resources={"cpu": 8})
    with caplog.at_level(logging.WARNING, logger="robusttune.search.sweep"):
        assert check(space, concurrency=8) == 2  # 8 asked for, 16 CPUs hold 2 trials of 8
    [record] = [r for r in caplog.records if r.name == "robusttune.search.sweep"]
    assert record.levelno == logging.WARNING and "\n" not in record.getMessage()
    assert "8 trials at a time asked for" in record.getMessage() and "2 will run at once" in record.getMessage()
    # the case: a 16-core 8-GPU machine runs 2 trials of {cpu: 8, gpu: 1}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    caplog.clear()
    gpu_space = tiny_space(tmp_path, resources={"cpu": 8, "gpu": 1})
    with caplog.at_level(logging.WARNING, logger="robusttune.search.sweep"):
        assert check(gpu_space, concurrency=8) == 2
    assert "16 CPU(s) and 8 GPU(s) fit 2 trial(s) of 8 CPU(s) + 1 GPU(s)" in caplog.text
    # GPUs bound it too: 4 trials of half a GPU on 2 GPUs... and 16 CPUs of 1 each
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check(tiny_space(tmp_path, resources={"cpu": 1, "gpu": 0.5}), concurrency=8) == 4
    # what fits says nothing and runs as asked (at most the budget)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robusttune.search.sweep"):
        assert check(space, concurrency=2) == 2
        assert check(space, concurrency=8, trials=1) == 1
    assert caplog.records == []
    # on a cluster this machine says nothing about it
    from robusttune.search.sweep import SweepOptions, check_runnable
    from robusttune.space import load_space

    assert check_runnable(load_space(str(space))[0], SweepOptions(trials=4, concurrency=8, seed=0, address="auto")) is None


def test_the_shared_memory_formula():
    from robusttune.search.launch import loader_need, loader_shm_bytes, ranks_per_node, shm_size_bytes
    from robusttune.space import load_space

    # workers x prefetch x (train + eval batch) x 3 x H x W bytes: the paper space is 4.93 GB per trial
    assert loader_shm_bytes(8, 4, 512, 512, IMAGE_224) == 8 * 4 * 1024 * 150_528 == 4_932_501_504
    need = loader_need(load_space("paper")[0])
    assert (need.workers, need.prefetch, need.train_batch, need.eval_batch, need.image_bytes) == (8, 4, 512, 512, IMAGE_224)
    assert need.bytes == 4_932_501_504
    assert loader_need(load_space("demo")[0]) is None  # in-memory images: no loader workers, no shared memory
    # trials per node: what its CPUs and GPUs both hold
    assert ranks_per_node({"CPU": 96, "GPU": 8}, 8, 1) == 8 and ranks_per_node({"CPU": 16, "GPU": 8}, 8, 1) == 2
    assert ranks_per_node({"CPU": 8, "GPU": 1}, 8, 1) == 1 and ranks_per_node({"CPU": 8}, 8, 1) == 0
    # docker sizes are binary; the last --shm-size wins
    assert shm_size_bytes(["--ulimit nofile=1:1", "--shm-size=16g"]) == 16 * 2**30
    assert shm_size_bytes(["--shm-size", "512m"]) == 512 * 2**20 and shm_size_bytes(["--shm-size='123.5b'"]) == 123
    assert shm_size_bytes(["--shm-size=16g", "--shm-size=1GiB"]) == 2**30 and shm_size_bytes(["--volume=/a:/a"]) is None


def test_num_workers_default_follows_the_trial_cpus():
    import torch

    from robusttune.config import ImageNetTask
    from robusttune.data.sets import loader_workers

    assert ImageNetTask(train_dir="a", val_dir="b").num_workers is None  # auto
    assert [loader_workers(None, cpus) for cpus in (1, 2, 8, 9, 64)] == [0, 1, 7, 8, 8]
    assert loader_workers(3, 64) == 3 and loader_workers(0, 64) == 0  # given: as given
    assert loader_workers(None) == max(0, min(torch.get_num_threads() - 1, 8))  # a trial sets torch's threads to its CPUs


def dry_run(cluster: Path, cwd: Path):
    return invoke("launch", "paper", "--cluster", cluster, "--storage", "/mnt/efs/runs", "--name", "p1", "--dry-run",
                  cwd=cwd, env={"PATH": "/nonexistent"})


def test_launch_dry_run_checks_each_node_types_shared_memory(tmp_path):
    shipped = dry_run(ROOT / "cluster.yaml", tmp_path)
    assert shipped.returncode == 0 and "warning" not in shipped.stderr, shipped.stderr
    notes = [line for line in shipped.stdout.splitlines() if line.startswith("# node type")]
    assert len(notes) == 3, shipped.stdout
    assert any("gpu_1x: 1 trial(s)" in line and "--shm-size 12.9 GB" in line for line in notes)
    for eight in ("a100_8x", "h100_8x"):
        assert any(f"{eight}: 8 trial(s)" in line and "= 39.5 GB + Ray's object store 4.0 GB = 43.5 GB" in line
                   for line in notes)
    # the same file with a 1 GB /dev/shm on the A100 nodes: one warning line naming the node type and the need
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["available_node_types"]["a100_8x"]["docker"]["worker_run_options"] = ["--shm-size=1g"]
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(config, sort_keys=False))
    doctored = dry_run(small, tmp_path)
    assert doctored.returncode == 0, doctored.stderr  # a warning, not a refusal
    [warning] = doctored.stderr.strip().splitlines()
    assert "warning" in warning and "a100_8x" in warning and "43.5 GB" in warning and "--shm-size is 1.1 GB" in warning
    assert "gpu_1x" not in warning and "h100_8x" not in warning
    # one --shm-size=16g for every node warns for the 8-GPU types only
    for name in ("a100_8x", "h100_8x", "gpu_1x"):
        config["available_node_types"][name].pop("docker")
    config["docker"]["run_options"].append("--shm-size=16g")
    small.write_text(yaml.safe_dump(config, sort_keys=False))
    old = dry_run(small, tmp_path)
    lines = old.stderr.strip().splitlines()
    assert len(lines) == 2 and all("17.2 GB" in line for line in lines) and "gpu_1x" not in old.stderr


def test_cluster_files_give_trials_a_40_gb_gpu_and_their_shared_memory():
    from robusttune.search.launch import check_shared_memory, loader_need, ranks_per_node
    from robusttune.space import load_space

    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = cluster["available_node_types"]
    # the default single-GPU type is an L40S (48 GB), the 8-GPU types 8x A100 and 8x H100; ViT-L/14 runs
    # data-parallel on the H100s (tests/search/test_cluster_files.py checks each type against its trials)
    assert types["gpu_1x"]["node_config"]["InstanceType"] == "g6e.2xlarge" and types["gpu_1x"]["resources"]["GPU"] == 1
    assert types["a100_8x"]["node_config"]["InstanceType"] == "p4d.24xlarge"
    assert types["h100_8x"]["node_config"]["InstanceType"] == "p5.48xlarge"
    assert "workers: 8" in (ROOT / "cluster.yaml").read_text()
    paper = load_space("paper")[0]
    assert check_shared_memory(paper, cluster).warnings == []
    # worker nodes: the EFS mount, then the node-local copy of the packs, before Ray starts there
    for name in ("gpu_1x", "a100_8x", "h100_8x"):
        commands = types[name]["initialization_commands"]
        assert commands[0] == cluster["initialization_commands"][0] and "mount" in commands[0]
        assert any("rsync" in c and "/mnt/efs/data/" in c and "/mnt/local/data/" in c for c in commands[1:])
    assert "--volume=/mnt/local:/mnt/local" in cluster["docker"]["run_options"]
    # KubeRay: a memory emptyDir at /dev/shm in every worker pod, as large as its trials' loaders + the object store
    manifest = yaml.safe_load((ROOT / "k8s" / "raycluster.yaml").read_text())
    need = loader_need(paper).bytes
    for group in manifest["spec"]["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        container = pod["containers"][0]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        [shm] = [v for v in pod["volumes"] if v["name"] == "dshm"]
        assert shm["emptyDir"]["medium"] == "Memory"
        size = int(shm["emptyDir"]["sizeLimit"].removesuffix("Gi")) * 2**30
        limits = container["resources"]["limits"]
        trials = ranks_per_node({"CPU": int(limits["cpu"]), "GPU": int(limits["nvidia.com/gpu"])}, 8, 1)
        store = int(group["rayStartParams"]["object-store-memory"])
        assert size >= trials * need + store, group["groupName"]
