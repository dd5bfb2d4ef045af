"""Search spaces as YAML: schema, validation, lookup by name or path, and the Optuna define-by-run function.

Schema (every key optional unless marked; unknown keys are rejected with a suggestion):

    name: demo                        # label (defaults to the file name)
    description: ...
    task: {world: {...}} | {imagenet: {...}}   # robusttune.config.TaskSpec; default: the built-in mini world
    objective:
      metrics: [id_val_acc, ood_mean] # objectives, one direction each (multi-objective: Pareto)
      directions: [max, max]
      scalarization: {kind: weighted_sum | chebyshev, weights: [0.5, 0.5]}   # reported as metric 'objective'
      wise: {alphas: [0.3, 0.5, 0.7]} # score each trial by its own WiSE-FT curve's best point (see WiseObjective)
      constraints: ["id_val_acc >= zero_shot + 1.0"]   # what a trial must satisfy (robusttune.constraints)
    sampler: {name: tpe | nsga2 | gp | random | grid, seed: 0, options: {...}}  # options go to the Optuna sampler
    parameters:                       # TrainConfig keys, ``method`` and the methods' knobs (robusttune.methods)
      region: {type: categorical, choices: [object, context, random, none]}
      mask_ratio: {type: float, low: 0.1, high: 0.9, when: {region: [object, context, random]}}
      w_distill: {type: float, low: 0.1, high: 100, log: true}
      steps: {type: int, low: 50, high: 150, step: 50}
    fixed: {batch_size: 64, steps: 150, eval_every: 50}   # TrainConfig keys (and knobs) held constant
    budget: {trials: 12, concurrency: 1}
    resources: {cpu: 2, gpu: 0, workers: 1}   # per trial (per worker with workers > 1): a fraction of one GPU, or one
                                      # GPU (each data-parallel worker: a whole one); more GPUs: more workers
    scheduler: {name: none | asha | mo_asha, grace_period: 1, reduction_factor: 3, max_t: 6, tie_break: eps_net}
                                      # in evaluations; asha: the scalar objective; mo_asha: the objectives
    baselines: {wise_alphas: [0.0, 0.1, ..., 1.0]}   # the WiSE-FT curves' mixing coefficients (one evaluation each)

A search space is plain validated data (layer 0: no torch, ray or optuna); ``robusttune.search`` turns it into
Optuna suggestions and Ray Tune trials.

``when`` makes a parameter conditional: it is sampled only when an earlier categorical parameter took one of
the listed values (e.g. the mask ratio only for masking regions); otherwise the TrainConfig default applies.

Methods: a trial trains ``method`` (fixed, e.g. ``fixed: {method: lp_ft}``, or searched, ``method: {type:
categorical, choices: [ft, l2sp, masked_distill]}``; default the paper's ``masked_distill``). Knobs are named flat
(``w_distill``, ``strength``) and go under the trial's method (``robusttune.config.with_method``); a knob must
belong to every method it can be sampled for (``when: {method: [...]}`` otherwise).

A space file is read by the strict loader of ``robusttune.config`` (one non-empty document, no duplicated key, at
most 1 MiB, 100,000 values and 32 levels) and bounded here so that validating it is cheap: at most 1,000 values in
a ``choices``, ``grid`` or ``when`` list, 100,000 grid points, 100,000 trials, 10,000 at a time, 101 WiSE-FT alphas;
numbers are finite and never booleans.
"""

from __future__ import annotations

import difflib
import math
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from robusttune.bounds import MAX_SEED, check_alphas
from robusttune.constraints import MAX_CONSTRAINTS, Constraint, parse_constraints
from robusttune.methods import DEFAULT_METHOD, METHODS, MergeName, MethodName, all_knobs, method_name
from robusttune.config import (TRAIN_KEYS, Frozen, TaskSpec, TrainConfig, with_method, load_mapping_and_text, load_yaml_text, parse,
                               shorten)
from robusttune.errors import ConfigError
from robusttune.metrics import ID_METRICS, ID_VAL, OOD_MEAN, WISE_ALPHA, is_ood_set, wise_key


# Upper bounds that keep validating a space, and building its sampler, fast and small (see also the loader's
# robusttune.config.MAX_FILE_BYTES / MAX_NODES / MAX_DEPTH):
MAX_TRIALS = 100_000  # budget.trials
MAX_CONCURRENCY = 10_000  # budget.concurrency: trials at a time
MAX_CHOICES = 1_000  # values in one parameter's choices, grid or 'when' list
MAX_GRID_POINTS = 100_000  # the grid sampler's combinations (Optuna lists them all when it is built)
MAX_WISE_ALPHAS = 101  # WiSE-FT mixing coefficients (one evaluation each): steps of 0.01
MAX_CONFIRM_SEEDS, MAX_CONFIRM_TOP = 100, 100  # a confirmation trains seeds x (top + 1) runs


class Direction(StrEnum):
    MAX = "max"
    MIN = "min"


class Scalarization(Frozen):
    kind: Literal["weighted_sum", "chebyshev"] = "weighted_sum"
    weights: tuple[float, ...] | None = None


class WiseObjective(Frozen):
    """Score each trial by its own WiSE-FT curve instead of its raw weights. At every evaluation (so the scheduler's
    rungs and the searcher see the same numbers) the interpolations at ``alphas`` between the zero-shot and the
    current weights are evaluated too, on the same images: one more evaluation per alpha. The objective metrics are
    then those of the curve's best point under the scalarisation, the raw weights (alpha 1) included, reported as
    ``wise_<metric>`` with its ``wise_alpha``; the trial's own metrics are kept as they are."""

    alphas: tuple[float, ...] = Field((0.3, 0.5, 0.7), min_length=1, max_length=MAX_WISE_ALPHAS)

    @model_validator(mode="after")
    def _check(self) -> WiseObjective:
        check_alphas(self.alphas, "objective.wise.alphas")
        if 1.0 in self.alphas:
            raise ValueError("objective.wise.alphas: alpha 1 (the trial's own weights) is always a candidate; "
                             "leave it out")
        return self


class Objective(Frozen):
    metrics: tuple[str, ...] = (ID_VAL, OOD_MEAN)
    directions: tuple[Direction, ...] = (Direction.MAX, Direction.MAX)
    scalarization: Scalarization = Scalarization()
    wise: WiseObjective | None = None
    constraints: tuple[str, ...] = Field((), max_length=MAX_CONSTRAINTS, description=(
        "what every trial must satisfy: '<metric> >= <bound>' or '<= <bound>', the bound an accuracy (a fraction) or "
        "zero_shot / vanilla_ft plus or minus points, e.g. 'id_val_acc >= zero_shot + 1.0' (robusttune.constraints)"))

    @model_validator(mode="after")
    def _check(self) -> Objective:
        parse_constraints(self.constraints)  # unknown metric or reference, contradictory bounds: one line
        if not self.metrics or len(self.metrics) != len(self.directions):
            raise ValueError("objective.metrics and objective.directions must have the same, non-zero length")
        for metric in self.metrics:
            if metric not in (*ID_METRICS, OOD_MEAN) and not is_ood_set(metric):
                raise ValueError(f"unknown objective metric {shorten(repr(metric))} (use id_acc, id_val_acc, ood_mean "
                                 f"or ood_<set>)")
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError("objective.metrics must name each metric once")
        weights = self.scalarization.weights
        if weights is not None and (len(weights) != len(self.metrics) or any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ValueError("objective.scalarization.weights must be one non-negative weight per metric, not all zero")
        return self

    @property
    def bounds(self) -> tuple[Constraint, ...]:
        """The constraints, parsed (``robusttune.constraints``)."""
        return parse_constraints(self.constraints)

    @property
    def keys(self) -> tuple[str, ...]:
        """The names under which trials report the objective metrics: the metrics themselves, or with ``wise`` those
        of the best point of the trial's WiSE-FT curve (what the searcher, the schedulers and the fronts read)."""
        return tuple(wise_key(m) for m in self.metrics) if self.wise is not None else self.metrics

    def value(self, metrics: dict[str, float]) -> float:
        """The scalarisation of ``metrics`` (by metric name; higher is better): weighted sum or weighted Chebyshev
        (the worst weighted term)."""
        weights = self.scalarization.weights or tuple(1.0 / len(self.metrics) for _ in self.metrics)
        signed = [metrics[m] if d is Direction.MAX else -metrics[m] for m, d in zip(self.metrics, self.directions)]
        if self.scalarization.kind == "chebyshev":
            return min(w * v for w, v in zip(weights, signed) if w > 0)
        return sum(w * v for w, v in zip(weights, signed))

    def scalar(self, reported: dict[str, float]) -> float:
        """The scalarised objective of a trial's report (its ``keys``)."""
        return self.value({m: reported[k] for m, k in zip(self.metrics, self.keys)})

    def reported(self, metrics: dict[str, float], curve: list[dict[str, float]] | tuple = ()) -> dict[str, float]:
        """What an evaluation reports: its ``metrics`` and, with ``wise``, every metric of the best point among its
        WiSE-FT ``curve`` (rows ``{alpha, <metric>: ...}``) and the raw weights (alpha 1; preferred on a tie, then
        the higher alpha), as ``wise_<metric>``, with its ``wise_alpha``."""
        if self.wise is None:
            return dict(metrics)
        points = [{"alpha": 1.0, **metrics}, *sorted(curve, key=lambda point: -point["alpha"])]
        best = max(points, key=self.value)  # the first of equals
        return {**metrics, **{wise_key(m): best[m] for m in metrics}, WISE_ALPHA: float(best["alpha"])}


class SamplerName(StrEnum):
    TPE = "tpe"
    NSGA2 = "nsga2"
    GP = "gp"
    BOTORCH = "botorch"  # an extra: robusttune[botorch]
    RANDOM = "random"
    GRID = "grid"


class Sampler(Frozen):
    name: SamplerName = SamplerName.TPE
    seed: int = Field(0, ge=0, lt=MAX_SEED)
    options: dict[str, Any] = {}


class Parameter(Frozen):
    type: Literal["categorical", "float", "int"]
    choices: tuple[Any, ...] | None = Field(None, max_length=MAX_CHOICES)
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    grid: tuple[Any, ...] | None = Field(None, max_length=MAX_CHOICES)  # the grid sampler's values (numeric parameters)
    when: dict[str, Annotated[tuple[Any, ...], Field(min_length=1, max_length=MAX_CHOICES)]] | None = None

    @model_validator(mode="after")
    def _check(self) -> Parameter:
        for value in self.choices or ():
            if not isinstance(value, CHOICE_TYPES):  # what Optuna stores: a list, a mapping or a date would not be
                raise ValueError(f"choices must be strings, numbers or null, got {shorten(repr(value))}")
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("a categorical parameter takes 'choices', not 'low'/'high'/'step'/'log'")
            if self.grid is not None:
                raise ValueError("a categorical parameter takes 'choices', not 'grid' (a grid sweep uses its choices)")
        else:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(f"a {self.type} parameter needs low < high, got low={self.low}, high={self.high}")
            if self.log and self.low <= 0:
                raise ValueError(f"a log-scale parameter needs low > 0, got {self.low}")
            if self.log and self.step is not None:
                raise ValueError("a log-scale parameter takes no 'step' (Optuna samples it continuously in log space)")
            if self.choices is not None:
                raise ValueError(f"a {self.type} parameter takes 'low'/'high', not 'choices'")
            if self.type == "int":
                for what, value in (("low", self.low), ("high", self.high), ("step", self.step)):
                    if value is not None and not float(value).is_integer():
                        raise ValueError(f"an int parameter needs whole-number low, high and step, got {what}={value}")
            for value in self.grid or ():
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise ValueError(f"grid values of a {self.type} parameter must be finite numbers, got "
                                     f"{shorten(repr(value))}")
                if not self.low <= value <= self.high or self.type == "int" and not float(value).is_integer():
                    raise ValueError(f"grid values must be {'whole numbers ' if self.type == 'int' else ''}within "
                                     f"[low, high] = [{self.low}, {self.high}], got {value!r}")
        return self


CHOICE_TYPES = (str, int, float, type(None))  # bool is an int


class Budget(Frozen):
    trials: int = Field(12, ge=1, le=MAX_TRIALS, description="trials the sweep runs in all (failed ones included)")
    concurrency: int = Field(1, ge=1, le=MAX_CONCURRENCY, description="trials at a time (the machine or cluster may run fewer)")


class Resources(Frozen):
    """Per trial, or per worker of a trial trained on ``workers`` data-parallel processes (Ray Train)."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)
    workers: int = Field(1, ge=1, le=1024, description="data-parallel workers per trial (cpu and gpu are per worker)")

    @field_validator("gpu")
    @classmethod
    def _whole_gpus_above_one(cls, gpu: float) -> float:
        """Ray shares a GPU in fractions but gives more than one only whole: 0.5 and 2 are trials' shares, 1.5 is not."""
        if gpu > 1 and not float(gpu).is_integer():
            raise ValueError("above 1 must be a whole number of GPUs (Ray gives a trial a fraction of one GPU, or whole GPUs)")
        return gpu


SchedulerChoice = Literal["none", "asha", "mo_asha"]
SCHEDULERS = list(get_args(SchedulerChoice))


class Scheduler(Frozen):
    """Early stopping. ``asha``: Ray's ASHA on the scalar objective; ``mo_asha``: multi-objective ASHA on the
    objective metrics (robusttune.search.mo_asha). Times are in evaluations."""

    name: SchedulerChoice = "none"
    grace_period: int = Field(1, ge=1, description="evaluations before a trial can be stopped")
    # at least 1.1: Ray's ASHA and MO-ASHA keep a list of rungs, log(max_t / grace_period) / log(eta) long
    reduction_factor: float = Field(3.0, ge=1.1, le=100)
    max_t: int | None = Field(None, ge=1, description="stop every trial at this many evaluations (default: its own length)")
    tie_break: Literal["eps_net", "crowding"] = "eps_net"

    @model_validator(mode="after")
    def _check(self) -> Scheduler:
        if self.max_t is not None and self.max_t <= self.grace_period:
            raise ValueError(f"scheduler.max_t ({self.max_t}) must be larger than grace_period ({self.grace_period})")
        return self


class Baselines(Frozen):
    """What runs after the trials: zero-shot, vanilla fine-tuning and WiSE-FT curves at ``wise_alphas``."""

    wise_alphas: tuple[float, ...] = Field(tuple(round(0.1 * i, 1) for i in range(11)), max_length=MAX_WISE_ALPHAS)

    @model_validator(mode="after")
    def _check(self) -> Baselines:
        check_alphas(self.wise_alphas, "baselines.wise_alphas")
        return self


class Confirm(Frozen):
    """What runs after the trials and baselines to tell signal from noise: the ``top`` configurations of the front
    (by non-dominated rank, then crowding distance; with ``per_method``, the ``top`` of each method's trials),
    vanilla fine-tuning and zero-shot, each trained with ``seeds`` seeds (seed 0 of a trial is the trial itself),
    each with its WiSE-FT curve on ``baselines.wise_alphas``; and each merge of ``merges`` at the same seeds (its
    rule over its members' configurations trained at each seed)."""

    seeds: int = Field(3, ge=1, le=MAX_CONFIRM_SEEDS)
    top: int = Field(5, ge=1, le=MAX_CONFIRM_TOP)
    per_method: bool = False
    merges: tuple[MergeName, ...] = ()

    @field_validator("merges")
    @classmethod
    def _distinct(cls, merges: tuple[MergeName, ...]) -> tuple[MergeName, ...]:
        if len(set(merges)) != len(merges):
            raise ValueError("confirm.merges names a merge twice")
        return merges


class SearchSpace(Frozen):
    name: str = Field("space", description="the experiment's default name (runs/<name>)")
    description: str = Field("", description="free text, shown by status and the report")
    task: TaskSpec = Field(TaskSpec(), description="the data: the mini world (default) or ImageNet and its OOD sets")
    objective: Objective = Field(Objective(), description="the metrics the search optimises and their directions")
    sampler: Sampler = Field(Sampler(), description="the Optuna sampler that proposes configurations")
    parameters: dict[str, Parameter] = Field({}, description="the searched training settings and method knobs, by name")
    fixed: dict[str, Any] = Field({}, description="training settings and method knobs every trial shares")
    budget: Budget = Field(Budget(), description="how many trials, and how many at a time")
    resources: Resources = Field(Resources(), description="CPUs, GPUs and data-parallel workers per trial")
    scheduler: Scheduler = Field(Scheduler(), description="early stopping of unpromising trials between evaluations")
    baselines: Baselines = Field(Baselines(), description="the reference runs after the trials (zero-shot, vanilla FT, WiSE-FT)")
    confirm: Confirm | None = Field(None, description="the confirmation stage at more seeds (none unless the space asks)")

    @model_validator(mode="after")
    def _check(self) -> SearchSpace:
        fields = [*TrainConfig.model_fields, *all_knobs()]
        for key in [*self.parameters, *self.fixed]:
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1) if len(key) < 100 else []
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"unknown parameter {shorten(repr(key))}{hint}")
        overlap = set(self.parameters) & set(self.fixed)
        if overlap:
            raise ValueError(f"'{sorted(overlap)[0]}' is both searched and fixed")
        for name, parameter in self.parameters.items():
            _check_values(name, parameter)
            for parent, values in (parameter.when or {}).items():
                if parent not in self.parameters or self.parameters[parent].type != "categorical":
                    raise ValueError(f"parameter '{name}' is conditional on '{parent}', which is not a searched categorical parameter")
                parent_choices = self.parameters[parent].choices or ()
                if any(v not in parent_choices for v in values):
                    raise ValueError(f"parameter '{name}': 'when' values for '{parent}' must be among its choices "
                                     f"{shorten(repr(list(parent_choices)), 200)}")
        self.suggestion_order()  # raises on circular conditions
        self._check_knobs()
        reported = self.task.metrics()
        for metric in self.objective.metrics:
            if metric not in reported:
                close = difflib.get_close_matches(metric, reported, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"objective metric '{metric}' is not reported by this task{hint}; it reports "
                                 f"{', '.join(reported)}")
        for bound in self.objective.bounds:
            if bound.metric not in reported:
                raise ValueError(f"constraint '{bound.text}': metric '{bound.metric}' is not reported by this task; it "
                                 f"reports {', '.join(reported)}")
        self._check_a_trial()
        owned = [k for k in ("seed",) if k in self.parameters or k in self.fixed]
        if owned:
            where = "searched" if owned[0] in self.parameters else "fixed"
            raise ValueError(f"'seed' is the sweep's own (its seed; the confirmation stage repeats trials with more seeds): a "
                             f"{where} seed would be overwritten in every trial; remove it")
        if str(self.fixed.get("device", "auto")).startswith("cuda") and self.resources.gpu == 0:
            raise ValueError("device 'cuda' needs a GPU per trial: set resources.gpu (or use device: auto)")
        if "device" in self.parameters:
            raise ValueError("'device' says where trials run, not what they compute: set it in 'fixed', not as a parameter")
        if self.resources.workers > 1 and ("workers" in self.parameters or "workers" in self.fixed):
            raise ValueError("give workers in resources (every trial) or as a fixed/searched value, not both")
        self._check_gpus()
        if self.sampler.name is SamplerName.GRID:
            points = 1
            for name, parameter in self.parameters.items():
                if parameter.when:
                    raise ValueError(f"the grid sampler does not take conditional parameters ('{name}')")
                if parameter.type != "categorical" and not parameter.grid:
                    raise ValueError(f"the grid sampler needs 'grid' values for parameter '{name}'")
                points *= len(parameter.choices if parameter.type == "categorical" else parameter.grid)
            if points > MAX_GRID_POINTS:
                raise ValueError(f"the grid sampler's grid must have at most {MAX_GRID_POINTS} points (the product of "
                                 f"the parameters' value counts), got {points}")
        return self

    def _check_gpus(self) -> None:
        """GPUs a trial can use: one per process (a trial's own, or each data-parallel worker's), never a fraction
        shared by workers (NCCL refuses two ranks on one GPU)."""
        gpu, workers = self.resources.gpu, self.max_workers()
        if gpu > 1:
            raise ValueError(f"resources.gpu is {gpu:g}, but a trial's process (or each data-parallel worker) uses one "
                             f"GPU: for {gpu:g} GPUs per trial give resources {{gpu: 1, workers: {gpu:g}}}")
        if 0 < gpu < 1 and workers > 1:
            raise ValueError(f"resources.gpu is {gpu:g} with {workers} data-parallel workers: each worker needs a whole "
                             f"GPU (NCCL refuses two ranks on one GPU); give gpu: 1, or train in one process "
                             f"(workers: 1)")

    def methods(self) -> list[MethodName]:
        """The methods this space's trials can train."""
        if "method" in self.parameters:
            return [method_name(c) for c in self.parameters["method"].choices or ()]
        return [method_name(self.fixed.get("method", DEFAULT_METHOD))]

    def _check_knobs(self) -> None:
        """Every searched or fixed knob belongs to every method it can be used with."""
        owners = all_knobs()
        for key in [*self.parameters, *self.fixed]:
            if key in TRAIN_KEYS or key not in owners:
                continue
            strangers = [m.value for m in self._sampled_with(key) if m not in owners[key]]
            if strangers:
                mine = ", ".join(m.value for m in owners[key])
                fix = "sample it only for them (when: {method: [...]})" if key in self.parameters else "search the method"
                raise ValueError(f"'{key}' is a knob of {mine}, not of {', '.join(strangers)}: {fix}")

    def _sampled_with(self, key: str) -> list[MethodName]:
        """The methods a trial can train when ``key`` is in its config (following ``when`` conditions up the chain)."""
        methods = self.methods()
        for parent, values in ((self.parameters[key].when or {}) if key in self.parameters else {}).items():
            allowed = [method_name(v) for v in values] if parent == "method" else self._sampled_with(parent)
            methods = [m for m in methods if m in allowed]
        return methods

    def _check_a_trial(self) -> None:
        """A trial of this space must be a valid TrainConfig: try the fixed values with every parameter at its first
        choice or its low bound (conditional ones only where their condition holds)."""
        probe: dict[str, Any] = {}
        for name in self.suggestion_order():
            p = self.parameters[name]
            if p.when and any(probe.get(parent) not in allowed for parent, allowed in p.when.items()):
                continue
            probe[name] = p.choices[0] if p.type == "categorical" else (int(p.low) if p.type == "int" else p.low)
        try:
            TrainConfig.model_validate(with_method(self.trial_settings(probe, seed=0)))  # the rule every trial is built by
        except Exception as error:  # pydantic's ValidationError: report its first problem in one line
            first = error.errors()[0] if hasattr(error, "errors") else {"msg": str(error)}
            message = str(first["msg"]).removeprefix("Value error, ")
            where = ".".join(str(part) for part in first.get("loc", ()))
            message = f"{where}: {message}" if where else message
            given = "'fixed' and resources.workers" if self.resources.workers > 1 else "'fixed'"
            raise ValueError(f"a trial would not be a valid run ({message}); check {given} against the searched "
                             f"parameters {sorted(probe)}") from None

    def trial_settings(self, sampled: dict[str, Any], *, seed: int | None = None) -> dict[str, Any]:
        """One trial's flat settings, by the one rule that builds every trial (and the load-time probe): the
        resources' ``workers``, then the fixed values, then the sampled ones, then the sweep's ``seed`` (when given)."""
        settings = {"workers": self.resources.workers, **self.fixed, **sampled}
        return settings if seed is None else {**settings, "seed": seed}

    def trial_config(self, sampled: dict[str, Any], *, seed: int) -> TrainConfig:
        """The validated TrainConfig of one trial (``trial_settings``)."""
        return parse(TrainConfig, with_method(self.trial_settings(sampled, seed=seed)),
                     f"trial config of space '{self.name}'")

    def workers(self, sampled: dict[str, Any]) -> int:
        """How many data-parallel workers the trial with sampled values ``sampled`` trains on (keys that are not
        parameters of the space, e.g. Tune's ``seed``, are ignored)."""
        own = {k: v for k, v in sampled.items() if k in self.parameters}
        return int(self.trial_settings(own).get("workers", 1))

    def max_workers(self) -> int:
        """The most data-parallel workers any trial of this space trains on (1: every trial trains in one process)."""
        searched = self.parameters.get("workers")
        if searched is None:
            return max(1, self.workers({}))
        values = searched.choices if searched.type == "categorical" else (searched.high,)
        return max(1, *(int(v) for v in values or () if v is not None))

    @property
    def uses_workers(self) -> bool:
        """Whether some trial of this space may train on several workers."""
        return self.max_workers() > 1

    def check_fixed(self) -> None:
        """Fail early if the fixed values alone are not a valid TrainConfig."""
        parse(TrainConfig, with_method(dict(self.fixed)), f"space '{self.name}': fixed")

    def suggestion_order(self) -> list[str]:
        """Parameters ordered so that every condition's parent comes before the parameters it controls."""
        order: list[str] = []
        pending = dict(self.parameters)
        while pending:
            ready = [n for n, p in pending.items() if all(parent in order for parent in (p.when or {}))]
            if not ready:
                raise ValueError(f"circular 'when' conditions among parameters {sorted(pending)}")
            for name in ready:
                order.append(name)
                pending.pop(name)
        return order

    def define_by_run(self, trial) -> None:
        """Suggest every active parameter on an Optuna trial (conditional parameters only when active)."""
        values: dict[str, Any] = {}
        for name in self.suggestion_order():
            p = self.parameters[name]
            if p.when and any(values.get(parent) not in allowed for parent, allowed in p.when.items()):
                continue
            if p.type == "categorical":
                values[name] = trial.suggest_categorical(name, list(p.choices))
            elif p.type == "float":
                values[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
            else:
                values[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        return None

    def grid(self) -> dict[str, list[Any]]:
        return {name: list(p.choices if p.type == "categorical" else p.grid) for name, p in self.parameters.items()}

    @property
    def multi_objective(self) -> bool:
        return len(self.objective.metrics) > 1


def _check_values(name: str, parameter: Parameter) -> None:
    """Every choice, bound and grid value must be a valid value of the TrainConfig field it searches."""
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    from robusttune.config import numeric_kind

    if name == "method":
        for choice in parameter.choices or ():
            try:
                method_name(choice)
            except ValueError as error:
                raise ValueError(f"parameters.method: {error}") from None
        return
    owners = all_knobs().get(name)
    field = METHODS[owners[0]].model_fields[name] if owners and name not in TRAIN_KEYS else TrainConfig.model_fields.get(name)
    if field is None:
        return
    adapter = TypeAdapter(Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation,
                          config=ConfigDict(allow_inf_nan=False))
    numeric = numeric_kind(field.annotation) == "number"
    values = [*(parameter.choices or ()), *(parameter.grid or ())]
    values += [v for v in (parameter.low, parameter.high) if v is not None]
    for value in values:
        if parameter.type == "int" and value is not None:
            value = int(value)  # low, high and grid values are finite whole numbers (Parameter checks)
        if numeric and isinstance(value, bool):
            raise ValueError(f"parameters.{name}: Input should be a number, not a boolean, got {value!r}")
        try:
            adapter.validate_python(value)
        except ValidationError as error:
            raise ValueError(f"parameters.{name}: {error.errors()[0]['msg']}, got {shorten(repr(value))}") from None


def builtin_spaces() -> dict[str, Any]:
    """Built-in spaces shipped with the package: name -> resource."""
    folder = resources.files("robusttune.search_spaces")
    return {entry.name.removesuffix(".yaml"): entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def load_space(name_or_path: str) -> tuple[SearchSpace, str]:
    """A space by built-in name (``demo``) or file path; returns it and its YAML text (for the frozen copy)."""
    path = Path(name_or_path)
    builtin = builtin_spaces()
    if path.suffix in (".yaml", ".yml", ".json") or path.is_file():  # a folder named 'demo' never hides the built-in
        (data, text), source = load_mapping_and_text(path), str(path)
    elif name_or_path in builtin:
        source = f"search space '{name_or_path}'"
        text = builtin[name_or_path].read_text(encoding="utf-8")
        data = load_yaml_text(text, source)
    else:
        close = difflib.get_close_matches(name_or_path, list(builtin), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown search space '{name_or_path}'{hint}; built-in: {', '.join(sorted(builtin))}, or a YAML file path")
    data.setdefault("name", path.stem if path.suffix else name_or_path)
    space = parse(SearchSpace, data, source)
    space.check_fixed()
    return space, text
