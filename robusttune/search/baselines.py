"""WiSE-FT baselines inside every experiment (run once per experiment, cached in its records).

* zero-shot and vanilla fine-tuning (method ``ft``) with the space's fixed settings, and the WiSE-FT
  alpha grid between them (``baselines.wise_alphas`` of the space);
* WiSE-FT between the zero-shot weights and each given trial's final checkpoint (the Pareto-optimal trials).

Rows go to ``records.jsonl`` with ``kind: baseline`` (``method``: zero-shot, vanilla-ft) or ``kind: wise``
(``source``: vanilla-ft or a trial id, and ``alpha``). The work runs as Ray tasks with the space's per-trial
resources, one for the references (zero-shot, vanilla FT and its curve) and one per trial's curve, all at once: a
cluster computes them in parallel, on workers, not on the head node.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robusttune.experiment import (VANILLA_FT, ZERO_SHOT, append_record, heads_dir, latest_checkpoint,
                                   parse_space_text, read_records, vanilla_checkpoint)


def recorded(experiment: Path) -> tuple[set[str], set[tuple[str, float]]]:
    """The baseline methods and the ``(source, alpha)`` WiSE-FT points already in the records."""
    methods, points = set(), set()
    for row in read_records(experiment):
        if row.get("kind") == "baseline":
            methods.add(row.get("method"))
        elif row.get("kind") == "wise" and isinstance(row.get("alpha"), int | float):
            points.add((row.get("source"), round(float(row["alpha"]), 6)))
    return methods, points


def vanilla_config(space, seed: int = 0):
    """Vanilla fine-tuning (method ``ft``) with the space's fixed common settings (not its methods' knobs): the
    baselines' reference. It trains in one process; a data-parallel space's at its trials' global batch and
    micro-batch (``TrainConfig.in_one_process``)."""
    from robusttune.config import TRAIN_KEYS, TrainConfig, parse

    fixed = {k: v for k, v in space.trial_settings({}).items() if k in TRAIN_KEYS}
    return parse(TrainConfig, {**fixed, "method": {"name": "ft"}, "seed": seed},
                 "vanilla fine-tuning baseline").in_one_process()


def compute_baselines(experiment: str, space_yaml: str, cache_dir: str, trial_ids: list[str], threads: int,
                      references: bool = True) -> int:
    """Compute what the records lack and append each row as soon as it exists (runs in a Ray task or in-process),
    so a kill loses at most the row being computed: a resumed sweep finishes each curve where it stopped, and the
    vanilla fine-tuning run is trained once (``baselines/vanilla_ft.pt``). ``references``: also zero-shot, vanilla FT
    and vanilla FT's curve (else only the trials' curves). Returns the number of rows written."""
    import torch

    from robusttune import progress
    from robusttune.training.checkpoint import load_checkpoint, save_checkpoint
    from robusttune.training.device import Placement
    from robusttune.training.evaluate import Evaluator
    from robusttune.training.run import prepare_run
    from robusttune.training.tasks import build_task
    from robusttune.training.wise import wise_curve

    from robusttune.search.gpus import check_ray_gpus

    check_ray_gpus("the WiSE-FT baselines")
    torch.set_num_threads(max(1, threads))
    exp = Path(experiment)
    space = parse_space_text(space_yaml)
    methods, points = recorded(exp)
    sources = [*([(VANILLA_FT, None)] if references else []), *((t, latest_checkpoint(exp, t)) for t in trial_ids)]
    missing = {source: [a for a in space.baselines.wise_alphas if (source, round(float(a), 6)) not in points]
               for source, _ in sources}
    if (not references or {ZERO_SHOT, VANILLA_FT} <= methods) and not any(missing.values()):
        return 0
    config = vanilla_config(space)
    student, task = build_task(space.task, Path(cache_dir), head_folders=[heads_dir(exp)])
    zero_shot = {k: v.detach().clone() for k, v in student.state_dict().items()}
    placement = Placement.of(config.device, config.precision)  # the trials' device and precision, for every row here
    evaluator = Evaluator(task.eval_sets, batch_size=config.eval_batch_size, num_workers=task.num_workers,
                          placement=placement)
    written = 0

    def record(row: dict[str, Any]) -> None:
        nonlocal written
        if row["kind"] == "wise" and (row["source"], round(float(row["alpha"]), 6)) in recorded(exp)[1]:
            return  # a task of a killed driver, still finishing, wrote it meanwhile
        append_record(exp, row)
        written += 1

    if references and ZERO_SHOT not in methods:
        record({"kind": "baseline", "method": ZERO_SHOT, **evaluator(student)})
    vanilla_path = vanilla_checkpoint(exp)
    vanilla = load_checkpoint(vanilla_path) if references and vanilla_path.is_file() else None
    if vanilla is not None and ("metrics" not in vanilla or not config.resumes(json.loads(vanilla["config"]))):
        vanilla = None  # trained under other fixed settings (or by an older robusttune): train again
    if references and vanilla is None:
        result = prepare_run(config, space.task, Path(cache_dir), built=(student, task), placement=placement).train()
        vanilla = {"model": {k: v.detach().clone() for k, v in student.state_dict().items()},
                   "config": json.dumps(config.to_dict()), "metrics": json.dumps(result.metrics)}
        save_checkpoint(vanilla_path, vanilla)
        student.load_state_dict(zero_shot)
    if references and VANILLA_FT not in methods:
        record({"kind": "baseline", "method": VANILLA_FT, "config": config.to_dict(), **json.loads(vanilla["metrics"])})
    todo = [(source, path) for source, path in sources if missing[source] and (source == VANILLA_FT or path is not None)]
    with progress.bar("WiSE-FT baselines", sum(len(missing[source]) for source, _ in todo), unit="point") as bar:
        for source, path in todo:
            finetuned = vanilla["model"] if source == VANILLA_FT else load_checkpoint(path)["model"]
            for alpha in missing[source]:  # one row at a time: a kill loses at most this point of the curve
                (row,) = wise_curve(student, zero_shot, finetuned, evaluator, alphas=(alpha,))
                record({"kind": "wise", "source": source, **row})
                bar.update(1)
    return written


def run_baselines(experiment: Path, space_text: str, cache_dir: Path, trial_ids: list[str], *, cpu: float, gpu: float,
                  use_ray: bool = True) -> int:
    """Compute what is missing (appending it to the records as it goes); returns the number of rows written. With
    Ray: one task for the references and one per trial's curve, submitted together."""
    common = (str(experiment.resolve()), space_text, str(cache_dir))
    jobs = [(*common, [], max(1, int(cpu)), True), *((*common, [t], max(1, int(cpu)), False) for t in trial_ids)]
    if use_ray:
        import ray

        task = ray.remote(num_cpus=cpu, num_gpus=gpu, max_retries=0)(compute_baselines)
        from robusttune.search.remote import ray_get

        return sum(int(n) for n in ray_get([task.remote(*job) for job in jobs]))
    return sum(compute_baselines(*job) for job in jobs)
