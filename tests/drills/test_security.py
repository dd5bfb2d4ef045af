"""Nothing a user did not produce is ever unpickled: every loader is weights-only, and a test would notice if one
were not (the hostile file below does run code under a plain ``torch.load``)."""

from pathlib import Path

import pytest
import torch

from robusttune.errors import CheckpointError, DataError


class _Payload:
    """Unpickling this runs code: it creates the marker file. A weights-only loader must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def hostile_checkpoint(tmp_path: Path, name: str) -> tuple[Path, Path]:
    marker = tmp_path / f"{name}.executed"
    path = tmp_path / f"{name}.pt"
    torch.save({"format": "robusttune.checkpoint/1", "model": {}, "evil": _Payload(marker)}, path)
    return path, marker


def test_every_loader_refuses_a_checkpoint_that_would_run_code(tmp_path):
    from robusttune.config import tiny_test_world
    from robusttune.models.clip import create_clip
    from robusttune.models.tiny import load_tiny_clip
    from robusttune.training.checkpoint import load_checkpoint

    world = tiny_test_world()
    loaders = {
        "checkpoint": load_checkpoint,
        "clip": lambda path: create_clip("ViT-B-32", str(path), quick_gelu=False),
        "tiny": lambda path: load_tiny_clip(path, world.model, image_size=world.image_size),
    }
    for name, load in loaders.items():
        path, marker = hostile_checkpoint(tmp_path, name)
        with pytest.raises((CheckpointError, DataError)):
            load(path)
        assert not marker.exists(), f"{name}: loading ran code from the file (weights_only lost?)"
    # the control: the same file (written by this test, nobody else's) does run code under an unsafe torch.load,
    # so the checks above could fail
    path, marker = hostile_checkpoint(tmp_path, "control")
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_the_cached_world_loader_refuses_a_file_that_would_run_code(tmp_path):
    from robusttune.config import tiny_test_world
    from robusttune.data.mini.world import load_world, world_dir

    config = tiny_test_world()
    folder = world_dir(config, tmp_path)
    folder.mkdir(parents=True)
    marker = tmp_path / "world.executed"
    torch.save({"evil": _Payload(marker)}, folder / "data.pt")
    try:
        load_world(config, tmp_path)  # a corrupt cache is regenerated, never trusted
    except Exception:
        pass
    assert not marker.exists()


def test_a_local_sweeps_ray_keeps_token_auth_and_runs_no_dashboard(tmp_path):
    """What guards a local sweep's Ray: its default token authentication stays on and no dashboard (HTTP job API)
    is started. (Ray 2.60 binds GCS and raylet to every interface whatever node IP it is given, so a loopback-only
    check cannot pass; these two are what robusttune controls.)"""
    import os
    import subprocess
    import sys

    code = """
from robusttune.search.stopping import StopSignals
from robusttune.search.sweep import _init_ray
import ray
from ray._private.authentication.authentication_utils import is_token_auth_enabled
_init_ray(None, StopSignals(None))
dashboard = ray.get_runtime_context().gcs_address and ray._private.worker.global_worker.node.address_info.get("webui_url")
print("AUTH=" + str(is_token_auth_enabled()), "DASHBOARD=" + str(bool(dashboard)))
ray.shutdown()
"""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env,
                            cwd=tmp_path)
    line = next((l for l in result.stdout.splitlines() if l.startswith("AUTH=")), None)
    assert line == "AUTH=True DASHBOARD=False", result.stdout[-500:] + result.stderr[-2000:]
