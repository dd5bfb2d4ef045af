"""A Ray worker given GPUs it cannot use fails at once, before it builds anything (``check_ray_gpus``).

Ray hands a trial or task the GPU ids it reserved (``ray.get_gpu_ids()``) whether or not torch can use them: on a
node whose NVIDIA driver is older than the one torch's CUDA needs, ``torch.cuda.is_available()`` is False while the
trial holds a GPU id. Every Ray entry point that may hold GPUs (a trial, a data-parallel worker, the baselines', merges'
and confirmation's tasks) calls this first, so that such a run fails in one line (``training.device.gpu_failure``)
instead of building the zero-shot head and training on the CPU.
"""

from __future__ import annotations


def ray_gpu_ids() -> list[str]:
    """The GPU ids Ray assigned to this worker (none in a driver or outside Ray)."""
    import ray

    if not ray.is_initialized():
        return []
    try:
        return [str(i) for i in ray.get_gpu_ids()]
    except Exception:  # not a worker (a driver), or no connection: nothing was assigned here
        return []


def check_ray_gpus(what: str) -> None:
    """Raise ``ConfigError`` (one line naming ``what``) when Ray gave this worker GPUs that torch cannot use."""
    from robusttune.training.device import check_gpus

    check_gpus(ray_gpu_ids(), source="Ray", what=what)
