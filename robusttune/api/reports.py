"""Reading an experiment or a space: ``report`` (the Pareto-front report) and ``plan`` (a sweep's cost)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robusttune.api.common import cache_directory
from robusttune.bounds import at_least
from robusttune.errors import DataError, ParameterError, storage_error
from robusttune.experiment import check_experiment, report_dir
from robusttune.space import load_space


@dataclass(frozen=True)
class ReportResult:
    files: dict[str, str]
    seconds: float
    summary: dict[str, Any]


def report(experiment: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None,
           formats: Sequence[str] = ("html", "png", "csv"), logit_axes: bool = False, gallery: bool = True,
           cache_dir: str | os.PathLike[str] | None = None) -> ReportResult:
    """Write the Pareto-front report (``index.html``, PNGs, CSVs) into ``out`` (default ``EXPERIMENT/report``).
    ``gallery`` re-computes the counterfactual gallery from the trials' checkpoints (needs torch)."""
    from robusttune.analysis.report import FORMATS, write_report

    path = check_experiment(Path(experiment))
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ParameterError("formats", f"must be a comma-separated subset of {','.join(FORMATS)}, got {','.join(formats)!r}")
    target = Path(out) if out else report_dir(path)
    _check_report_folder(target, given=out is not None)
    galleries: dict[str, str] = {}
    if gallery and ("png" in formats or "html" in formats):
        from robusttune.gallery import write_galleries

        target.mkdir(parents=True, exist_ok=True)
        galleries = write_galleries(path, target, cache_dir=cache_directory(cache_dir))
    summary = write_report(path, target, formats, logit_axes=logit_axes)
    files = {**summary["files"], **(galleries if "png" in formats else {})}
    return ReportResult(files, float(summary["seconds"]), {**summary, "files": files})


def _check_report_folder(target: Path, *, given: bool) -> None:
    """The report's folder is, or can be made, a writable folder: checked before any work (bad input, exit 2)."""
    def bad(problem: str) -> Exception:
        return ParameterError("out", problem) if given else DataError(problem)

    if target.exists() and not target.is_dir():
        raise bad(f"{target} exists and is not a folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:  # a read-only or full place is said as every command says it
        said = storage_error(error, target)
        raise bad(str(said) if said else f"{target}: cannot write the report there ({error.strerror or error})") from None


def plan(space: str | os.PathLike[str], *, trials: int | None = None, calibrate: bool = False,
         cache_dir: str | os.PathLike[str] | None = None, gpu_memory: float | None = None,
         device_type: str | None = None, cluster: str | os.PathLike[str] | None = None):
    """What a sweep of ``space`` will cost (``robusttune.search.plan.Plan``): device-hours per trial and for the
    sweep by term (startup, training, evaluation, checkpoint writes, the serial tail of baselines and WiSE-FT curves)
    and the dominant one, what bounds a trial (device or loader), the evaluation share, storage and the scheduler's
    expected saving, from measurements on this machine (steps at the trial's micro-batch or a line through two
    sizes, the loader, the storage's write rate; cached, ``calibrate`` measures again)."""
    from robusttune.search.plan import plan as make_plan

    loaded, _ = load_space(str(space))
    at_least("trials", trials, 1)
    memory, gpu = _gpu_memory(gpu_memory, device_type, cluster)
    return make_plan(loaded, cache_directory(cache_dir), trials=trials, calibrate_again=calibrate,
                     gpu_memory=memory, gpu=gpu)


def _gpu_memory(gpu_memory: float | None, device_type: str | None, cluster: str | os.PathLike[str] | None):
    """The GPU memory (bytes) a plan checks the peaks against, and where it came from: ``gpu_memory`` GB, a named
    ``device_type``, a cluster file's GPU node types, else this machine's GPU (None without one)."""
    from robusttune.search.memory import gpu_memory_of

    config = None
    if cluster is not None:
        from robusttune.search.launch import check_cluster_file

        config = check_cluster_file(Path(cluster))
    return gpu_memory_of(gpu_memory_gb=gpu_memory, device=device_type, cluster=config, local=True)
