"""Which samplers learn from trials a scheduler stops early: a model-based sampler that sees complete trials only
is warned about before a sweep pairs it with early stopping."""

import logging

import pytest

from helpers import SYNTHETIC_SPACE
from robusttune.config import parse
from robusttune.search.sweep import SweepOptions, check_runnable
from robusttune.space import SearchSpace


def warnings_for(sampler: str, scheduler: str, caplog) -> list[str]:
    data = {**SYNTHETIC_SPACE, "sampler": {"name": sampler, "seed": 0},
            "scheduler": {"name": scheduler, "grace_period": 1, "reduction_factor": 2}}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robusttune.search.sweep"):
        check_runnable(parse(SearchSpace, data, "test"), SweepOptions(trials=4, concurrency=1, seed=0))
    return [r.getMessage() for r in caplog.records if "learns from complete trials only" in r.getMessage()]


@pytest.mark.parametrize("scheduler", ["mo_asha", "asha"])
def test_gp_with_early_stopping_is_warned_about(scheduler, caplog):
    [message] = warnings_for("gp", scheduler, caplog)
    assert f"the gp sampler learns from complete trials only; a configuration the {scheduler} scheduler" in message


@pytest.mark.parametrize("sampler, scheduler", [("gp", "none"), ("tpe", "mo_asha"), ("random", "mo_asha"),
                                                ("nsga2", "mo_asha")])
def test_other_pairs_are_not_warned_about(sampler, scheduler, caplog):
    assert warnings_for(sampler, scheduler, caplog) == []
