"""The confirmation stage: the front's configurations, vanilla fine-tuning and zero-shot trained again with more
seeds, each with its WiSE-FT curve, so that a report can tell a real gain from seed-to-seed noise.

Which configurations: the ``top`` complete trials ranked by non-dominated front on the objective, then by crowding
distance (with ``per_method``, the ``top`` of each method's trials, so that every method searched gets its verdict;
or trials named by id), and vanilla fine-tuning (the baselines' reference config). Seeds ``0..K-1`` are
offsets from each config's own seed: seed 0 of a trial *is* the trial (its recorded final metrics and weights; no
retraining), seed 0 of vanilla FT is the baselines' run when it is there. Zero-shot has no seed (nothing is trained
and evaluation is deterministic): it is recorded once, as seed 0.

Each (configuration, seed) is one run and one Ray task with the space's per-trial resources, all submitted at once
(a cluster runs them side by side). A run appends its rows to ``records.jsonl`` as each exists, ``kind: confirm``
with ``config_key``, ``source`` (the trial id, ``vanilla-ft`` or ``zero-shot``), ``seed``, every metric and
``eval_images``: first the run's own weights (``alpha`` null), then each point of its WiSE-FT curve. A killed run
keeps what it recorded and its latest checkpoint (``confirm/<key>-s<seed>.latest.pt``): it continues from there,
and nothing recorded is computed twice.

Merges (``merges``: the recorded post-hoc merges to confirm, ``robusttune.search.merges``): a merge at seed s is its
rule applied again to its members' configurations trained at seed s (the greedy soup's rule runs again over its
seed-0 members, ordered by their seed-s ID validation accuracy). Seed 0 of a merge is the merge itself (its
recorded row). Members are ordinary runs of the first wave, without a WiSE-FT curve unless they are confirmed in
their own right; the merges are a second wave, one Ray task per (merge, seed), each one row (``source``: the
merge's name, ``method``, ``members``), keyed by the merge's name and its members' configurations.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robusttune.cache import stable_hash
from robusttune.errors import ConfigError
from robusttune.experiment import (CONFIRM_KIND, MERGE_KIND, STOPPED_EARLY, ZERO_SHOT, append_record, confirm_progress, confirm_weights, heads_dir,
                                   is_confirm_row, latest_by_trial, latest_checkpoint, parse_space_text, read_records,
                                   vanilla_checkpoint)
from robusttune.experiment import VANILLA_FT as VANILLA
from robusttune.methods import method_name
from robusttune.space import Confirm, SearchSpace

log = logging.getLogger(__name__)


def config_key(config: dict[str, Any]) -> str:
    """A configuration's key: the hash of its training config without the seed (so its seeds share it)."""
    return stable_hash({k: v for k, v in config.items() if k != "seed"}, length=12)


@dataclass(frozen=True)
class ConfirmRun:
    """One (configuration, seed) of the confirmation."""

    source: str  # a trial id, vanilla-ft or zero-shot
    config: dict[str, Any]  # the training config, with this run's seed
    seed: int  # the offset from the configuration's own seed (0: the trial itself)
    curve: bool = True  # with its WiSE-FT curve (a merge's member only: without, unless confirmed itself)

    @property
    def key(self) -> str:
        return config_key(self.config)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "config": self.config, "seed": self.seed, "curve": self.curve}


@dataclass(frozen=True)
class MergeRun:
    """One merge of the confirmation at one seed: its rule over its members' runs at that seed."""

    source: str  # the merge's name
    members: tuple[tuple[str, str], ...]  # (trial id, config key) of each member of the recorded merge
    seed: int

    @property
    def key(self) -> str:
        return stable_hash({"merge": self.source, "members": [key for _, key in self.members]}, length=12)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "members": [list(m) for m in self.members], "seed": self.seed}


def select_trials(space: SearchSpace, latest: dict[str, dict[str, Any]], *, top: int,
                  trial_ids: list[str] | None = None, per_method: bool = False) -> list[str]:
    """The trials to confirm: ``trial_ids`` (each must be a complete trial), else the ``top`` complete trials by
    non-dominated front on the objective, then by crowding distance (with ``per_method``: the ``top`` of each
    method's complete trials, ranked among themselves, methods in name order; a method whose trials the scheduler
    all stopped early is represented by its stopped trials, ranked on their last evaluation: the confirmation
    trains their configuration to the end, seed 0 included)."""
    from robusttune.pareto import multi_objective_ranking

    complete = {t: row for t, row in latest.items() if row.get("status") == "complete" and row.get("config")}
    if not complete:
        raise ConfigError("the experiment has no complete trial to confirm")
    if trial_ids:
        unknown = [t for t in trial_ids if t not in complete]
        if unknown:
            raise ConfigError(f"not a complete trial of this experiment: {', '.join(unknown)}")
        return list(dict.fromkeys(trial_ids))
    metrics, signs = list(space.objective.keys), [-1.0 if d.value == "min" else 1.0 for d in space.objective.directions]

    def best(ids: list[str]) -> list[str]:
        points = [[sign * float(latest[t][m]) for sign, m in zip(signs, metrics)] for t in ids]
        return [ids[i] for i in multi_objective_ranking(points, tie_break="crowding")[:top]]

    if not per_method:
        return best(sorted(complete))
    groups: dict[str, list[str]] = {}
    stopped: dict[str, list[str]] = {}
    for trial, row in sorted(latest.items()):
        if not row.get("config") or not all(isinstance(row.get(m), int | float) for m in metrics):
            continue
        into = groups if trial in complete else stopped if row.get("status") == STOPPED_EARLY else None
        if into is not None:
            into.setdefault(method_name(row["config"].get("method", {})), []).append(trial)
    groups |= {method: ids for method, ids in stopped.items() if method not in groups}
    return [trial for method in sorted(groups) for trial in best(groups[method])]


def plan_runs(space: SearchSpace, latest: dict[str, dict[str, Any]], trial_ids: list[str], seeds: int) -> list[ConfirmRun]:
    """Every run of the confirmation: each trial's and vanilla FT's config at seeds 0..seeds-1, and zero-shot once."""
    from robusttune.search.baselines import vanilla_config

    vanilla = vanilla_config(space).to_dict()
    configs = [(t, dict(latest[t]["config"])) for t in trial_ids] + [(VANILLA, vanilla)]
    runs = [ConfirmRun(source, {**config, "seed": int(config.get("seed", 0)) + s}, s)
            for source, config in configs for s in range(seeds)]
    return [*runs, ConfirmRun(ZERO_SHOT, {**vanilla, "steps": 0}, 0)]


def plan_merges(experiment: Path, latest: dict[str, dict[str, Any]], merges: tuple[str, ...], seeds: int,
                confirmed: list[ConfirmRun]) -> tuple[list[ConfirmRun], list[MergeRun]]:
    """The confirmation of the recorded ``merges``: the members' runs at seeds 0..seeds-1 that ``confirmed`` lacks
    (seed 0 of a member is the trial: recorded, not trained), and each merge at seeds 0..seeds-1. A merge the
    records lack is skipped and said."""
    rows = {row.get("method"): row for row in read_records(experiment) if row.get("kind") == MERGE_KIND}
    have = {(r.key, r.seed) for r in confirmed}
    members_runs: dict[tuple[str, int], ConfirmRun] = {}
    merge_runs = []
    for merge in merges:
        row = rows.get(merge)
        if row is None:
            log.warning("confirmation of %s skipped: the experiment has recorded no %s", merge, merge)
            continue
        members = tuple((t, config_key(latest[t]["config"])) for t in row["members"] if latest.get(t, {}).get("config"))
        for trial, _ in members:
            config = latest[trial]["config"]
            for s in range(seeds):
                run = ConfirmRun(trial, {**config, "seed": int(config.get("seed", 0)) + s}, s, curve=False)
                if (run.key, s) not in have:
                    members_runs.setdefault((run.key, s), run)
        merge_runs += [MergeRun(str(merge), members, s) for s in range(seeds)]
    return list(members_runs.values()), merge_runs


FAILED = "failed"  # in ``recorded``: the run failed (it is not run again)


def recorded(experiment: Path) -> dict[tuple[str, int], set[float | str | None]]:
    """``(config_key, seed)`` -> the alphas (None: the run's own weights; ``FAILED``: it failed) in the records."""
    done: dict[tuple[str, int], set[float | str | None]] = {}
    for row in read_records(experiment):
        if is_confirm_row(row):
            alpha = row.get("alpha")
            done.setdefault((row["config_key"], int(row["seed"])), set()).update(
                [None if alpha is None else round(float(alpha), 6), *([FAILED] if row.get("status") == FAILED else [])])
    return done


def missing_alphas(run: ConfirmRun | MergeRun, space: SearchSpace, done: dict[tuple[str, int], set[float | str | None]]) -> list[float | None]:
    """What the run still has to record: None (its own weights) and the curve's alphas (none for zero-shot, nothing
    for a run that failed: a resume does not train it again)."""
    have = done.get((run.key, run.seed), set())
    if FAILED in have:
        return []
    curve = isinstance(run, ConfirmRun) and run.curve and run.source != ZERO_SHOT
    wanted: list[float | None] = [None, *([float(a) for a in space.baselines.wise_alphas] if curve else [])]
    return [a for a in wanted if (None if a is None else round(a, 6)) not in have]


def confirm_one(experiment: str, space_yaml: str, cache_dir: str, run: dict[str, Any], threads: int) -> int:
    """Compute and record what one run lacks (a Ray task, or in-process); returns the rows written."""
    import torch

    from robusttune.config import TrainConfig, parse
    from robusttune.training.checkpoint import load_checkpoint, save_checkpoint
    from robusttune.training.device import Placement
    from robusttune.training.evaluate import Evaluator
    from robusttune.training.run import prepare_run
    from robusttune.training.tasks import build_task
    from robusttune.training.wise import wise_curve

    from robusttune.search.gpus import check_ray_gpus

    check_ray_gpus(f"confirmation run {run['source']} seed {run['seed']}")
    torch.set_num_threads(max(1, threads))
    exp, space = Path(experiment), parse_space_text(space_yaml)
    this = ConfirmRun(run["source"], dict(run["config"]), int(run["seed"]), bool(run.get("curve", True)))
    todo = missing_alphas(this, space, recorded(exp))
    if not todo:
        return 0
    config = parse(TrainConfig, this.config, f"confirmation run {this.source} seed {this.seed}")
    trained = config.in_one_process()  # a data-parallel trial's run, in this one process at the same global batch
    if trained is not config:
        log.info("confirmation run %s seed %d: trained in one process at accum_steps %d (the trial's %d workers x %d)",
                 this.source, this.seed, trained.accum_steps, config.workers, config.accum_steps)
    student, task = build_task(space.task, Path(cache_dir), head_folders=[heads_dir(exp)])
    zero_shot = {k: v.detach().clone() for k, v in student.state_dict().items()}
    placement = Placement.of(config.device, config.precision)
    evaluator = Evaluator(task.eval_sets, batch_size=config.eval_batch_size, num_workers=task.num_workers,
                          placement=placement)
    common = {"kind": CONFIRM_KIND, "config_key": this.key, "source": this.source, "seed": this.seed,
              "eval_images": dict(evaluator.sizes)}
    written = 0

    def record(row: dict[str, Any]) -> None:
        nonlocal written
        alpha = row.get("alpha")
        if (None if alpha is None else round(float(alpha), 6)) in recorded(exp).get((this.key, this.seed), set()):
            return  # a task of a killed driver, still finishing, wrote it meanwhile
        append_record(exp, {**common, **row})
        written += 1

    if this.source == ZERO_SHOT:
        record({"alpha": None, "config": config.to_dict(), **evaluator(student)})
        return written
    weights, metrics = _reused(exp, this)
    reused = weights is not None
    if weights is None:
        final = confirm_weights(exp, this.key, this.seed)
        if final.is_file():
            saved = load_checkpoint(final)
            weights, metrics = saved["model"], json.loads(saved["metrics"])
        else:
            progress = confirm_progress(exp, this.key, this.seed)
            progress.parent.mkdir(parents=True, exist_ok=True)
            result = prepare_run(trained, space.task, Path(cache_dir), checkpoint=progress, built=(student, task),
                                 placement=placement).train()
            if result.status != "complete":  # recorded as failed (the statistics leave it out and say so)
                record({"alpha": None, "config": config.to_dict(), "status": FAILED, "failure": result.failure})
                return written
            weights = {k: v.detach().clone() for k, v in student.state_dict().items()}
            metrics = result.metrics
            save_checkpoint(final, {"model": weights, "config": json.dumps(config.to_dict()), "metrics": json.dumps(metrics)})
            progress.unlink(missing_ok=True)
            student.load_state_dict(zero_shot)
    if None in todo:
        record({"alpha": None, "config": config.to_dict(), **metrics})
    known = _recorded_curve(exp, this) if reused else {}
    for alpha in [a for a in todo if a is not None]:  # one row at a time: a kill loses at most this point
        if round(alpha, 6) in known:  # the baselines evaluated this very point of the same weights
            record({**known[round(alpha, 6)], "alpha": alpha})
            continue
        (row,) = wise_curve(student, zero_shot, weights, evaluator, alphas=(alpha,))
        record(row)
    return written


def _recorded_curve(experiment: Path, run: ConfirmRun) -> dict[float, dict[str, float]]:
    """The baselines' WiSE-FT points of the same weights (seed 0 of a front trial or of vanilla FT), by alpha."""
    from robusttune.metrics import is_metric

    return {round(float(row["alpha"]), 6): {k: v for k, v in row.items() if is_metric(k)}
            for row in read_records(experiment)
            if row.get("kind") == "wise" and row.get("source") == run.source and isinstance(row.get("alpha"), int | float)}


def _reused(experiment: Path, run: ConfirmRun) -> tuple[dict | None, dict[str, float] | None]:
    """Seed 0 of a trial is the trial (its final weights and metrics), seed 0 of vanilla FT the baselines' run, when
    their weights are on disk and their config is this run's; (None, None) otherwise."""
    from robusttune.metrics import is_metric
    from robusttune.training.checkpoint import load_checkpoint

    if run.seed != 0:
        return None, None
    if run.source == VANILLA:
        path = vanilla_checkpoint(experiment)
        if path.is_file():
            saved = load_checkpoint(path)
            if json.loads(saved.get("config", "{}")) == run.config and "metrics" in saved:
                return saved["model"], json.loads(saved["metrics"])
        return None, None
    row = latest_by_trial(experiment).get(run.source, {})
    path = latest_checkpoint(experiment, run.source)
    if path is None or row.get("config") != run.config or row.get("status") != "complete":  # a stopped trial: trained again
        return None, None
    return load_checkpoint(path)["model"], {k: v for k, v in row.items() if is_metric(k)}


def confirm_merge(experiment: str, space_yaml: str, cache_dir: str, run: dict[str, Any], threads: int) -> int:
    """Record one merge at one seed (a Ray task, or in-process): seed 0 from its recorded row, seed s by its rule
    over its members' weights of seed s; returns the rows written (0 or 1)."""
    import torch

    from robusttune.metrics import ID_VAL, is_metric
    from robusttune.search.merges import MergeBench, merge_weights
    from robusttune.training.checkpoint import load_checkpoint

    torch.set_num_threads(max(1, threads))
    exp = Path(experiment)
    this = MergeRun(run["source"], tuple((t, k) for t, k in run["members"]), int(run["seed"]))
    if (this.key, this.seed) in recorded(exp):
        return 0
    common = {"kind": CONFIRM_KIND, "config_key": this.key, "source": this.source, "method": this.source,
              "seed": this.seed, "alpha": None}
    if this.seed == 0:  # the merge itself
        (row,) = [r for r in read_records(exp) if r.get("kind") == MERGE_KIND and r.get("method") == this.source]
        append_record(exp, {**common, "members": row["members"], "eval_images": row.get("eval_images", {}),
                            **{k: v for k, v in row.items() if is_metric(k)}})
        return 1
    points = {(r["config_key"], int(r["seed"])): r for r in read_records(exp)
              if is_confirm_row(r) and r.get("alpha") is None}
    keys = dict(this.members)
    member_rows = {trial: points.get((key, this.seed)) for trial, key in keys.items()}
    lost = [t for t, r in member_rows.items() if r is None or r.get("status") == FAILED
            or not confirm_weights(exp, keys[t], this.seed).is_file()]
    if lost:
        append_record(exp, {**common, "status": FAILED,
                            "failure": f"member(s) {', '.join(lost)} have no weights at seed {this.seed}"})
        return 1
    candidates = sorted(((t, float(r[ID_VAL])) for t, r in member_rows.items()), key=lambda c: (-c[1], c[0]))
    bench = MergeBench.build(parse_space_text(space_yaml), Path(cache_dir), exp)
    merged, members, _ = merge_weights(this.source, candidates,
                                       lambda t: load_checkpoint(confirm_weights(exp, keys[t], this.seed))["model"],
                                       bench.zero_shot, bench.held_out)
    metrics, sizes = bench.evaluate(merged)
    if (this.key, this.seed) in recorded(exp):  # a task of a killed driver, still finishing, wrote it meanwhile
        return 0
    append_record(exp, {**common, "members": members, "eval_images": sizes, **metrics})
    return 1


def run_confirmation(experiment: Path, space: SearchSpace, space_text: str, cache_dir: Path, settings: Confirm, *,
                     trial_ids: list[str] | None = None, use_ray: bool = True) -> int:
    """Plan the runs and compute what the records lack; returns the number of rows written. With Ray: one task per
    run with the space's per-trial resources, submitted together; the merges after their members, as a second wave."""
    latest = latest_by_trial(experiment)
    chosen = select_trials(space, latest, top=settings.top, trial_ids=trial_ids, per_method=settings.per_method)
    runs = plan_runs(space, latest, chosen, settings.seeds)
    members, merges = plan_merges(experiment, latest, settings.merges, settings.seeds, runs)
    done = recorded(experiment)
    todo = [r for r in [*runs, *members] if missing_alphas(r, space, done)]
    merges_todo = [m for m in merges if missing_alphas(m, space, done)]
    log.info("confirmation: %d configuration(s) x %d seed(s) and zero-shot, %d merge(s); %d run(s) to do",
             len(chosen) + 1, settings.seeds, len(settings.merges), len(todo) + len(merges_todo))
    threads = max(1, int(space.resources.cpu))
    common = (str(experiment.resolve()), space_text, str(cache_dir))
    from robusttune import progress

    with progress.bar("confirmation", len(todo) + len(merges_todo), unit="run") as bar:  # none under --json
        written = 0
        for function, wave in ((confirm_one, todo), (confirm_merge, merges_todo)):
            written += _run_wave(function, [(*common, r.to_dict(), threads) for r in wave], space, bar, use_ray)
        return written


def _run_wave(function, jobs: list[tuple], space: SearchSpace, bar, use_ray: bool) -> int:
    """Run ``function`` on each job (one Ray task each with the space's per-trial resources, submitted together;
    in-process without Ray); returns the rows written."""
    if not (use_ray and jobs):
        written = 0
        for job in jobs:
            written += function(*job)
            bar.update(1)
        return written
    import ray

    from robusttune.search.remote import ray_get

    task = ray.remote(num_cpus=space.resources.cpu, num_gpus=space.resources.gpu, max_retries=0)(function)
    pending, written = [task.remote(*job) for job in jobs], 0
    while pending:
        finished, pending = ray.wait(pending, num_returns=1)
        written += int(ray_get(finished[0]))
        bar.update(1)
    return written
