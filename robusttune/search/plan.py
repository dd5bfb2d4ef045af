"""What a sweep will cost, before it runs: device-hours per trial and for the sweep, what bounds a trial (the device
or its data loader), the serial tail after the trials, checkpoint writes, the storage, and what the early-stopping
scheduler is expected to save.

The plan rests on measurements on this machine (``robusttune.search.calibration``: each method's step, one
evaluation batch, the loader, the storage's write rate), cached in ``<cache>/plans/`` (``calibrate_again=True``
measures again).

From those: a trial's training, evaluations and checkpoint writes (``latest.pt`` = weights + AdamW's two moments at
every evaluation, and at most a ``best.pt`` each time), the serial tail after the trials (the zero-shot
evaluation, the vanilla FT baseline's training and evaluations, and the WiSE-FT curves: ``len(wise_alphas) x (1 +
expected front size)`` full evaluations) and the confirmation stage when the space asks for one. Every term is in
the plan, with the one that dominates.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from robusttune.config import TrainConfig
from robusttune.search.baselines import vanilla_config
from robusttune.search.calibration import calibrate, fit_of, ranks_of, step_chunks, storage_write_rate
from robusttune.methods import MergeName
from robusttune.search.merges import MERGES
from robusttune.space import SearchSpace
from robusttune.metrics import ID_TEST, ID_VAL, ood_metric

MIX_SAMPLES = 256  # configurations drawn from the space to weigh its methods
EXACT_FRONT_TRIALS = 100_000  # expected front sizes are summed exactly up to this many trials, then approximated

# Published image counts of the datasets a space's folders hold, for planning where the folders are missing
# (ObjectNet: the 113 classes that overlap ImageNet, as robusttune evaluates it).
NOMINAL_IMAGES = {"imagenet_train": 1_281_167, "imagenet_val": 50_000, "imagenet_v2": 10_000, "imagenet_r": 30_000,
                  "imagenet_sketch": 50_889, "imagenet_a": 7_500, "objectnet": 18_574}


def method_key(config: TrainConfig) -> str:
    """What decides a step's cost: the passes it makes (LP-FT is timed as its costlier stage, fine-tuning)."""
    from robusttune.methods import MaskedDistill

    m = config.method
    if not isinstance(m, MaskedDistill):
        return "ft" if m.name.value == "lp_ft" else m.name.value
    if m.w_distill == 0:
        return "ft"
    if m.region.value == "none":
        return f"fd-clean-{m.distill.value}"
    cam = m.cam.value if m.uses_cam else "no-cam"
    return f"{m.region.value if m.uses_cam else 'random'}-{m.refill.value}-{cam}-{m.distill.value}"


def method_mix(space: SearchSpace, samples: int = MIX_SAMPLES) -> dict[str, tuple[TrainConfig, float]]:
    """Each method's share of the space under uniform sampling, with one configuration of it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, TrainConfig] = {}
    counts: Counter[str] = Counter()
    for _ in range(samples if space.parameters else 1):
        trial = study.ask()
        space.define_by_run(trial)
        config = space.trial_config(dict(trial.params), seed=0)
        key = method_key(config)
        seen.setdefault(key, config)
        counts[key] += 1
    total = sum(counts.values())
    return {key: (seen[key], counts[key] / total) for key in sorted(counts)}


def _evaluation_grid(config: TrainConfig, n_train: int) -> tuple[int, int]:
    """``(total steps, steps between evaluations)`` of a trial (as ``robusttune.training.loop`` decides them)."""
    from robusttune.training.loop import steps_per_epoch, total_steps

    return total_steps(config, n_train), config.eval_every or steps_per_epoch(config, n_train)


def evaluation_count(config: TrainConfig, n_train: int) -> int:
    """How many evaluations a trial makes: at every multiple of its interval and at the last step (once when it
    trains no step). Arithmetic: the cost does not grow with ``steps``."""
    total, every = _evaluation_grid(config, n_train)
    return total // every + (total % every != 0) if total else 1


def evaluation_steps(config: TrainConfig, n_train: int) -> list[int]:
    """The steps at which a trial evaluates (as ``robusttune.training.loop`` does). A list as long as the trial has
    evaluations: the plan itself only needs ``evaluation_count``."""
    total, every = _evaluation_grid(config, n_train)
    if not total:
        return [0]
    return [*range(every, total + 1, every), *([total] if total % every else [])]


def _rung_count(grace: int, eta: float, horizon: int) -> int:
    """How many rungs ``grace * eta**k`` (k = 0, 1, ...) lie below ``horizon`` (> grace): by logarithm, then
    checked exactly, so an ``eta`` close to 1 costs no more than a large one."""
    count = max(1, math.ceil(math.log(horizon / grace) / math.log(eta)))
    while grace * eta**count < horizon:
        count += 1
    while count > 1 and grace * eta ** (count - 1) >= horizon:
        count -= 1
    return count


def scheduler_fraction(space: SearchSpace, evaluations: int) -> float:
    """Expected share of a full trial that a trial runs under ASHA / MO-ASHA: past rung k, a 1/eta of the trials
    go on (rungs at grace * eta^k evaluations, below the trial's length).

    Between rungs k and k + 1 the survivors (eta^-(k+1) of the trials) run grace * eta^k * (eta - 1) evaluations:
    grace * (1 - 1/eta) whatever k, so the sum has a closed form and costs nothing however many rungs there are."""
    config = space.scheduler
    if config.name == "none" or evaluations <= config.grace_period:
        return 1.0
    horizon = min(evaluations, config.max_t or evaluations)
    grace, eta = config.grace_period, config.reduction_factor
    rungs = _rung_count(grace, eta, horizon)
    last = grace * eta ** (rungs - 1)
    expected = grace + (rungs - 1) * grace * (1 - 1 / eta) + eta ** -rungs * (evaluations - last)
    return expected / evaluations


def survivor_fraction(space: SearchSpace, evaluations: int) -> float:
    """Expected share of the trials that run to the end (complete) under ASHA / MO-ASHA: 1/eta past every rung."""
    config = space.scheduler
    if config.name == "none" or evaluations <= config.grace_period:
        return 1.0
    horizon = min(evaluations, config.max_t or evaluations)
    return config.reduction_factor ** -_rung_count(config.grace_period, config.reduction_factor, horizon)


def expected_front_size(points: int, objectives: int) -> float:
    """Expected number of non-dominated points among ``points`` with ``objectives`` independent, continuous values
    (1 objective: 1; 2: the harmonic number H_n; m: sum_k A(k, m-1) / k). Trade-offs between the objectives make
    real fronts larger, correlated objectives smaller."""
    if points <= 0:
        return 0.0
    if objectives <= 1:
        return 1.0
    n = min(points, EXACT_FRONT_TRIALS)
    values = [1.0] * n  # A(k, 1) for k = 1..n
    for _ in range(objectives - 1):
        total, summed = 0.0, []
        for k, value in enumerate(values, start=1):
            total += value / k
            summed.append(total)
        values = summed
    if points == n:
        return values[-1]
    # past the exact range: A(n, m) grows like (ln n)^(m-1) / (m-1)!; scale the exact value at the cap by it
    return values[-1] * (math.log(points) / math.log(n)) ** (objectives - 1)


@dataclass
class Plan:
    space: str
    trials: int
    concurrency: int
    steps_per_trial: int
    evaluations_per_trial: int
    eval_images_per_trial: int
    trial_hours: float  # a full-length trial's startup, training and evaluations (the loader bound applied)
    sweep_hours: float  # device-hours of the trials (after the scheduler's expected saving) and the tail
    wall_hours: float  # the trials at the space's concurrency, then the tail
    eval_share: float
    scheduler_saving: float
    storage_bytes_per_trial: int
    storage_bytes: int
    methods: dict[str, float]  # share of each method
    calibration: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, Any] = field(default_factory=dict)  # training images, each evaluation set's, and where from
    ranks: int = 1  # data-parallel processes (devices) per trial; hours are device-hours over all of them
    bound: str | None = None  # what bounds a trial's training: "device" or "loader" (None: loader not measured)
    loader: dict[str, Any] = field(default_factory=dict)  # the loader's rate against what the device takes
    method_steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method: device, loader, bound
    trial_checkpoint_hours: float = 0.0  # a full-length trial's checkpoint writes
    checkpoints: dict[str, Any] = field(default_factory=dict)
    tail: dict[str, Any] = field(default_factory=dict)  # the baselines and WiSE-FT curves after the trials
    confirmation: dict[str, Any] = field(default_factory=dict)  # the confirmation stage (none unless the space asks)
    terms: dict[str, float] = field(default_factory=dict)  # the sweep's device-hours by what they pay for
    dominant: str = ""  # the largest term
    memory: dict[str, Any] = field(default_factory=dict)  # robusttune.search.memory.MemoryPlan: peaks per method

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _missing(path: str) -> bool:
    return not Path(path).exists()


def _sizes(space: SearchSpace, cache_dir: Path) -> tuple[int, int, dict[str, int], str]:
    """Training images, classes, each evaluation set's size, and where the counts come from, without building the
    model. ImageNet folders (or packs) that are missing count their dataset's published size."""
    if space.task.imagenet is None:
        from robusttune.training.tasks import build_task

        _, task = build_task(space.task, cache_dir)
        return len(task.train), task.num_classes, {s.metric: len(s) for s in task.eval_sets}, "the mini world"
    from robusttune.training.tasks import scan_set

    spec = space.task.imagenet
    missing: list[str] = []

    def size(kind: str, path: str, nominal: str) -> int:
        if _missing(path):
            missing.append(path)
            return NOMINAL_IMAGES[nominal]
        return scan_set(kind, path, cache_dir).size

    train = size("imagenet", spec.train_dir, "imagenet_train")
    sizes = {ID_VAL: spec.val_holdout, ID_TEST: size("imagenet", spec.val_dir, "imagenet_val")}
    sizes |= {ood_metric(name.value): size(name.value, path, name.value) for name, path in spec.ood_dirs.items()}
    source = "the folders" if not missing else f"published dataset sizes for the missing {', '.join(missing)}"
    return train - spec.val_holdout, 1000, sizes, source


def _train_images(config: TrainConfig, n_train: int, classes: int) -> int:
    if config.train_subset is None:
        return n_train
    # per class: an upper bound when some class has fewer images
    return (round(config.train_subset * n_train) if config.train_subset < 1
            else min(n_train, int(config.train_subset) * classes))


def _eval_images(config: TrainConfig, eval_sizes: dict[str, int], evaluations: int) -> tuple[int, int]:
    """``(images of a trial's evaluations, images of one full evaluation)``: intermediate ones on ``eval_subset``."""
    full = sum(eval_sizes.values())
    subset = sum(min(n, config.eval_subset) for n in eval_sizes.values()) if config.eval_subset else full
    return subset * (evaluations - 1) + full, full


def plan(space: SearchSpace, cache_dir: Path, *, trials: int | None = None, calibrate_again: bool = False,
         gpu_memory: float | None = None, gpu: str | None = None) -> Plan:
    """The sweep's plan. ``gpu_memory`` (bytes; ``gpu`` says where it came from): each method's and the baselines'
    peak memory is checked against it, and a space that cannot fit is refused in one line (naming the
    ``accum_steps`` that would) before anything is measured."""
    from robusttune.search.memory import memory_plan, check_fits
    from robusttune.training.loop import total_steps

    mix = method_mix(space)
    memory = memory_plan(space, {**{key: config for key, (config, _) in mix.items()},
                                 "vanilla FT baseline": vanilla_config(space)}, cache_dir, gpu_memory=gpu_memory, gpu=gpu)
    check_fits(memory)
    n_train, classes, eval_sizes, sizes_source = _sizes(space, cache_dir)
    config = next(iter(mix.values()))[0]
    n_train = _train_images(config, n_train, classes)
    ranks = ranks_of(space)
    vanilla = vanilla_config(space)  # the baselines' own
    vanilla_key = method_key(vanilla)
    calibration = calibrate(space, {**mix, vanilla_key: mix.get(vanilla_key, (vanilla, 0.0))}, cache_dir,
                            n_train=n_train, refresh=calibrate_again)
    storage = storage_write_rate(cache_dir, refresh=calibrate_again)

    # the loader against the device: with workers it overlaps the step (the slower bounds), without them it adds to
    # it; in-memory fetches were timed inside the step already. Per process: each data-parallel rank has its own.
    loader = calibration.loader
    rate = loader.get("images_per_s")

    def bounded(device_s: float, images: float) -> tuple[float, float | None]:
        if not rate:
            return device_s, None
        load_s = images / rate
        if loader.get("in_step"):
            return device_s, load_s
        return (max(device_s, load_s) if loader.get("overlaps_step") else device_s + load_s), load_s

    images_per_step = sum(step_chunks(config, n_train, ranks))  # one process's
    method_steps = {}
    for name, seconds in calibration.step_seconds.items():
        effective, load_s = bounded(seconds, images_per_step)
        method_steps[name] = {"step_seconds": effective, "device_seconds": seconds, "loader_seconds": load_s,
                              "bound": None if load_s is None else ("loader" if load_s > seconds else "device"),
                              "fit": calibration.step_fits.get(name, {}).get("how")}
    step_s = {name: method_steps[name]["step_seconds"] for name in method_steps}
    device_step = sum(share * calibration.step_seconds[name] for name, (_, share) in mix.items())
    load_step = images_per_step / rate if rate else None
    bound = None if load_step is None else ("loader" if load_step > device_step else "device")
    eval_per_image, _ = bounded(calibration.eval_seconds_per_image, 1)  # on one device

    # one trial, in device-hours: its processes train and evaluate their shares side by side
    evaluations = evaluation_count(config, n_train)
    eval_images, full_images = _eval_images(config, eval_sizes, evaluations)
    if space.objective.wise is not None:  # every evaluation evaluates each alpha's interpolation too
        eval_images *= 1 + len(space.objective.wise.alphas)
    steps = total_steps(config, n_train)
    train_s = ranks * sum(share * steps * step_s[name] for name, (_, share) in mix.items())
    eval_s = eval_images * eval_per_image
    startup = ranks * calibration.startup_seconds
    trial_s = startup + train_s + eval_s

    # checkpoints: at every evaluation latest.pt (weights + AdamW's two moments) and at most a best.pt (weights), by
    # one process while the others wait; an ended trial's latest.pt is rewritten without the optimizer state (unless
    # it keeps 'all')
    weights = calibration.parameters * 4
    write_rate = float(storage["bytes_per_s"])
    per_evaluation = 3 * weights + weights
    at_end = 0 if config.checkpoints.value == "all" else weights
    trial_checkpoint_s = ranks * (evaluations * per_evaluation + at_end) / write_rate

    fraction = scheduler_fraction(space, evaluations)
    trials = trials or space.budget.trials
    concurrency = min(space.budget.concurrency, trials)

    # the serial tail, on one device: zero-shot evaluation, the vanilla FT baseline, WiSE-FT curves of it and of the
    # front's trials
    full_eval_s = full_images * eval_per_image
    vanilla_steps = total_steps(vanilla, n_train)
    vanilla_step = calibration.step_seconds[vanilla_key]
    if ranks > 1:  # the baseline trains the whole batch on one device: read its micro-batches off the fit
        described = calibration.step_fits.get(vanilla_key)
        vanilla_step = ranks * vanilla_step if described is None else (
            described.get("update_seconds", 0.0) + sum(fit_of(described).at(s) for s in step_chunks(vanilla, n_train)))
    vanilla_step, _ = bounded(vanilla_step, min(vanilla.batch_size, n_train))
    vanilla_evaluations = evaluation_count(vanilla, n_train)
    vanilla_eval_images, _ = _eval_images(vanilla, eval_sizes, vanilla_evaluations)
    complete = trials * survivor_fraction(space, evaluations)
    front = expected_front_size(max(1, round(complete)), len(space.objective.metrics))
    wise_evaluations = len(space.baselines.wise_alphas) * (1 + front)
    # one Ray task for the references (zero-shot, vanilla FT and its curve), one per front trial's curve: each starts
    # its own process; they run side by side, as many at once as the space's concurrency
    # and one per merge (robusttune.search.merges): the soups and Model Stock are evaluated once on every set, and
    # the greedy soup tries each complete trial on the ID validation split
    merges_s = (len(MERGES) * calibration.startup_seconds + len(MERGES) * full_eval_s
                + complete * eval_sizes.get(ID_VAL, 0) * eval_per_image)
    tasks = 1 + front + len(MERGES)
    tail_parts = {"startup_s": (1 + front) * calibration.startup_seconds, "zero_shot_eval_s": full_eval_s,
                  "vanilla_train_s": vanilla_steps * vanilla_step,
                  "vanilla_eval_s": vanilla_eval_images * eval_per_image,
                  "wise_s": wise_evaluations * full_eval_s, "checkpoint_s": weights / write_rate, "merges_s": merges_s}
    tail_s = sum(tail_parts.values())
    curve_s = calibration.startup_seconds + len(space.baselines.wise_alphas) * full_eval_s  # one front trial's task
    # the references' task while the others run beside it, or all tasks sharing the trials' slots
    tail_wall_s = max(tail_s - front * curve_s - merges_s, tail_s / concurrency)
    tail = {"hours": tail_s / 3600, "wall_hours": tail_wall_s / 3600, "tasks": tasks, **tail_parts, "vanilla_steps": vanilla_steps,
            "vanilla_evaluations": vanilla_evaluations, "expected_complete_trials": complete,
            "expected_front": front, "wise_alphas": len(space.baselines.wise_alphas),
            "wise_evaluations": wise_evaluations, "full_evaluation_images": full_images}
    confirmation = _confirmation(space, complete, front, concurrency, startup=calibration.startup_seconds,
                                 run_s=train_s + eval_s, vanilla_s=tail_parts["vanilla_train_s"] + tail_parts["vanilla_eval_s"],
                                 full_eval_s=full_eval_s, write_s=weights / write_rate)

    terms_s = {"startup": trials * startup, "train": trials * fraction * train_s, "eval": trials * fraction * eval_s,
               "checkpoints": trials * ranks * (fraction * evaluations * per_evaluation + at_end) / write_rate,
               "tail": tail_s, "confirm": confirmation["seconds"]}
    terms = {name: seconds / 3600 for name, seconds in terms_s.items()}
    sweep_h = sum(terms.values())
    wall_h = ((sweep_h - terms["tail"] - terms["confirm"]) / (concurrency * ranks) + tail_wall_s / 3600
              + confirmation["wall_seconds"] / 3600)
    kept = {"all": 4 * weights, "best": 2 * weights, "final": weights}[config.checkpoints.value]
    return Plan(
        space.name, trials, concurrency, steps, evaluations, eval_images, trial_s / 3600, sweep_h, wall_h,
        eval_s / (train_s + eval_s) if train_s + eval_s else 0.0, 1 - fraction, kept,
        (trials - concurrency) * kept + concurrency * 4 * weights + weights,
        {name: share for name, (_, share) in mix.items()}, asdict(calibration),
        sizes={"train": n_train, "eval": eval_sizes, "source": sizes_source}, ranks=ranks, bound=bound,
        loader={**loader, "device_images_per_s": images_per_step / device_step if device_step else None,
                "loader_seconds_per_step": load_step, "device_seconds_per_step": device_step},
        method_steps=method_steps, trial_checkpoint_hours=trial_checkpoint_s / 3600,
        checkpoints={"bytes_per_evaluation": per_evaluation, "bytes_at_end": at_end, "write": storage,
                     "seconds_per_evaluation": per_evaluation / write_rate, "trial_seconds": trial_checkpoint_s},
        tail=tail, terms=terms, dominant=max(terms, key=terms.get), confirmation=confirmation, memory=memory.to_dict())


def _confirmation(space: SearchSpace, complete: float, front: float, concurrency: int, *, startup: float, run_s: float,
                  vanilla_s: float, full_eval_s: float, write_s: float) -> dict[str, Any]:
    """The confirmation stage's cost (``robusttune.search.confirm``): the top configurations (``per_method``: the top
    of each method the space can sample) and vanilla FT at seeds 1..K-1 trained again (seed 0 is the trial, or the
    baselines' run), each run with its WiSE-FT curve (seed 0's curves of front trials and vanilla FT are the
    baselines'), zero-shot evaluated once; each confirmed merge's members trained at seeds 1..K-1 without a curve
    (their count: Model Stock's 2; the soups' upper bound, every complete trial) and the merge evaluated at each
    seed (the greedy soup once more per member, on ID validation, counted as a full evaluation); one Ray task per
    run, side by side at the space's concurrency. A data-parallel space's runs train in one process each
    (device-hours alike)."""
    if space.confirm is None:
        return {"seeds": 0, "top": 0, "runs": 0, "trained_runs": 0, "seconds": 0.0, "wall_seconds": 0.0}
    seeds, alphas = space.confirm.seeds, len(space.baselines.wise_alphas)
    method = space.parameters.get("method")
    groups = len(method.choices or ()) if space.confirm.per_method and method is not None else 1
    top = min(float(space.confirm.top) * max(1, groups), max(1.0, complete))
    members = {m: min(2.0, complete) if m == MergeName.MODEL_STOCK else complete for m in space.confirm.merges}
    member_runs = sum(members.values()) * (seeds - 1)  # an upper bound: members confirmed in their own right count twice
    merge_evals = sum((1 + (n if m == MergeName.GREEDY_SOUP else 0)) * (seeds - 1) for m, n in members.items())
    trained = (top + 1) * (seeds - 1) + member_runs
    curves = (top + 1) * seeds - (min(top, front) + 1)  # seed 0's curves of front trials and vanilla FT are reused
    runs = (top + 1) * seeds + 1 + member_runs + len(members) * seeds
    seconds = (runs * startup + (top * (seeds - 1) + member_runs) * run_s + (seeds - 1) * vanilla_s
               + (curves * alphas + merge_evals + 1) * full_eval_s + trained * write_s)
    longest = startup + max(run_s, vanilla_s) + alphas * full_eval_s
    return {"seeds": seeds, "top": top, "runs": runs, "trained_runs": trained, "curves": curves,
            "merges": len(members), "seconds": seconds, "wall_seconds": max(longest, seconds / max(1, concurrency))}


def check_space_fits(space, cache_dir: Path | None, *, gpu_memory: float | None, gpu: str | None) -> Any:
    """For ``sweep`` and ``launch``: refuse (one line) a space whose trials or vanilla FT baseline cannot fit in
    ``gpu_memory`` bytes; nothing when no GPU memory is known."""
    if gpu_memory is None:
        return None
    from robusttune.search.memory import space_memory

    configs = {key: config for key, (config, _) in method_mix(space).items()}
    configs["vanilla FT baseline"] = vanilla_config(space)
    return space_memory(space, configs, cache_dir, gpu_memory=gpu_memory, gpu=gpu, refuse=True)
