"""``doctor``: every check a lab runs before it spends GPU-hours (``robusttune.search.doctor``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robusttune.api.common import cache_directory
from robusttune.errors import ParameterError
from robusttune.space import load_space


@dataclass
class DoctorResult:
    checks: list[dict[str, Any]]  # name, status (ok | warn | blocker | skip), detail, node ('' here)
    blockers: int = 0
    where: str = "this machine"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"checks": self.checks, "blockers": self.blockers, "where": self.where, **self.extra}


def doctor(space: str | os.PathLike[str], *, address: str | None = None, storage: str | os.PathLike[str] = "runs",
           cache_dir: str | os.PathLike[str] | None = None, gpu_memory: float | None = None, all_reduce: bool = True,
           shm_path: str | None = None) -> DoctorResult:
    """Run every check of ``robusttune.search.doctor`` for ``space`` here, or with ``address`` as Ray tasks on each
    node that can run its trials (a Ray already initialised in this process is used as it is). ``gpu_memory``
    (GB) stands for the GPU's; ``shm_path``: the shared-memory mount to check (default ``/dev/shm``)."""
    from robusttune.search import doctor as checks

    loaded, _ = load_space(str(space))
    if gpu_memory is not None and not gpu_memory > 0:
        raise ParameterError("gpu_memory", f"must be > 0 GB, got {gpu_memory}")
    memory = None if gpu_memory is None else gpu_memory * 1e9
    cache = cache_directory(cache_dir)
    if address is None:
        found = checks.run_checks(loaded, cache, storage=Path(storage), shm_path=shm_path or checks.SHM_PATH,
                                  gpu_memory=memory, all_reduce=all_reduce)
        where = "this machine"
    else:
        checks.connect(address)
        found = checks.run_on_ray(loaded, str(cache), storage=str(storage), gpu_memory=memory, all_reduce=all_reduce)
        where = f"the Ray cluster at {address}"
    rows = [c.to_dict() for c in found]
    return DoctorResult(rows, sum(r["status"] == checks.BLOCKER for r in rows), where)
