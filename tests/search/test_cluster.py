"""Cluster configs validated the way Ray and KubeRay read them, and ``robusttune launch --dry-run``."""

import re

import yaml
from helpers import ROOT, invoke



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
    # launched clusters authenticate, and a trial whose (spot) node dies is retried, also after a resume
    assert "ray get-auth-token --generate" in lines and "RAY_AUTH_MODE=token" in submit
    assert "--max-failures 3" in submit
    assert any("robusttune resume /mnt/efs/runs/p1 --address auto --max-failures 3" in line for line in lines)
    plain = launch("paper", "--cluster", ROOT / "cluster.yaml", "--storage", "/mnt/efs/runs", "--name", "p1", "--dry-run",
                   "--no-token-auth", "--max-failures", "0", cwd=tmp_path)
    assert plain.returncode == 0 and "get-auth-token" not in plain.stdout and "RAY_AUTH_MODE" not in plain.stdout
    assert "--max-failures 0" in plain.stdout


def test_cluster_files_authenticate_and_hold_no_secrets():
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    for commands in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        assert "RAY_AUTH_MODE=token" in start
    head = next(c for c in cluster["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head  # reached through a port-forward only
    assert cluster["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"  # the token file, not the token
    manifest = yaml.safe_load((ROOT / "k8s" / "raycluster.yaml").read_text())
    spec = manifest["spec"]
    # KubeRay's own token auth: it puts RAY_AUTH_MODE and RAY_AUTH_TOKEN (from the Secret) into every container, the
    # autoscaler sidecar included; no container sets them by hand (the sidecar would not get them)
    assert spec["authOptions"] == {"mode": "token", "secretName": "robusttune-ray-token"}
    containers = [spec["headGroupSpec"]["template"]["spec"]["containers"][0]]
    containers += [group["template"]["spec"]["containers"][0] for group in spec["workerGroupSpecs"]]
    for container in containers:
        assert not {e["name"] for e in container.get("env", [])} & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
    for path in (ROOT / "cluster.yaml", ROOT / "k8s" / "raycluster.yaml"):
        text = path.read_text().lower()
        assert not any(secret in text for secret in ("aws_secret_access_key", "aws_access_key_id", "password:")), path
        assert not re.search(r"(auth_token|ray_auth_token)['\"]?\s*[:=]\s*['\"]?[a-z0-9_-]{16,}", text), path  # no token


def test_launch_rejects_bad_input(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: x\nmax_workers: -3\nprovider: {type: aws}\n")
    cases = [
        (["paper", "--cluster", tmp_path / "missing.yaml", "--storage", "/mnt/x", "--dry-run"], "cluster config not found"),
        (["paper", "--cluster", bad, "--storage", "/mnt/x", "--dry-run"], "not a valid Ray cluster config"),
        (["paper", "--cluster", ROOT / "cluster.yaml", "--storage", "relative/runs", "--dry-run"], "--storage must be an absolute path"),
        (["nope", "--cluster", ROOT / "cluster.yaml", "--storage", "/mnt/x", "--dry-run"], "unknown search space 'nope'"),
        (["paper", "--cluster", ROOT / "cluster.yaml", "--storage", "/mnt/x", "--max-failures", "-1", "--dry-run"],
         "--max-failures must be >= 0"),
        (["paper", "--cluster", ROOT / "cluster.yaml", "--storage", "/mnt/x", "--name", "a b;rm", "--dry-run"],
         "experiment name must be a plain folder name"),
    ]
    for args, expected in cases:
        result = launch(*args, cwd=tmp_path)
        assert result.returncode == 2 and expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
