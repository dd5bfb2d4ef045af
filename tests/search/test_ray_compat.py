"""The one door to Ray's and Optuna's internals (robusttune/search/ray_compat.py): each internal it uses is still
there in the installed versions, and no other module reaches into one."""

import re

import pytest

from robusttune.search.ray_compat import INTERNALS
from helpers import ROOT

PACKAGE = ROOT / "robusttune"
# private names of Ray's and Optuna's objects robusttune has used (and the private modules)
FOREIGN_PRIVATE = re.compile(r"\b(_ot_\w+|_local_tuner|_run_config|_tune_config|_completed_trials|_trial_id|"
                             r"_experiment\b|_get_or_create_inter_actor_queue|_internal\b|_private\b)")


@pytest.mark.parametrize("name", sorted(INTERNALS))
def test_each_ray_and_optuna_internal_robusttune_uses_is_still_there(name):
    assert INTERNALS[name](), f"{name} is gone or moved in this Ray/Optuna: robusttune/search/ray_compat.py needs it"


def test_no_module_but_the_door_reaches_into_ray_or_optuna_internals():
    found = [f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
             for path in PACKAGE.rglob("*.py") if path.name != "ray_compat.py"
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if FOREIGN_PRIVATE.search(line.split("#")[0])]
    assert not found, "\n".join(found)
