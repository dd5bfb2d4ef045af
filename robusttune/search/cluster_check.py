"""What a cluster file must get right before its first trial, checked offline: for the Ray cluster launcher
(``cluster.yaml``) and for KubeRay (``k8s/raycluster.yaml``). ``robusttune launch`` runs the launcher checks before it
touches anything; ``tests/search/test_cluster_files.py`` runs both on every shipped file and on copies with one defect
planted each.

Errors (a cluster that cannot run the space's trials as written):

- an AMI that cannot run the pinned stack: Ray's ``latest_dlami`` (or no ImageId, which Ray replaces by it) resolves to
  an Ubuntu 18.04 DLAMI of the CUDA 11 era; torch 2.14.1 is a CUDA 13 build and needs an NVIDIA driver >= 580;
- no robusttune on the nodes: the stock ``rayproject/ray`` image has no torch 2.14.1, open_clip, optuna or
  robusttune, so ``ray exec ... robusttune data pack`` and the sweep's job fail unless setup installs them;
- token authentication asked for but not configured (launcher: ``RAY_AUTH_MODE=token`` on every ``ray start`` and
  the token file mounted; KubeRay: ``spec.authOptions.mode: token``, which reaches the autoscaler sidecar too);
- no node type that holds one whole trial: its CPUs and GPUs, and for a data-parallel trial every rank plus the
  trial's own waiting process (``WAITING_CPU``; the head has no CPU for it), else Ray spreads the ranks over nodes;
- a data-parallel trial that must span nodes where no node has EFA: NCCL would all-reduce over TCP;
- KubeRay: a worker pod without a memory ``emptyDir`` at ``/dev/shm`` (the container default is 64 MB).

Warnings (doubtful, not refused): every node start pip-installing the stack; ``/dev/shm`` below what the loaders keep
there (``launch.check_shared_memory``); an idle timeout shorter than a node's start, so that nodes are released
between the trials and the tail (baselines, merges). GPU memory is the memory model's (``robusttune.search.memory``,
which ``launch`` runs against the smallest GPU among the node types that can start).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from robusttune.space import SearchSpace

# The Tune trial's own process beside its Ray Train workers (robusttune.search.data_parallel.WAITING_CPU; repeated
# here so that checking a file imports no Ray).
WAITING_CPU = 0.01
MIN_IDLE_MINUTES = 15  # a node's start: boot, image pull (about 10 GB), the packs' copy to its disk
STOCK_IMAGE = re.compile(r"^(docker\.io/)?(rayproject|anyscale)/ray(-ml)?([:@]|$)")
RETIRED_AMIS = {"latest_dlami", ""}

# What AWS lists for the instance types the docs name: vCPUs, GPUs, GPU memory (GB each), host memory (GiB).
INSTANCES: dict[str, tuple[int, int, int, int]] = {
    "m6i.2xlarge": (8, 0, 0, 32), "m6i.4xlarge": (16, 0, 0, 64), "m7i.4xlarge": (16, 0, 0, 64),
    "g5.2xlarge": (8, 1, 24, 32), "g6e.2xlarge": (8, 1, 48, 64), "g6e.12xlarge": (48, 4, 48, 384),
    "p4d.24xlarge": (96, 8, 40, 1152), "p4de.24xlarge": (96, 8, 80, 1152),
    "p5.4xlarge": (16, 1, 80, 256), "p5.48xlarge": (192, 8, 80, 2048), "p5e.48xlarge": (192, 8, 141, 2048),
    "p5en.48xlarge": (192, 8, 141, 2048),
}



@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def extend(self, other: Findings) -> None:
        self.errors += other.errors
        self.warnings += other.warnings
        self.notes += other.notes


@dataclass(frozen=True)
class TrialShape:
    """What one trial of a space asks a node for."""

    cpu: float  # per rank
    gpu: float  # per rank
    ranks: int  # data-parallel workers of its largest trial (1: trains in its own process)
    model: str | None
    micro_batch: int | None  # images per rank per micro-batch (ImageNet tasks)

    @property
    def node_cpu(self) -> float:
        """CPUs one node must have free for the whole trial: every rank, plus the waiting process beside them."""
        return self.cpu * self.ranks + (WAITING_CPU if self.ranks > 1 else 0.0)

    @property
    def node_gpu(self) -> float:
        return self.gpu * self.ranks

    def describe(self) -> str:
        one = f"{{cpu: {self.cpu:g}, gpu: {self.gpu:g}}}"
        if self.ranks == 1:
            return f"a trial of {one}"
        return f"a trial of {self.ranks} workers x {one} + its waiting process ({WAITING_CPU} CPU)"


def trial_shape(space: SearchSpace) -> TrialShape:
    from robusttune.search.launch import _largest, loader_need

    fixed = int(space.fixed.get("workers", space.resources.workers))
    ranks = max(1, _largest(space, "workers", fixed))
    spec = space.task.imagenet
    need = loader_need(space) if spec is not None else None
    return TrialShape(float(space.resources.cpu), float(space.resources.gpu), ranks,
                      spec.model if spec is not None else None, need.train_batch if need is not None else None)


def fits(cpus: float, gpus: float, cpu: float, gpu: float) -> int:
    """How many requests of ``cpu``/``gpu`` a node of ``cpus``/``gpus`` holds."""
    counts = [math.floor(cpus / cpu + 1e-9)] if cpu > 0 else []
    if gpu > 0:
        counts.append(math.floor(gpus / gpu + 1e-9))
    return max(0, min(counts)) if counts else 0


# ------------------------------------------------------------------------------------------ the Ray cluster launcher


def _commands(config: dict, *keys: str) -> list[str]:
    return [str(c) for key in keys for c in (config.get(key) or [])]


def _installs_stack(commands: list[str]) -> bool:
    text = " ".join(commands)
    return "pip install" in text and ("torch==2.14.1" in text or "robusttune" in text or "install.sh" in text)


def has_efa(node: dict, docker: dict) -> bool:
    """EFA reaches the container: an EFA interface on the instance and its devices passed into Docker."""
    interfaces = (node.get("node_config") or {}).get("NetworkInterfaces") or []
    node_docker = node.get("docker") or {}
    options = " ".join(str(o) for o in [*(docker.get("run_options") or []),
                                        *(node_docker.get("worker_run_options", docker.get("worker_run_options")) or [])])
    return any(str(i.get("InterfaceType", "")).lower() == "efa" for i in interfaces) and "/dev/infiniband" in options


def check_launcher(config: dict, space: SearchSpace | None = None, *, token_auth: bool = True,
                   source: str = "cluster file") -> Findings:
    """The launcher config's AMI, image, installs, authentication and idle timeout, and, given a space, whether its
    node types hold the space's trials (CPUs, GPUs, EFA for trials that span nodes)."""
    found = Findings()
    types: dict[str, dict] = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    for name, node in types.items():
        image_id = str((node.get("node_config") or {}).get("ImageId", "")).strip()
        if image_id.lower() in RETIRED_AMIS:
            found.errors.append(
                f"{source}: node type {name}: ImageId {image_id or '(none)'} is Ray's default AMI, an Ubuntu 18.04 DLAMI "
                f"whose NVIDIA driver cannot run torch 2.14.1's CUDA 13 (driver >= 580 needed); name a current GPU AMI "
                f"(docs/guides/cluster.md: the AMI)")
    docker = config.get("docker") or {}
    image = str(docker.get("image") or docker.get("head_image") or "")
    setup = _commands(config, "setup_commands", "head_setup_commands")
    if not image or STOCK_IMAGE.match(image):
        what = f"the stock image {image}" if image else "no Docker image"
        if not _installs_stack(setup):
            found.errors.append(
                f"{source}: {what} and no setup command installs robusttune: the head cannot run `robusttune` "
                f"(`ray exec ... robusttune data pack`, status, report) and the sweep's job fails; use the project's "
                f"image (docker/Dockerfile) or install it in setup_commands")
        else:
            found.warnings.append(
                f"{source}: every node start installs the pinned stack ({what}; about 3.5 GB, 5-10 minutes per node, "
                f"again on every spot replacement); build docker/Dockerfile and name it in docker.image")
    if token_auth:
        for key in ("head_start_ray_commands", "worker_start_ray_commands"):
            starts = [c for c in _commands(config, key) if "ray start" in c]
            if not starts or not all("RAY_AUTH_MODE=token" in c for c in starts):
                found.errors.append(f"{source}: {key} start Ray without RAY_AUTH_MODE=token, but the job client uses "
                                    f"token authentication; add it (or launch with --no-token-auth)")
        if not any(str(k).rstrip("/").endswith(".ray/auth_token") for k in (config.get("file_mounts") or {})):
            found.errors.append(f"{source}: file_mounts do not put the token file (~/.ray/auth_token) on the nodes, "
                                f"so no node can authenticate")
    idle = config.get("idle_timeout_minutes", 5)
    if isinstance(idle, int | float) and idle < MIN_IDLE_MINUTES:
        found.warnings.append(
            f"{source}: idle_timeout_minutes is {idle:g}: nodes go away between the trials and the baselines after "
            f"them and start again (boot, image pull, packs' copy: 10-20 minutes each); {MIN_IDLE_MINUTES} or more")
    if space is not None:
        # the node types that can start (max_workers: 0 takes a type out, e.g. the A100s for a ViT-L/14 sweep)
        workers = {name: node for name, node in types.items()
                   if name != head and node.get("max_workers", config.get("max_workers", 1)) != 0}
        nodes = {name: (float((node.get("resources") or {}).get("CPU", 0)), float((node.get("resources") or {}).get("GPU", 0)),
                        (node.get("node_config") or {}).get("InstanceType"), has_efa(node, docker))
                 for name, node in workers.items()}
        found.extend(check_fit(space, nodes, source))
    return found


def check_fit(space: SearchSpace, nodes: dict[str, tuple[float, float, str | None, bool]], source: str) -> Findings:
    """Whether the node types (name: (CPUs, GPUs, instance type, EFA)) hold the space's trials."""
    found = Findings()
    shape = trial_shape(space)
    runs_rank = {n: v for n, v in nodes.items() if fits(v[0], v[1], shape.cpu, shape.gpu) > 0}
    whole = {n: v for n, v in nodes.items() if v[0] + 1e-9 >= shape.node_cpu and v[1] + 1e-9 >= shape.node_gpu}
    if not runs_rank:
        found.errors.append(f"space '{space.name}': no worker node type of {source} holds {shape.describe()}; "
                            f"node types: " + ", ".join(f"{n} {{CPU: {v[0]:g}, GPU: {v[1]:g}}}" for n, v in nodes.items()))
        return found
    if shape.ranks > 1 and not whole:
        without = sorted(n for n, v in runs_rank.items() if not v[3])
        if without:
            found.errors.append(
                f"space '{space.name}': no node type of {source} holds {shape.describe()} on one node, so Ray would "
                f"spread its ranks over several nodes, and {', '.join(without)} has no EFA: NCCL would all-reduce over "
                f"TCP (as slow as the step itself, or slower); add a node type that holds the whole trial (e.g. "
                f"p5.48xlarge) or EFA (docs/guides/cluster.md: multi-node trials)")
    for name, (cpus, gpus, instance, _) in sorted(nodes.items()):
        if instance in INSTANCES:
            vcpus, real_gpus, _, _ = INSTANCES[instance]
            if cpus > vcpus or gpus > real_gpus:
                found.errors.append(f"{source}: node type {name} advertises {{CPU: {cpus:g}, GPU: {gpus:g}}} but a "
                                    f"{instance} has {vcpus} vCPUs and {real_gpus} GPUs: trials would wait for ever")
    return found


# ------------------------------------------------------------------------------------------------------- KubeRay


def _quantity(value: Any) -> float:
    """A Kubernetes quantity as a number (CPUs, GPUs, or bytes)."""
    text = str(value).strip()
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    for unit, scale in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


def _pods(manifest: dict) -> list[tuple[str, dict, dict]]:
    spec = manifest.get("spec") or {}
    pods = [("head", spec.get("headGroupSpec") or {}, ((spec.get("headGroupSpec") or {}).get("template") or {}).get("spec") or {})]
    pods += [(g.get("groupName", "?"), g, (g.get("template") or {}).get("spec") or {}) for g in spec.get("workerGroupSpecs") or []]
    return pods


def check_kuberay(manifest: dict, space: SearchSpace | None = None, *, source: str = "RayCluster manifest") -> Findings:
    """A KubeRay RayCluster's images, token auth, idle timeout, /dev/shm and, given a space, its worker groups
    against the space's trials."""
    from robusttune.search.launch import loader_need

    found = Findings()
    spec = manifest.get("spec") or {}
    auth = spec.get("authOptions") or {}
    if auth.get("mode") != "token":
        envs = {e.get("name") for _, _, pod in _pods(manifest) for c in pod.get("containers") or [] for e in c.get("env") or []}
        hint = " (RAY_AUTH_MODE on the Ray containers alone leaves the autoscaler sidecar without the token)" \
            if "RAY_AUTH_MODE" in envs else ""
        found.errors.append(f"{source}: spec.authOptions.mode is not token{hint}; set authOptions: {{mode: token, "
                            f"secretName: ...}} (KubeRay >= 1.5.1)")
    idle = (spec.get("autoscalerOptions") or {}).get("idleTimeoutSeconds", 60)
    if spec.get("enableInTreeAutoscaling") and idle < MIN_IDLE_MINUTES * 60:
        found.warnings.append(f"{source}: autoscalerOptions.idleTimeoutSeconds is {idle}: pods go away between the "
                              f"trials and the baselines after them; {MIN_IDLE_MINUTES * 60} or more")
    need = loader_need(space) if space is not None else None
    shape = trial_shape(space) if space is not None else None
    nodes = {}
    for name, group, pod in _pods(manifest):
        containers = pod.get("containers") or []
        if not containers:
            found.errors.append(f"{source}: {name}: no containers")
            continue
        ray = containers[0]
        image = str(ray.get("image", ""))
        if STOCK_IMAGE.match(image) or not image:
            found.errors.append(f"{source}: {name} runs {image or 'no image'}, which has no torch 2.14.1, open_clip, "
                                f"optuna or robusttune; use the project's image (docker/Dockerfile)")
        if name == "head":
            continue
        limits = (ray.get("resources") or {}).get("limits") or {}
        cpus, gpus = _quantity(limits.get("cpu", 0)), _quantity(limits.get("nvidia.com/gpu", 0))
        nodes[name] = (cpus, gpus, None, False)
        mounts = {m.get("mountPath"): m.get("name") for m in ray.get("volumeMounts") or []}
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        shm = volumes.get(mounts.get("/dev/shm")) if "/dev/shm" in mounts else None
        if shm is None or (shm.get("emptyDir") or {}).get("medium") != "Memory":
            found.errors.append(f"{source}: worker group {name} has no memory emptyDir at /dev/shm: the container's "
                                f"64 MB would end the DataLoader workers with bus errors")
        elif need is not None and shape is not None:
            size = _quantity((shm.get("emptyDir") or {}).get("sizeLimit", "0"))
            on_pod = min(fits(cpus, gpus, shape.cpu, shape.gpu), space.budget.concurrency * shape.ranks)
            store = float((group.get("rayStartParams") or {}).get("object-store-memory", 0))
            wanted = on_pod * need.bytes + store
            if size < wanted:
                found.warnings.append(f"{source}: worker group {name}: /dev/shm sizeLimit {size / 1e9:.1f} GB is below "
                                      f"its trials' loaders + object store, {wanted / 1e9:.1f} GB")
    if space is not None and nodes:
        found.extend(check_fit(space, nodes, source))
    return found
