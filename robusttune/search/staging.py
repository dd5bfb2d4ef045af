"""Before any trial of a cluster sweep starts: can a worker node see what trials need? The dataset folders (or
packs), the weights (a local file, or a pretrained tag's weights in open_clip's cache on the node unless the space
allows downloads), and the experiment's storage (records, checkpoints and the Optuna journal are files
every node must share). One Ray task with the trials' own resources runs where a trial would (the autoscaler starts
such a node if none is up) and looks; a missing path stops the sweep with one line naming it."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from robusttune.errors import SweepError
from robusttune.space import SearchSpace

TIMEOUT_ENV = "ROBUSTTUNE_WORKER_CHECK_TIMEOUT_S"  # default 900: a GPU node may take minutes to come up


def required_paths(space: SearchSpace) -> list[tuple[str, str]]:
    """``(what, path)`` for every file or folder the space's trials read."""
    spec = space.task.imagenet
    if spec is None:
        return []  # the mini world is generated (and cached) on each node
    paths = [("train_dir", spec.train_dir), ("val_dir", spec.val_dir)]
    paths += [(f"ood_dirs.{name.value}", path) for name, path in sorted(spec.ood_dirs.items())]
    pretrained = spec.pretrained or ""
    if pretrained and (Path(pretrained).suffix or os.sep in pretrained):
        paths.append(("pretrained weights", pretrained))
    return paths


def cached_tag(space: SearchSpace) -> tuple[str, str] | None:
    """``(model, tag)`` when the space's trials load a pretrained tag's weights from open_clip's cache (a tag, no
    downloads allowed): each node that runs trials must hold them."""
    spec = space.task.imagenet
    if spec is None or not spec.pretrained or spec.pretrained == "none" or spec.allow_download:
        return None
    if Path(spec.pretrained).suffix or os.sep in spec.pretrained:
        return None  # a file: required_paths
    return spec.model, spec.pretrained


def tag_missing(tag: tuple[str, str] | None) -> str | None:
    """What is missing on this node for ``cached_tag``'s weights (None: present, or nothing to check)."""
    if tag is None:
        return None
    from robusttune.models.clip import _cached_weights

    model, name = tag
    try:
        found = _cached_weights(model, name)
    except Exception:  # an unknown tag: the trial says so in its own words
        return None
    if found is None:
        return (f"pretrained weights {model}/{name} (not in open_clip's cache on this node: name a local weights file "
                f"on shared storage, see the recipe in the paper space, or allow_download)")
    return None


def _look(paths: list[tuple[str, str]], probe: str, tag: tuple[str, str] | None = None) -> tuple[str, list[str]]:
    import ray

    missing = [f"{what} {path}" for what, path in paths if not os.path.exists(path)]
    weights = tag_missing(tag)
    if weights is not None:
        missing.append(weights)
    if not os.path.exists(probe):
        missing.append(f"the experiment storage {os.path.dirname(probe)}")
    return ray.get_runtime_context().get_node_id(), missing


def check_worker_visibility(space: SearchSpace, experiment: Path) -> None:
    """Raise ``SweepError`` unless a node that runs trials sees every required path and the experiment directory."""
    import ray
    from ray.exceptions import GetTimeoutError

    probe = Path(experiment).resolve() / f".visible-{uuid.uuid4().hex}"
    probe.write_text("written by the sweep driver; a worker node checks it can see it\n")
    timeout = float(os.environ.get(TIMEOUT_ENV, "900"))
    task = ray.remote(num_cpus=space.resources.cpu, num_gpus=space.resources.gpu, max_retries=0)(_look)
    ref = task.remote(required_paths(space), str(probe), cached_tag(space))
    try:
        node, missing = ray.get(ref, timeout=timeout)
    except GetTimeoutError:
        ray.cancel(ref, force=True)
        raise SweepError(f"no node with a trial's resources ({space.resources.cpu:g} CPU, {space.resources.gpu:g} GPU) "
                         f"came up within {timeout:.0f} s to check the data and storage; check the cluster's node types "
                         f"(or set {TIMEOUT_ENV})") from None
    finally:
        probe.unlink(missing_ok=True)
    if missing:
        raise SweepError(f"not visible from worker node {node[:12]}: {'; '.join(missing)} (every node must mount them: "
                         f"see docs/guides/clusters.md)")
