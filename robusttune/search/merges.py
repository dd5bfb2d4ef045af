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
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robusttune.experiment import (MERGE_KIND, append_record, heads_dir, latest_by_trial, latest_checkpoint,
                                   parse_space_text, read_records)
from robusttune.methods import MergeName
from robusttune.metrics import ID_VAL

log = logging.getLogger(__name__)

UNIFORM_SOUP, GREEDY_SOUP, MODEL_STOCK = MergeName.UNIFORM_SOUP, MergeName.GREEDY_SOUP, MergeName.MODEL_STOCK
MERGES = tuple(MergeName)
NEEDS = {UNIFORM_SOUP: 1, GREEDY_SOUP: 1, MODEL_STOCK: 2}  # the models each merge needs


def recorded_merges(experiment: Path) -> set[str]:
    return {row.get("method") for row in read_records(experiment) if row.get("kind") == MERGE_KIND}


def ingredients(experiment: Path) -> list[tuple[str, float]]:
    """``(trial id, recorded id_val_acc)`` of the complete trials that kept their weights, best first."""
    rows = [(t, float(r[ID_VAL])) for t, r in latest_by_trial(experiment).items()
            if r.get("status") == "complete" and isinstance(r.get(ID_VAL), int | float)
            and latest_checkpoint(experiment, t) is not None]
    return sorted(rows, key=lambda item: (-item[1], item[0]))


@dataclass(frozen=True)
class MergeBench:
    """What evaluating merges needs, built once per task: the zero-shot weights, the full evaluation and the greedy
    soup's held-out one (ID validation only), with the baselines' device, precision and evaluation batch."""

    student: Any
    zero_shot: dict
    evaluator: Any
    id_val: Any

    @classmethod
    def build(cls, space: Any, cache_dir: Path, experiment: Path) -> MergeBench:
        from robusttune.search.baselines import vanilla_config
        from robusttune.search.gpus import check_ray_gpus
        from robusttune.training.device import Placement
        from robusttune.training.evaluate import Evaluator
        from robusttune.training.tasks import build_task

        check_ray_gpus("a merge's evaluation")
        config = vanilla_config(space)
        student, task = build_task(space.task, cache_dir, head_folders=[heads_dir(experiment)])
        placement = Placement.of(config.device, config.precision)

        def evaluator(sets: list) -> Evaluator:
            return Evaluator(sets, batch_size=config.eval_batch_size, num_workers=task.num_workers, placement=placement)

        zero_shot = {k: v.detach().clone() for k, v in student.state_dict().items()}
        return cls(student, zero_shot, evaluator(task.eval_sets), evaluator([s for s in task.eval_sets if s.metric == ID_VAL]))

    def held_out(self, state: dict) -> float:
        from robusttune.training.evaluate import evaluate_state_dict

        return evaluate_state_dict(self.student, state, self.id_val)[ID_VAL]

    def evaluate(self, state: dict) -> tuple[dict[str, float], dict[str, int]]:
        """Every metric of the merged weights, and the images each was measured on."""
        from robusttune.training.evaluate import evaluate_state_dict

        return evaluate_state_dict(self.student, state, self.evaluator), dict(self.evaluator.sizes)


def merge_weights(method: str, candidates: list[tuple[str, float]], load: Callable[[str], dict], zero_shot: dict,
                  held_out: Callable[[dict], float]) -> tuple[dict, list[str], dict[str, Any]]:
    """One merge's rule over ``candidates`` (``(name, ID validation accuracy)``, best first; ``load(name)`` its
    weights; ``held_out(state)`` a soup's ID validation accuracy, for the greedy soup): the merged weights, the
    members it used and what else its row records (the greedy soup's decisions)."""
    from robusttune.method.merge import greedy_soup, model_stock, uniform_soup

    if method == UNIFORM_SOUP:
        members = [name for name, _ in candidates]
        return uniform_soup([load(name) for name in members]), members, {}
    if method == GREEDY_SOUP:
        merged, members, decisions = greedy_soup(candidates, load, held_out)
        return merged, members, {"decisions": decisions}
    members = [name for name, _ in candidates[:2]]
    merged, _ = model_stock(zero_shot, [load(name) for name in members])
    return merged, members, {}


def compute_merge(experiment: str, space_yaml: str, cache_dir: str, method: str, threads: int) -> int:
    """Compute one merge and append its row (runs in a Ray task or in-process); returns the rows written (0 or 1)."""
    import torch

    from robusttune.training.checkpoint import load_checkpoint

    torch.set_num_threads(max(1, threads))
    exp = Path(experiment)
    if method in recorded_merges(exp):
        return 0
    candidates = ingredients(exp)
    if len(candidates) < NEEDS[method]:
        log.warning("%s skipped: it needs %d complete trial(s), the experiment has %d", method, NEEDS[method],
                    len(candidates))
        return 0
    bench = MergeBench.build(parse_space_text(space_yaml), Path(cache_dir), exp)

    def weights(trial_id: str) -> dict[str, torch.Tensor]:
        return load_checkpoint(latest_checkpoint(exp, trial_id))["model"]  # type: ignore[arg-type]

    merged, members, extra = merge_weights(method, candidates, weights, bench.zero_shot, bench.held_out)
    metrics, sizes = bench.evaluate(merged)
    if method in recorded_merges(exp):  # a task of a killed driver, still finishing, wrote it meanwhile
        return 0
    append_record(exp, {"kind": MERGE_KIND, "method": str(method), "members": members, **metrics,
                        "eval_images": sizes, **extra})
    return 1


def run_merges(experiment: Path, space_text: str, cache_dir: Path, *, cpu: float, gpu: float,
               use_ray: bool = True) -> int:
    """Every merge the records lack, one Ray task each, submitted together; returns the rows written."""
    missing = [m for m in MERGES if m not in recorded_merges(experiment)]
    jobs = [(str(experiment.resolve()), space_text, str(cache_dir), method, max(1, int(cpu))) for method in missing]
    if use_ray and jobs:
        import ray

        task = ray.remote(num_cpus=cpu, num_gpus=gpu, max_retries=0)(compute_merge)
        from robusttune.search.remote import ray_get

        return sum(int(n) for n in ray_get([task.remote(*job) for job in jobs]))
    return sum(compute_merge(*job) for job in jobs)
