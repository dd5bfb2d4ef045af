"""The methods' steps by name (as timm names its models): ``build`` gives the step of a run's method.

Each method is one module of this package (``robusttune.method.<name>``) with its step class; this table is the one
place that names them, with the names of ``robusttune.methods.MethodName`` (a test checks that every name has its
step and its knobs).
"""

from __future__ import annotations

from typing import Any

from robusttune.method.flyp import Flyp
from robusttune.method.ft import Ft
from robusttune.method.l2sp import L2sp
from robusttune.method.lipsum import Lipsum
from robusttune.method.lp import Lp
from robusttune.method.lp_ft import LpFt
from robusttune.method.masked_distill import MaskedDistill
from robusttune.method.step import MethodStep

STEPS: dict[str, type[MethodStep]] = {"ft": Ft, "lp": Lp, "lp_ft": LpFt, "l2sp": L2sp, "flyp": Flyp,
                                      "lipsum": Lipsum,
                                      "masked_distill": MaskedDistill}


def registered() -> list[str]:
    return sorted(STEPS)


def build(config: Any, student: Any, teacher: Any, placement: Any) -> MethodStep:
    """The step of ``config.method`` on these models."""
    return STEPS[str(config.method.name)](config, student, teacher, placement)
