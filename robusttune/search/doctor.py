"""``robusttune doctor SPACE``: what a lab checks before it spends GPU-hours, one line per check, on this machine or
(``--address``) as Ray tasks on every node that can run the space's trials.

Each check is ``ok``, ``warn``, ``blocker`` (the sweep would fail or be wrong) or ``skip`` (nothing to check here):

* ``cuda``: the GPUs this process was given (Ray's ids in a task, ``CUDA_VISIBLE_DEVICES``, or the space's
  ``resources.gpu``) are usable by torch; else the one line of ``training.device.gpu_failure``,
* ``driver``: the NVIDIA driver against the oldest one torch's CUDA build runs on,
* ``gpu memory``: the GPU's memory against the memory model's peaks (``robusttune.search.memory``),
* ``all-reduce``: two ranks (NCCL on two GPUs, gloo otherwise) all-reduce 32 MB: its bus bandwidth,
* ``shm``: ``/dev/shm`` against what the trials' loaders keep there (``launch.loader_need``),
* ``disk``: free space where the experiments go against the trials' checkpoints,
* ``weights``: present (the file, or the tag in open_clip's cache) and their activation stated
  (``models.pretrained.check_activation``),
* ``data <folder>``: every folder or pack present (a pack's index valid),
* ``loader``: the training data's images/s read as a trial reads it.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from robusttune.errors import RobustTuneError

OK, WARN, BLOCKER, SKIP = "ok", "warn", "blocker", "skip"
ALL_REDUCE_BYTES = 32 * 2**20
ALL_REDUCE_SECONDS = 120  # the two ranks' whole run (start-up included) may take this long
SHM_PATH = "/dev/shm"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    node: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shared_memory_bytes(path: str = SHM_PATH) -> int | None:
    """Free bytes of the shared-memory mount (None without one)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------ GPUs


def check_cuda(space, assigned: list[str], source: str = "CUDA_VISIBLE_DEVICES") -> Check:
    import torch

    from robusttune.training.device import gpu_failure

    wanted = float(space.resources.gpu) > 0
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        return Check("cuda", OK, f"{torch.cuda.device_count()} GPU(s) usable by torch {torch.__version__}: "
                                 f"{', '.join(names)}" + (f" (assigned {','.join(assigned)})" if assigned else ""))
    if assigned:
        return Check("cuda", BLOCKER, gpu_failure("doctor", assigned=assigned, source=source))
    if wanted:
        return Check("cuda", BLOCKER, gpu_failure(f"the space's trials (resources.gpu: {space.resources.gpu:g})"))
    return Check("cuda", SKIP, "the space's trials use no GPU (resources.gpu: 0): they train on the CPU")


def check_driver() -> Check:
    import torch

    from robusttune.training.device import MIN_DRIVER, driver_version

    built = torch.version.cuda
    if built is None:
        return Check("driver", SKIP, f"torch {torch.__version__} is a CPU-only build")
    driver, driver_cuda = driver_version()
    major = int(built.split(".")[0])
    if driver is None:
        return Check("driver", SKIP, f"no NVIDIA driver on this machine (torch's CUDA {built} needs "
                                     f">= {MIN_DRIVER.get(major, '?')})")
    needs = MIN_DRIVER.get(major)
    have = int(driver.split(".")[0])
    if needs is not None and have < needs:
        return Check("driver", BLOCKER, f"NVIDIA driver {driver} is older than {needs}, the oldest torch's CUDA {built} "
                                        f"runs on: upgrade the driver (or the node's image)")
    return Check("driver", OK, f"NVIDIA driver {driver}" + (f" (CUDA {driver_cuda})" if driver_cuda else "")
                 + f" runs torch's CUDA {built}")


def check_memory(space, cache_dir: Path, gpu_memory: float | None) -> tuple[Check, Any]:
    """The memory model's peaks against the GPU (``gpu_memory`` bytes overrides this machine's GPU)."""
    import torch

    from robusttune.search.baselines import vanilla_config
    from robusttune.search.memory import GB, gpu_memory_of, memory_plan
    from robusttune.search.plan import method_mix

    where = None
    if gpu_memory is None:
        gpu_memory, where = gpu_memory_of(local=True)
    else:
        where = f"--gpu-memory {gpu_memory / GB:g}"
    configs = {key: config for key, (config, _) in method_mix(space).items()}
    configs["vanilla FT baseline"] = vanilla_config(space)
    found = memory_plan(space, configs, cache_dir, gpu_memory=gpu_memory, gpu=where,
                        on_gpu=gpu_memory is not None or torch.cuda.is_available() or float(space.resources.gpu) > 0)
    rows = [r for r in found.rows if r.modelled]
    largest = max(rows, key=lambda r: r.peak) if rows else None
    if gpu_memory is None:
        return Check("gpu memory", SKIP, "no GPU here" + (f"; the largest peak is {largest.method}'s "
                                                          f"{largest.peak / GB:.1f} GB" if largest else "")), found
    if not found.fits:
        more = f" (and {len(found.verdicts) - 1} more)" if len(found.verdicts) > 1 else ""
        return Check("gpu memory", BLOCKER, found.verdicts[0] + more), found
    return Check("gpu memory", OK, f"{where}: {gpu_memory / GB:.0f} GB; the largest peak is {largest.method}'s "
                                   f"{largest.peak / GB:.1f} GB" if largest else f"{where}: nothing modelled"), found


def _all_reduce_rank(rank: int, backend: str, init: str, size: int, out) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=2)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    tensor = torch.ones(size // 4, device=device)
    dist.all_reduce(tensor)  # warm-up (the rings are set up here)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started, repeats = time.perf_counter(), 5
    for _ in range(repeats):
        dist.all_reduce(tensor)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - started) / repeats
    ok = bool(tensor[0].item() == 2 ** (repeats + 1))
    dist.destroy_process_group()
    if rank == 0:
        out.put((seconds, ok))


def all_reduce_bandwidth(backend: str, folder: Path, size: int = ALL_REDUCE_BYTES) -> tuple[float, bool]:
    """``(bus bytes/s, values right)`` of two ranks all-reducing ``size`` bytes (for two ranks the bus bandwidth is
    bytes / seconds: each sends and receives half twice)."""
    context = multiprocessing.get_context("spawn")
    init = f"file://{folder / f'all-reduce-{os.getpid()}-{time.time_ns()}'}"
    out = context.Queue()
    ranks = [context.Process(target=_all_reduce_rank, args=(rank, backend, init, size, out), daemon=True)
             for rank in range(2)]
    for process in ranks:
        process.start()
    try:
        seconds, ok = out.get(timeout=ALL_REDUCE_SECONDS)
    finally:
        for process in ranks:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    return size / seconds, ok


def check_all_reduce(folder: Path) -> Check:
    import torch

    backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= 2 else "gloo"
    where = "two GPUs" if backend == "nccl" else "the CPU (one GPU or none: NCCL needs a GPU per rank)"
    try:
        rate, ok = all_reduce_bandwidth(backend, folder)
    except Exception as error:  # a rank that died, a queue that timed out
        return Check("all-reduce", BLOCKER, f"two {backend} ranks on {where} did not all-reduce: "
                                            f"{str(error).splitlines()[0][:200] if str(error) else type(error).__name__}")
    if not ok:
        return Check("all-reduce", BLOCKER, f"two {backend} ranks on {where} all-reduced wrong values")
    return Check("all-reduce", OK, f"{backend} on {where}: {rate / 1e9:.2f} GB/s bus bandwidth ({ALL_REDUCE_BYTES >> 20} MB)")


# ------------------------------------------------------------------------------------------------ host


def check_shm(space, shm_path: str) -> Check:
    from robusttune.search.launch import loader_need

    need = loader_need(space)
    if need is None:
        return Check("shm", SKIP, "in-memory data (the mini world): no loader workers")
    free = shared_memory_bytes(shm_path)
    trials = max(1, min(space.budget.concurrency, int(os.cpu_count() or 1) // max(1, int(space.resources.cpu))))
    wanted = need.bytes * trials * space.max_workers()
    if free is None:
        return Check("shm", BLOCKER, f"{shm_path}: no shared-memory mount; the loaders need {wanted / 1e9:.1f} GB")
    line = (f"{shm_path}: {free / 1e9:.1f} GB free; {trials} trial(s) here x {need.bytes / 1e9:.2f} GB "
            f"({need.describe()}) = {wanted / 1e9:.1f} GB")
    return Check("shm", BLOCKER if free < wanted else OK,
                 line + ("; DataLoader workers would fail with bus errors: raise --shm-size" if free < wanted else ""))


def check_disk(space, storage: Path, weights_bytes: int) -> Check:
    place = storage
    while not place.exists() and place != place.parent:
        place = place.parent
    free = shutil.disk_usage(place).free
    # a running trial's latest.pt (weights + AdamW's moments) and a best.pt, for each trial at once
    wanted = space.budget.concurrency * 5 * weights_bytes
    line = (f"{storage}: {free / 1e9:.1f} GB free; {space.budget.concurrency} running trial(s) x "
            f"{5 * weights_bytes / 1e9:.2f} GB of checkpoints = {wanted / 1e9:.1f} GB")
    return Check("disk", BLOCKER if free < wanted else OK, line + ("; free space or choose --storage" if free < wanted else ""))


def check_weights(space) -> Check:
    spec = space.task.imagenet
    if spec is None:
        return Check("weights", SKIP, "the mini world's tiny CLIP (made by 'robusttune world')")
    from robusttune.models.pretrained import check_activation, is_weights_file

    try:
        check_activation(spec.model, spec.pretrained, quick_gelu=getattr(spec, "quick_gelu", None))
    except RobustTuneError as error:
        return Check("weights", BLOCKER, str(error))
    if spec.pretrained in (None, "none"):
        return Check("weights", WARN, f"{spec.model} with random weights (pretrained: null): for tests only")
    if is_weights_file(spec.pretrained):
        path = Path(spec.pretrained).expanduser()
        if not path.is_file():
            return Check("weights", BLOCKER, f"{path}: weights file not found on this node")
        return Check("weights", OK, f"{path} ({path.stat().st_size / 1e6:.0f} MB) for {spec.model}, activation stated")
    from robusttune.models.clip import _cached_weights

    cached = _cached_weights(spec.model, spec.pretrained)
    if cached is None and not spec.allow_download:
        return Check("weights", BLOCKER, f"{spec.model}/{spec.pretrained} is not in open_clip's cache on this node and "
                                         f"allow_download is false: put the weights file on shared storage and name it")
    return Check("weights", OK, f"{spec.model}/{spec.pretrained}: " + (cached or "downloaded at start (allow_download)"))


def check_data(space) -> list[Check]:
    spec = space.task.imagenet
    if spec is None:
        return [Check("data", SKIP, "the mini world (in memory)")]
    from robusttune.data.packed import is_pack, open_pack

    folders = {"train": spec.train_dir, "val": spec.val_dir, **{name.value: path for name, path in spec.ood_dirs.items()}}
    checks = []
    for name, folder in folders.items():
        root = Path(folder)
        if not root.exists():
            checks.append(Check(f"data {name}", BLOCKER, f"{root} does not exist on this node"))
        elif is_pack(root):
            try:
                pack = open_pack(root)
                checks.append(Check(f"data {name}", OK, f"{root}: a {pack.index.get('encoding', 'raw')} pack, index valid"))
            except RobustTuneError as error:
                checks.append(Check(f"data {name}", BLOCKER, str(error)))
        elif not root.is_dir() or not any(p.is_dir() for p in root.iterdir()):
            checks.append(Check(f"data {name}", BLOCKER, f"{root}: neither a pack nor a folder of class folders"))
        else:
            checks.append(Check(f"data {name}", OK, f"{root}: a folder of class folders"))
    return checks


def check_loader(space, cache_dir: Path, data_ok: bool) -> Check:
    spec = space.task.imagenet
    if spec is None:
        return Check("loader", SKIP, "in-memory tensors")
    if not data_ok:
        return Check("loader", SKIP, "the training data is not here")
    from robusttune.models.clip import model_image_size, preprocess_for
    from robusttune.search.calibration import measure_loader
    from robusttune.training.device import Placement

    placement = Placement.of("auto")
    row = measure_loader(space, None, preprocess_for(model_image_size(spec.model)), 64, placement, cache_dir)
    if row.get("images_per_s") is None:
        return Check("loader", WARN, str(row.get("status")))
    return Check("loader", OK, f"{row['source']} with {row['num_workers']} worker(s): {row['images_per_s']:,.0f} images/s "
                               f"(robusttune plan SPACE --calibrate compares it with the step's)")


# ------------------------------------------------------------------------------------------------ all of them


def run_checks(space, cache_dir: Path, *, storage: Path, shm_path: str = SHM_PATH, gpu_memory: float | None = None,
               all_reduce: bool = True, assigned: list[str] | None = None) -> list[Check]:
    """Every check on this machine (or in this Ray task: ``assigned`` are Ray's GPU ids)."""
    from robusttune.training.device import visible_gpu_ids

    source = "CUDA_VISIBLE_DEVICES" if assigned is None else "Ray"  # who gave this process its GPUs
    assigned = list(visible_gpu_ids()) if assigned is None else assigned
    checks = [check_cuda(space, assigned, source), check_driver()]
    memory, found = check_memory(space, cache_dir, gpu_memory)
    checks.append(memory)
    checks.append(check_all_reduce(Path(cache_dir)) if all_reduce else Check("all-reduce", SKIP, "not asked"))
    checks.append(check_shm(space, shm_path))
    weights = max((r.parts.get("weights", 0) for r in found.rows), default=0)
    checks.append(check_disk(space, storage, weights))
    checks.append(check_weights(space))
    data = check_data(space)
    checks.extend(data)
    train_ok = not data or data[0].status == OK
    checks.append(check_loader(space, cache_dir, train_ok))
    return checks


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` (a Ray already initialised in this process is kept)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)


def run_on_ray(space, cache_dir: str, *, storage: str, gpu_memory: float | None, all_reduce: bool) -> list[Check]:
    """The checks as one Ray task per alive node that can run a trial (its CPUs and GPUs), each pinned to its node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cpu, gpu = float(space.resources.cpu), float(space.resources.gpu)

    def remote_checks(loaded) -> list[dict[str, Any]]:
        from robusttune.search.gpus import ray_gpu_ids

        node = ray.util.get_node_ip_address()
        found = run_checks(loaded, Path(cache_dir), storage=Path(storage), gpu_memory=gpu_memory,
                           all_reduce=all_reduce, assigned=ray_gpu_ids())
        return [{**c.to_dict(), "node": node} for c in found]

    task = ray.remote(remote_checks)
    refs, nodes = [], []
    for node in ray.nodes():
        resources = node.get("Resources") or {}
        if not node.get("Alive") or resources.get("CPU", 0) < cpu or resources.get("GPU", 0) < gpu:
            continue
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        refs.append(task.options(num_cpus=cpu, num_gpus=gpu, scheduling_strategy=strategy).remote(space))
        nodes.append(node.get("NodeManagerAddress", "?"))
    if not refs:
        return [Check("nodes", BLOCKER, f"no alive node of the cluster has a trial's {cpu:g} CPU(s) and {gpu:g} GPU(s)")]
    from robusttune.search.remote import ray_get

    found = []
    for rows in ray_get(refs):
        found.extend(Check(**row) for row in rows)
    return found
