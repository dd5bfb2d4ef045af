"""A single run's directory (``robusttune train``): ``config.json``, ``metrics.jsonl`` (one row per evaluation),
``checkpoint.pt`` (latest, resumable), ``final.pt`` (weights, config and task) and ``summary.json``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robusttune.config import TaskSpec, TrainConfig
from robusttune.experiment import RunFiles
from robusttune.training.checkpoint import save_checkpoint
from robusttune.training.distributed import Shard
from robusttune.training.run import prepare_run


def train_into(config: TrainConfig, spec: TaskSpec, cache: Path, out: Path, *,
               on_evaluation: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The run in this process (all of it, or this rank's share of a data-parallel run, whose leader alone writes);
    returns the summary (as ``summary.json`` holds it)."""
    shard, files = Shard.current(), RunFiles(out)
    metrics_path = files.metrics
    run = prepare_run(config, spec, cache, checkpoint=files.checkpoint)
    if shard.leader:
        metrics_path.write_text("".join(json.dumps({**r, **r["metrics"]}) + "\n" for r in run.history))
        files.config.write_text(json.dumps({**config.to_dict(), **spec.to_dict()}, indent=2) + "\n")

    def report(row: dict[str, Any]) -> None:
        if not shard.leader:
            return
        with metrics_path.open("a") as stream:
            stream.write(json.dumps(row, default=float) + "\n")
        if on_evaluation is not None and "metrics" in row:
            on_evaluation(row)

    started = time.perf_counter()
    result = run.train(report=report, shard=shard)
    summary = {"status": result.status, "failure": result.failure, "steps": result.steps, **result.metrics,
               "seconds": round(time.perf_counter() - started, 2), "out": str(out)}
    if shard.leader:
        if result.status == "complete":
            save_checkpoint(files.final, {"model": run.student.state_dict(), "config": json.dumps(config.to_dict()),
                                          "task": json.dumps(spec.to_dict()), "metrics": json.dumps(result.metrics),
                                          **({"method_state": result.method_state} if result.method_state else {})})
        files.summary.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary
