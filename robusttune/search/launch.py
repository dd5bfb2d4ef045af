"""``robusttune launch``: bring a Ray cluster up and submit a sweep to it as a Ray job.

The plan is a list of shell commands (``ray up``, a dashboard port-forward, ``ray job submit --working-dir .``);
``--dry-run`` prints them and touches nothing. The sweep runs on the head node with ``--address auto`` and writes
to shared storage that every node mounts (the experiment's records, journal and checkpoints are files). Each worker
node type's ``/dev/shm`` is checked against what the space's trials keep there (``check_shared_memory``).
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from robusttune.errors import ConfigError, LaunchError
from robusttune.space import SearchSpace

DASHBOARD = "http://127.0.0.1:8265"


@dataclass(frozen=True)
class LaunchPlan:
    up: list[str]
    dashboard: list[str]
    submit: list[str]
    env: dict[str, str]
    follow: str
    status: str
    fetch: list[str]
    resume: str
    down: str


def check_cluster_file(path: Path) -> dict:
    """Read the cluster-launcher YAML and validate it with Ray's own schema."""
    if not path.is_file():
        raise ConfigError(f"{path}: cluster config not found")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    from robusttune.search.ray_compat import validate_cluster_config

    try:
        validate_cluster_config(config)
    except Exception as error:  # jsonschema / ValueError messages
        raise ConfigError(f"{path}: not a valid Ray cluster config: {str(error).splitlines()[0][:200]}") from None
    return config


TOKEN_FILE = "~/.ray/auth_token"  # Ray's default token path, here and on the nodes (cluster.yaml mounts it)


def plan(space: str, cluster: Path, *, name: str, storage: str, token_auth: bool, max_failures: int) -> LaunchPlan:
    quote = shlex.quote
    experiment = f"{storage.rstrip('/')}/{name}"
    retries = ["--max-failures", str(max_failures)]  # spot nodes go away: a trial resumes from its checkpoint
    sweep = ["robusttune", "sweep", space, "--name", name, "--address", "auto", "--storage", storage, *retries]
    env = {"RAY_ADDRESS": DASHBOARD}
    if token_auth:
        env["RAY_AUTH_MODE"] = "token"
    # The job installs the uploaded checkout on the head (same version as here); workers import it from the
    # job's working directory, which Ray ships to every node.
    entrypoint = f"pip install --quiet --no-deps . && {shlex.join(sweep)}"
    submit = ["ray", "job", "submit", "--address", DASHBOARD, "--submission-id", name, "--working-dir", ".", "--no-wait",
              "--", "bash", "-c", entrypoint]
    resume = shlex.join(["robusttune", "resume", experiment, "--address", "auto", *retries])
    return LaunchPlan(
        up=["ray", "up", "-y", str(cluster)],
        dashboard=["ray", "dashboard", str(cluster)],
        submit=submit,
        env=env,
        follow=f"ray job logs {quote(name)} --address {DASHBOARD} --follow",
        status=f"ray exec {quote(str(cluster))} {quote(f'robusttune status {experiment}')}",
        fetch=[f"ray exec {quote(str(cluster))} {quote(f'robusttune report {experiment}')}",
               f"ray rsync-down {quote(str(cluster))} {quote(experiment + '/report/')} {quote('./report-' + name + '/')}"],
        resume=(f"ray job submit --address {DASHBOARD} --working-dir . -- bash -c "
                + quote(f"pip install --quiet --no-deps . && {resume}")),
        down=f"ray down -y {quote(str(cluster))}",
    )


def render(p: LaunchPlan, *, token_auth: bool) -> list[str]:
    env = " ".join(f"{k}={v}" for k, v in p.env.items())
    lines = []
    if token_auth:
        lines += ["# 0. the cluster's token (Ray token authentication): made here once, mounted on every node",
                  "ray get-auth-token --generate"]
    lines += ["# 1. start (or update) the cluster", shlex.join(p.up),
              "# 2. forward the dashboard (job API, bound to the head's loopback) to this machine; keep it running",
              shlex.join(p.dashboard) + " &"]
    lines += ["# 3. submit the sweep as a Ray job (the working directory travels with it)", f"{env} {shlex.join(p.submit)}",
              "# follow it", p.follow, "# trials table", p.status, "# fetch the report", *p.fetch,
              "# resume after an interruption", p.resume, "# tear the cluster down (results stay on the shared storage)", p.down]
    return lines


def execute(p: LaunchPlan, *, token_auth: bool, wait_s: float = 120) -> None:
    """Run the plan: ``ray up``, a background port-forward, then the job submission."""
    def run(command: list[str], env: dict[str, str] | None = None) -> None:
        result = subprocess.run(command, env={**os.environ, **(env or {})})
        if result.returncode != 0:
            raise LaunchError(f"'{shlex.join(command)}' failed with exit code {result.returncode}")

    if token_auth and not Path(TOKEN_FILE).expanduser().is_file():
        run(["ray", "get-auth-token", "--generate"])
    run(p.up)
    forward = subprocess.Popen(p.dashboard, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + wait_s
        while True:  # the port-forward takes a moment
            try:
                run(p.submit, p.env)
                return
            except LaunchError:
                if time.time() > deadline:
                    raise
                time.sleep(5)
    finally:
        forward.terminate()


# ------------------------------------------------------------------------------------------ shared memory (/dev/shm)
#
# A DataLoader worker hands each batch it has ready to the trial through shared memory: a uint8 batch of B images of
# 3 x H x W bytes. Each of a trial's W workers keeps `prefetch_factor` (4) batches ready, for the training loader and,
# while an evaluation runs (the training loader's batches stay queued meanwhile), for the evaluation loader too:
#
#     per trial   W x prefetch x (train micro-batch + eval batch) x 3 x H x W bytes
#     per node    the trials (ranks) the node runs at once x per trial
#
# The paper space (ViT-B/32 at 224 px, batch 512, eval batch 512, 8 workers): 8 x 4 x 1024 x 150,528 B = 4.93 GB per
# trial, 39.5 GB for the 8 trials of an 8-GPU node. Ray's object store lives in /dev/shm too (a sweep puts little
# there: checkpoints and records are files); cluster.yaml caps it with --object-store-memory and the check adds it.

SHM_SIZE = re.compile(r"--shm-size[= ]+['\"]?(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?['\"]?(?=\s|$)", re.IGNORECASE)
DOCKER_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}  # docker's sizes are binary
OBJECT_STORE = re.compile(r"--object-store-memory[= ]+(\d+)")


def loader_shm_bytes(workers: int, prefetch: int, train_batch: int, eval_batch: int, image_bytes: int) -> int:
    """Shared memory one training process's data loaders hold at their peak (the formula above)."""
    return workers * prefetch * (train_batch + eval_batch) * image_bytes


@dataclass(frozen=True)
class LoaderNeed:
    """What one trial (one rank of a data-parallel trial) keeps in shared memory."""

    workers: int
    prefetch: int
    train_batch: int  # images per training micro-batch (of one rank)
    eval_batch: int
    image_bytes: int

    @property
    def bytes(self) -> int:
        return loader_shm_bytes(self.workers, self.prefetch, self.train_batch, self.eval_batch, self.image_bytes)

    def describe(self) -> str:
        return (f"{self.workers} workers x prefetch {self.prefetch} x ({self.train_batch} + {self.eval_batch}) images "
                f"x {self.image_bytes:,} B")


def _largest(space: SearchSpace, key: str, fixed: int) -> int:
    """The largest value ``key`` takes in the space's trials (its fixed value when it is not searched)."""
    parameter = space.parameters.get(key)
    if parameter is None:
        return fixed
    if parameter.choices is not None:
        numbers = [int(c) for c in parameter.choices if isinstance(c, int | float) and not isinstance(c, bool)]
        return max(numbers, default=fixed)
    return int(parameter.high)


def loader_need(space: SearchSpace) -> LoaderNeed | None:
    """The shared memory the space's largest trial (one rank of it) keeps; None for in-memory data (the mini world)."""
    spec = space.task.imagenet
    if spec is None:
        return None
    from robusttune.data.sets import Loading, loader_workers
    from robusttune.models.clip import model_image_size

    config = space.trial_config({}, seed=0)
    ranks = space.max_workers()  # data-parallel ranks of one trial
    accum = 1 if "accum_steps" in space.parameters else config.accum_steps
    micro = -(-_largest(space, "batch_size", config.batch_size) // accum)
    eval_batch = _largest(space, "eval_batch_size", config.eval_batch_size)
    size = model_image_size(spec.model)
    height, width = (size, size) if isinstance(size, int) else size
    return LoaderNeed(workers=loader_workers(spec.num_workers, int(space.resources.cpu)),
                      prefetch=Loading().prefetch_factor, train_batch=-(-micro // ranks),
                      eval_batch=-(-eval_batch // ranks), image_bytes=3 * height * width)


def shm_size_bytes(options: list) -> int | None:
    """The ``--shm-size`` docker run options set (the last one wins, as in docker); None without one."""
    sizes = [int(float(m.group(1)) * DOCKER_UNITS[m.group(2).lower()])
             for m in SHM_SIZE.finditer(" ".join(str(o) for o in options or []))]
    return sizes[-1] if sizes else None


def ranks_per_node(node_resources: dict, cpu: float, gpu: float) -> int:
    """How many trials (ranks) of ``cpu`` CPUs and ``gpu`` GPUs a node with ``node_resources`` runs at once."""
    counts = [math.floor(float(node_resources.get("CPU", 0)) / cpu + 1e-9)]
    if gpu > 0:
        counts.append(math.floor(float(node_resources.get("GPU", 0)) / gpu + 1e-9))
    return max(0, min(counts))


@dataclass(frozen=True)
class ShmCheck:
    notes: list[str]  # one line per worker node type that runs trials
    warnings: list[str]  # one line per node type whose /dev/shm is below what its trials' loaders keep there


def check_shared_memory(space: SearchSpace, cluster: dict, source: str = "cluster file") -> ShmCheck:
    """Each worker node type's docker ``--shm-size`` against what the trials it runs keep in shared memory."""
    need = loader_need(space)
    docker = cluster.get("docker") or {}
    if need is None or not docker:  # in-memory data, or no containers (the host's own /dev/shm)
        return ShmCheck([], [])
    ranks = space.max_workers()
    # Ray's object store on a worker node, when its start command caps it (else it takes what /dev/shm has left)
    stores = [int(m.group(1)) for command in cluster.get("worker_start_ray_commands") or []
              for m in OBJECT_STORE.finditer(str(command))]
    store = stores[-1] if stores else 0
    notes, warnings = [], []
    for name, node in (cluster.get("available_node_types") or {}).items():
        if name == cluster.get("head_node_type"):
            continue
        on_node = min(ranks_per_node(node.get("resources") or {}, space.resources.cpu, space.resources.gpu),
                      space.budget.concurrency * ranks)
        if on_node == 0:
            continue  # this node type runs none of the space's trials
        loaders = on_node * need.bytes
        wanted = loaders + store
        node_docker = node.get("docker") or {}
        options = [*(docker.get("run_options") or []),
                   *(node_docker.get("worker_run_options", docker.get("worker_run_options")) or [])]
        size = shm_size_bytes(options)
        line = (f"node type {name}: {on_node} {'trial' if ranks == 1 else 'trial rank'}(s) x {need.bytes / 1e9:.2f} GB "
                f"({need.describe()}) = {loaders / 1e9:.1f} GB"
                + (f" + Ray's object store {store / 1e9:.1f} GB = {wanted / 1e9:.1f} GB" if store else "")
                + " of shared memory")
        if size is None:
            notes.append(f"{line}; no --shm-size, so Ray sizes /dev/shm to about 30% of the node's memory")
        elif size < wanted:
            warnings.append(f"{source}: {line}, but its --shm-size is {size / 1e9:.1f} GB: DataLoader workers would "
                            f"fail with bus errors; raise --shm-size (docs/guides/clusters.md)")
        else:
            notes.append(f"{line}; --shm-size {size / 1e9:.1f} GB")
    return ShmCheck(notes, warnings)
