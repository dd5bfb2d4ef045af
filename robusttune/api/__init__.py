"""The Python API: every ``robusttune`` command, callable from a notebook or a script.

    import robusttune as rt

    result = rt.sweep("demo", storage="runs", name="my-demo", trials=4)   # a SweepResult
    rt.status(result.experiment).counts                                     # {"complete": 3, ...}
    rt.report(result.experiment, gallery=False).files["index.html"]
    rt.resume(result.experiment)                                            # after an interruption

Every function validates its input first and raises one of ``robusttune.errors`` (one-line messages; a bad
argument is a ``ParameterError`` naming the parameter); the CLI is a thin layer that parses flags, calls these
and prints. Heavy libraries (torch, ray, optuna) are imported inside the functions.
"""

from robusttune.api.bench import ReplayResult, SurrogateResult, replay, surrogate, tabulate
from robusttune.api.cluster import LaunchResult, launch
from robusttune.api.common import cache_directory, check_out_dir, set_threads, trial_table
from robusttune.api.data import PackResult, WorldResult, pack, prepare_world, pretrain_world
from robusttune.api.doctor import DoctorResult, doctor
from robusttune.api.reports import ReportResult, plan, report
from robusttune.api.runs import BaselinesResult, TrainSummary, baselines, train, wise
from robusttune.api.sweeps import ConfirmResult, DemoResult, Status, SweepResult, confirm, demo, resume, status, sweep

__all__ = [  # the commands, then their results, then the helpers the CLI shares
    "train", "wise", "baselines", "sweep", "resume", "confirm", "status", "demo", "plan", "doctor", "report", "launch", "tabulate",
    "replay", "surrogate", "prepare_world", "pretrain_world", "pack",
    "TrainSummary", "BaselinesResult", "SweepResult", "ConfirmResult", "Status", "DemoResult", "ReportResult", "DoctorResult", "LaunchResult",
    "ReplayResult", "SurrogateResult", "WorldResult", "PackResult",
    "cache_directory", "check_out_dir", "set_threads", "trial_table",
]
