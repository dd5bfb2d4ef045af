"""The one door to Ray's and Optuna's internals: every private attribute or module robusttune uses, here only.

Supported: Ray 2.60.x and Optuna 5.x (``pyproject.toml`` pins ``ray[tune]>=2.60,<3`` and ``optuna>=5.0,<6``).
``INTERNALS`` names each internal with a check that it is still there; ``tests/search/test_ray_compat.py`` runs
every check, so an upgrade that moves one fails there, by name, rather than somewhere in a sweep. Why each is used:

* Ray Tune's ``OptunaSearch`` keeps its study and its Tune-to-Optuna trial map privately; ``RobustOptunaSearch``
  (``adapters``) must read them to cap the budget, tell Optuna the true end of a trial once, and point a restored
  searcher at the experiment's own journal.
* Optuna's storage methods take a trial's storage id (``Trial._trial_id``) and a study's storage (``Study._storage``):
  failing a trial a killed driver left RUNNING goes through them.
* A restored ``Tuner`` exposes no setter for the callbacks, scheduler, stopper and failure settings it unpickled with
  the original's paths (``sweep._point_at``), nor does Tune's search generator for the experiment spec new trials
  are made from (``adapters.RelocatedSearchGenerator``).
* Ray Train hands its workers' reports to the Tune trial's session through a queue the session owns: data-parallel
  heartbeats from rank 0 go through it (``data_parallel``). Some of Ray Train's loggers are quieted by name.
* The autoscaler's cluster-file validation (``launch --dry-run``) has no public entry point.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

# ------------------------------------------------------------------------------ Ray Tune's OptunaSearch, Optuna


def optuna_trials(searcher) -> dict[str, Any]:
    """Tune trial id -> the ``optuna.trial.Trial`` it was given."""
    return searcher._ot_trials


def set_optuna_trials(searcher, trials: dict[str, Any]) -> None:
    searcher._ot_trials = trials


def optuna_study(searcher):
    return searcher._ot_study


def searcher_sampler(searcher):
    return searcher._sampler


def completed_trials(searcher) -> set[str]:
    """The Tune trial ids the searcher has told Optuna the end of."""
    return searcher._completed_trials


def use_study(searcher, storage, study) -> None:
    """Make the searcher ask and tell ``study`` (in ``storage``) from now on."""
    searcher._storage, searcher._ot_study = storage, study


def storage_id(trial) -> int:
    """An Optuna trial's id in its storage (what the storage's methods take; not its ``number``)."""
    return trial._trial_id


def study_storage(study):
    return study._storage


# ------------------------------------------------------------------------------ Ray Tune's restore


def restored_tuner(tuner):
    """The restored ``Tuner``'s local tuner, which holds the run and tune configs; None if this Ray has none."""
    internal = getattr(tuner, "_local_tuner", None)
    if internal is None or not hasattr(internal, "_run_config") or not hasattr(internal, "_tune_config"):
        return None
    return internal


def run_config(internal):
    return internal._run_config


def set_run_config(internal, config) -> None:
    internal._run_config = config


def tune_config(internal):
    return internal._tune_config


def generator_experiment(generator):
    """The experiment spec a ``SearchGenerator`` makes new trials from."""
    return getattr(generator, "_experiment", None)


# ------------------------------------------------------------------------------ Ray Train


def train_report_queue():
    """The queue through which Ray Train hands its workers' reports to this Tune trial's session (Ray's
    ``TuneReportCallback`` puts into the same one)."""
    from ray.train._internal.session import get_session

    return get_session()._get_or_create_inter_actor_queue()


# Ray Train's loggers that repeat what the sweep says, or make noise (see ``data_parallel.quiet_ray_train``): the
# placement-group cleaner, which warns once a second when Ray's state API is not served; a stopped run's backend
# shutdown; and each worker's every report, whose logger is named by its file.
TRAIN_LOGGERS_TO_QUIET = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",
                          "ray.train.v2._internal.callbacks.backend_setup")
TRAIN_REPORTS_MODULE = "ray.train.v2._internal.execution.context"
# The cleaner's monitoring thread: where another local Ray instance runs too, its state query raises rather than
# warns, and the uncaught error's traceback would reach the console
TRAIN_CLEANER_MODULE, TRAIN_CLEANER_THREAD = TRAIN_LOGGERS_TO_QUIET[0], "PlacementGroupCleanerMonitor"


def train_reports_logger_name() -> str | None:
    """The name of the logger each Ray Train worker logs its every report to (its module's file), if this Ray has
    it."""
    try:
        return importlib.import_module(TRAIN_REPORTS_MODULE).__file__
    except ImportError:
        return None


# ------------------------------------------------------------------------------ the autoscaler


def validate_cluster_config(config: dict[str, Any]) -> None:
    """The autoscaler's own validation of a cluster file (raises on an invalid one)."""
    from ray.autoscaler._private.util import validate_config

    validate_config(config)


# ------------------------------------------------------------------------------ what an upgrade must keep


def _has(module: str, *path: str) -> Callable[[], bool]:
    """A check: ``module`` imports and has the attribute path ``path``."""
    def check() -> bool:
        try:
            target: Any = importlib.import_module(module)
        except ImportError:
            return False
        for name in path:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True

    return check


def _sets(module: str, owner: str, *attributes: str) -> Callable[[], bool]:
    """A check: ``module.owner``'s source still sets ``self.<attribute>`` for each attribute."""
    def check() -> bool:
        try:
            source = inspect.getsource(getattr(importlib.import_module(module), owner))
        except (ImportError, AttributeError, OSError, TypeError):
            return False
        return all(f"self.{name}" in source for name in attributes)

    return check


def _source_mentions(module: str, text: str) -> bool:
    try:
        return text in inspect.getsource(importlib.import_module(module))
    except (ImportError, OSError, TypeError):
        return False


def _optuna_search_keeps_its_state() -> bool:
    """A real ``OptunaSearch`` after one suggestion holds what the accessors above read."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(metric="m", mode="max", sampler=optuna.samplers.RandomSampler(seed=0))
    searcher.set_search_properties("m", "max", {"x": tune.uniform(0, 1)})
    searcher.suggest("t")
    trial = optuna_trials(searcher).get("t")
    study = optuna_study(searcher)
    return (trial is not None and isinstance(storage_id(trial), int) and study_storage(study) is not None
            and searcher_sampler(searcher) is not None and isinstance(completed_trials(searcher), set)
            and hasattr(searcher, "_storage"))


# ------------------------------------------------------------------ Ray's printing of its workers' lines on the driver

WORKER_LINES_HANDLER = "ray_print_logs"  # the name ray.init gives the handler that prints workers' lines, prefixed


def worker_lines_dispatcher():
    """The dispatcher through which the driver hands its workers' stdout/stderr lines (``{"lines", "pid",
    "task_name"/"actor_name", "is_err"}`` batches) to handlers; ray.init(log_to_driver=True) adds the printing one."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher

    return global_worker_stdstream_dispatcher


def swap_worker_lines_handler(handler: Callable[[dict], None] | None, previous: list | None = None) -> list:
    """Replace Ray's printing of worker lines with ``handler`` (None: none); returns what to pass back to restore
    Ray's own. ``previous``: restore those handlers."""
    dispatcher = worker_lines_dispatcher()
    with dispatcher._lock:
        if previous is not None:
            dispatcher.handlers = [pair for pair in dispatcher.handlers if pair[0] != "robusttune_worker_lines"] + previous
            return []
        kept = [pair for pair in dispatcher.handlers if pair[0] == WORKER_LINES_HANDLER]
        dispatcher.handlers = [pair for pair in dispatcher.handlers
                               if pair[0] not in (WORKER_LINES_HANDLER, "robusttune_worker_lines")]
        if handler is not None:
            dispatcher.handlers.append(("robusttune_worker_lines", handler))
        return kept


INTERNALS: dict[str, Callable[[], bool]] = {
    "ray._private.ray_logging.global_worker_stdstream_dispatcher (handlers, _lock; ray_print_logs)":
        lambda: (hasattr(worker_lines_dispatcher(), "handlers") and hasattr(worker_lines_dispatcher(), "_lock")
                 and _source_mentions("ray._private.worker", f'"{WORKER_LINES_HANDLER}"')),
    "OptunaSearch._ot_trials/_ot_study/_sampler/_completed_trials/_storage, optuna Trial._trial_id, "
    "Study._storage": _optuna_search_keeps_its_state,
    "ray.tune.Tuner._local_tuner": _sets("ray.tune", "Tuner", "_local_tuner"),
    "ray.tune.impl.tuner_internal.TunerInternal._run_config/_tune_config":
        _sets("ray.tune.impl.tuner_internal", "TunerInternal", "_run_config", "_tune_config"),
    "ray.tune.search.SearchGenerator._experiment": _sets("ray.tune.search", "SearchGenerator", "_experiment"),
    "ray.train._internal.session._TrainSession._get_or_create_inter_actor_queue":
        _has("ray.train._internal.session", "_TrainSession", "_get_or_create_inter_actor_queue"),
    "ray.train._internal.session.get_session": _has("ray.train._internal.session", "get_session"),
    f"{TRAIN_REPORTS_MODULE} (its logger)": _has(TRAIN_REPORTS_MODULE),
    f"{TRAIN_CLEANER_MODULE}: thread {TRAIN_CLEANER_THREAD}": lambda: _source_mentions(TRAIN_CLEANER_MODULE,
                                                                                      f'"{TRAIN_CLEANER_THREAD}"'),
    **{f"{name} (its logger)": _has(name) for name in TRAIN_LOGGERS_TO_QUIET},
    "ray.autoscaler._private.util.validate_config": _has("ray.autoscaler._private.util", "validate_config"),
}
