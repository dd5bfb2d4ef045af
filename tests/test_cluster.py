"""Cluster configs validated the way Ray and KubeRay read them, and ``robusttune launch --dry-run``."""

from pathlib import Path

import yaml
from conftest import invoke

ROOT = Path(__file__).resolve().parent.parent


def test_cluster_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(config)  # raises on any schema violation
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert all(v["min_workers"] == 0 and v["resources"].get("GPU", 0) >= 1 for v in workers.values())
    assert config["available_node_types"][config["head_node_type"]]["resources"]["CPU"] == 0
    text = (ROOT / "cluster.yaml").read_text().lower()
    assert "aws_secret_access_key" not in text and "aws_access_key_id" not in text  # no secrets in the file


def test_kuberay_manifest_structure():
    manifest = yaml.safe_load((ROOT / "k8s" / "raycluster.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayCluster"
    spec = manifest["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 < group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert any(m["mountPath"] == "/mnt/runs" for m in container["volumeMounts"])


def launch(*args, cwd):
    """``robusttune launch ARGS`` in this process, with a PATH where no ``ray`` can be found (nothing may run)."""
    return invoke("launch", *args, cwd=cwd, env={"PATH": "/nonexistent"})


def test_launch_dry_run_prints_the_plan_and_touches_nothing(tmp_path):
    # PATH without `ray`: a dry run must not execute anything
    result = launch("paper", "--cluster", ROOT / "cluster.yaml", "--storage", "/mnt/efs/runs", "--name", "p1", "--dry-run",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"ray up -y {ROOT / 'cluster.yaml'}" in lines
    submit = next(line for line in lines if line.startswith("RAY_ADDRESS=") and "ray job submit" in line)
    assert "--working-dir ." in submit and "--submission-id p1" in submit
    assert "robusttune sweep paper --name p1 --address auto --storage /mnt/efs/runs" in submit
    assert any(line.startswith("ray down -y") for line in lines) and any("robusttune resume /mnt/efs/runs/p1" in l for l in lines)
    assert list(tmp_path.iterdir()) == []


def test_launch_rejects_bad_input(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: x\nmax_workers: -3\nprovider: {type: aws}\n")
    cases = [
        (["paper", "--cluster", tmp_path / "missing.yaml", "--storage", "/mnt/x", "--dry-run"], "cluster config not found"),
        (["paper", "--cluster", bad, "--storage", "/mnt/x", "--dry-run"], "not a valid Ray cluster config"),
        (["paper", "--cluster", ROOT / "cluster.yaml", "--storage", "relative/runs", "--dry-run"], "--storage must be an absolute path"),
        (["nope", "--cluster", ROOT / "cluster.yaml", "--storage", "/mnt/x", "--dry-run"], "unknown search space 'nope'"),
    ]
    for args, expected in cases:
        result = launch(*args, cwd=tmp_path)
        assert result.returncode == 2 and expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
