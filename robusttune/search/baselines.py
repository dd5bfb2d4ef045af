"""WiSE-FT baselines inside every experiment (run once per experiment, cached in its records).

* zero-shot and vanilla fine-tuning (``w_distill = 0``, no masks) with the space's fixed settings, and the WiSE-FT
  alpha grid between them (``baselines.wise_alphas`` of the space);
* WiSE-FT between the zero-shot weights and each given trial's final checkpoint (the Pareto-optimal trials).

Rows go to ``records.jsonl`` with ``kind: baseline`` (``method``: zero-shot, vanilla-ft) or ``kind: wise``
(``source``: vanilla-ft or a trial id, and ``alpha``). The work runs as a Ray task with the space's per-trial
resources, so on a cluster it lands on a worker, not on the head node.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robusttune.experiment import append_record, baselines_dir, latest_checkpoint, parse_space_text, read_records


def recorded_wise_sources(experiment: Path) -> set[str]:
    return {r["source"] for r in read_records(experiment) if r.get("kind") == "wise"}


def compute_baselines(experiment: str, space_yaml: str, cache_dir: str, trial_ids: list[str], threads: int) -> list[dict[str, Any]]:
    """The rows to record (runs in a Ray task or in-process); trains vanilla FT only if not cached."""
    import torch

    from robusttune.config import TrainConfig, parse
    from robusttune.training.checkpoint import load_checkpoint, save_checkpoint
    from robusttune.training.evaluate import evaluate
    from robusttune.training.run import prepare_run
    from robusttune.training.tasks import build_task
    from robusttune.training.wise import wise_curve

    torch.set_num_threads(max(1, threads))
    exp = Path(experiment)
    space = parse_space_text(space_yaml)
    alphas = space.baselines.wise_alphas
    student, task = build_task(space.task, Path(cache_dir))
    zero_shot = {k: v.detach().clone() for k, v in student.state_dict().items()}
    done = recorded_wise_sources(exp)
    rows: list[dict[str, Any]] = []
    vanilla_path = baselines_dir(exp) / "vanilla_ft.pt"
    if "vanilla-ft" not in done:
        rows.append({"kind": "baseline", "method": "zero-shot", **evaluate(student, task.eval_sets)})
        fixed = {k: v for k, v in space.fixed.items() if k not in ("region", "refill", "mask_threshold", "mask_ratio")}
        config = parse(TrainConfig, {**fixed, "region": "none", "w_distill": 0.0, "seed": 0}, "vanilla fine-tuning baseline")
        result = prepare_run(config, space.task, Path(cache_dir), built=(student, task)).train()
        save_checkpoint(vanilla_path, {"model": student.state_dict(), "config": json.dumps(config.to_dict())})
        rows.append({"kind": "baseline", "method": "vanilla-ft", "config": config.to_dict(), **result.metrics})
        curve = wise_curve(student, zero_shot, student.state_dict(), task.eval_sets, alphas=alphas)
        rows += [{"kind": "wise", "source": "vanilla-ft", **row} for row in curve]
    for trial_id in trial_ids:
        path = latest_checkpoint(exp, trial_id)
        if trial_id in done or path is None:
            continue
        finetuned = load_checkpoint(path)["model"]
        curve = wise_curve(student, zero_shot, finetuned, task.eval_sets, alphas=alphas)
        rows += [{"kind": "wise", "source": trial_id, **row} for row in curve]
    return rows


def run_baselines(experiment: Path, space_text: str, cache_dir: Path, trial_ids: list[str], *, cpu: float, gpu: float,
              use_ray: bool = True) -> int:
    """Compute what is missing and append it to the records; returns the number of rows written."""
    args = (str(experiment.resolve()), space_text, str(cache_dir), list(trial_ids), max(1, int(cpu)))
    if use_ray:
        import ray

        task = ray.remote(num_cpus=cpu, num_gpus=gpu)(compute_baselines)
        rows = ray.get(task.remote(*args))
    else:
        rows = compute_baselines(*args)
    for row in rows:
        append_record(experiment, row)
    return len(rows)
