"""Post-hoc merges of a sweep's own models, after its trials and baselines (cached in its records).

A sweep leaves, for free, many fine-tuned models from one zero-shot start; the merges of
``robusttune.method.merge`` are made of them:

* ``uniform_soup``: the average of every complete trial's final weights;
* ``greedy_soup``: the complete trials in decreasing recorded ``id_val_acc``, each kept if the soup's ID validation
  accuracy does not drop (evaluated on the ID validation split only; the final soup on every set);
* ``model_stock``: Model Stock of the two complete trials with the best ``id_val_acc``, around the zero-shot weights.

Each is one row ``kind: merge`` (``method``, ``members``, every metric and ``eval_images``; the greedy soup adds its
``decisions``), computed by one Ray task with the space's per-trial resources, all submitted together. A merge
already recorded is not computed again (a resumed sweep computes only what the records lack); with fewer complete
trials than a merge needs (one; two for Model Stock), it is skipped and says so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from robusttune.experiment import (MERGE_KIND, append_record, heads_dir, latest_by_trial, latest_checkpoint,
                                   parse_space_text, read_records)
from robusttune.metrics import ID_VAL

log = logging.getLogger(__name__)

UNIFORM_SOUP, GREEDY_SOUP, MODEL_STOCK = "uniform_soup", "greedy_soup", "model_stock"
MERGES = (UNIFORM_SOUP, GREEDY_SOUP, MODEL_STOCK)
_NEEDS = {UNIFORM_SOUP: 1, GREEDY_SOUP: 1, MODEL_STOCK: 2}  # complete trials each merge needs


def recorded_merges(experiment: Path) -> set[str]:
    return {row.get("method") for row in read_records(experiment) if row.get("kind") == MERGE_KIND}


def ingredients(experiment: Path) -> list[tuple[str, float]]:
    """``(trial id, recorded id_val_acc)`` of the complete trials that kept their weights, best first."""
    rows = [(t, float(r[ID_VAL])) for t, r in latest_by_trial(experiment).items()
            if r.get("status") == "complete" and isinstance(r.get(ID_VAL), int | float)
            and latest_checkpoint(experiment, t) is not None]
    return sorted(rows, key=lambda item: (-item[1], item[0]))


def compute_merge(experiment: str, space_yaml: str, cache_dir: str, method: str, threads: int) -> int:
    """Compute one merge and append its row (runs in a Ray task or in-process); returns the rows written (0 or 1)."""
    import torch

    from robusttune.method.merge import greedy_soup, model_stock, uniform_soup
    from robusttune.search.baselines import vanilla_config
    from robusttune.training.checkpoint import load_checkpoint
    from robusttune.training.device import Placement
    from robusttune.training.evaluate import Evaluator, evaluate_state_dict
    from robusttune.training.tasks import build_task

    torch.set_num_threads(max(1, threads))
    exp = Path(experiment)
    if method in recorded_merges(exp):
        return 0
    candidates = ingredients(exp)
    if len(candidates) < _NEEDS[method]:
        log.warning("%s skipped: it needs %d complete trial(s), the experiment has %d", method, _NEEDS[method],
                    len(candidates))
        return 0
    space = parse_space_text(space_yaml)
    config = vanilla_config(space)  # the baselines' device, precision and evaluation batch
    student, task = build_task(space.task, Path(cache_dir), head_folders=[heads_dir(exp)])
    placement = Placement.of(config.device, config.precision)
    evaluator = Evaluator(task.eval_sets, batch_size=config.eval_batch_size, num_workers=task.num_workers,
                          placement=placement)

    def weights(trial_id: str) -> dict[str, torch.Tensor]:
        return load_checkpoint(latest_checkpoint(exp, trial_id))["model"]  # type: ignore[arg-type]

    extra: dict[str, Any] = {}
    if method == UNIFORM_SOUP:
        members = [t for t, _ in candidates]
        merged = uniform_soup([weights(t) for t in members])
    elif method == GREEDY_SOUP:
        held_out = Evaluator([s for s in task.eval_sets if s.metric == ID_VAL], batch_size=config.eval_batch_size,
                             num_workers=task.num_workers, placement=placement)
        merged, members, decisions = greedy_soup(candidates, weights,
                                                 lambda state: evaluate_state_dict(student, state, held_out)[ID_VAL])
        extra["decisions"] = decisions
    else:
        members = [t for t, _ in candidates[:2]]
        zero_shot = {k: v.detach().clone() for k, v in student.state_dict().items()}
        merged, _ = model_stock(zero_shot, [weights(t) for t in members])
    metrics = evaluate_state_dict(student, merged, evaluator)
    if method in recorded_merges(exp):  # a task of a killed driver, still finishing, wrote it meanwhile
        return 0
    append_record(exp, {"kind": MERGE_KIND, "method": method, "members": members, **metrics,
                        "eval_images": dict(evaluator.sizes), **extra})
    return 1


def run_merges(experiment: Path, space_text: str, cache_dir: Path, *, cpu: float, gpu: float,
               use_ray: bool = True) -> int:
    """Every merge the records lack, one Ray task each, submitted together; returns the rows written."""
    missing = [m for m in MERGES if m not in recorded_merges(experiment)]
    jobs = [(str(experiment.resolve()), space_text, str(cache_dir), method, max(1, int(cpu))) for method in missing]
    if use_ray and jobs:
        import ray

        task = ray.remote(num_cpus=cpu, num_gpus=gpu, max_retries=0)(compute_merge)
        return sum(int(n) for n in ray.get([task.remote(*job) for job in jobs]))
    return sum(compute_merge(*job) for job in jobs)
