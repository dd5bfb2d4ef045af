"""The bounds of values that more than one entry point accepts (API arguments, space keys, options): each rule is
written here once and raises ``ParameterError`` naming the parameter (the CLI turns the name into its flag)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from robusttune.errors import ParameterError

Number = TypeVar("Number", int, float)

MAX_SEED = 2**32  # seeds are in [0, 2**32): what NumPy, Optuna's samplers and every sweep accept


def at_least(parameter: str, value: Number | None, minimum: Number, unit: str = "") -> Number | None:
    """``value`` (None passes: the default applies), refused below ``minimum``."""
    if value is not None and value < minimum:
        raise ParameterError(parameter, f"must be >= {minimum}{unit}, got {value}")
    return value


def at_most(parameter: str, value: Number | None, maximum: Number, unit: str = "") -> Number | None:
    """``value`` (None passes: the default applies), refused above ``maximum``."""
    if value is not None and value > maximum:
        raise ParameterError(parameter, f"must be <= {maximum}{unit}, got {value}")
    return value


def check_seed(seed: int, parameter: str = "seed") -> int:
    if not 0 <= seed < MAX_SEED:
        raise ParameterError(parameter, f"must be in [0, 2**32), got {seed}")
    return seed


MAX_ALPHAS = 101  # WiSE-FT mixing coefficients, one evaluation each: steps of 0.01 (as a space bounds them)


def check_alphas(alphas: Iterable[float], parameter: str = "alphas") -> tuple[float, ...]:
    """WiSE-FT mixing coefficients: at least one, at most ``MAX_ALPHAS``, each in [0, 1], none twice."""
    values = tuple(float(a) for a in alphas)
    if len(values) > MAX_ALPHAS:
        raise ParameterError(parameter, f"must be at most {MAX_ALPHAS} values (steps of 0.01), got {len(values)}")
    if not values or any(not 0.0 <= a <= 1.0 for a in values):
        raise ParameterError(parameter, f"must be values in [0, 1], got {list(values)}")
    if len(set(values)) != len(values):
        raise ParameterError(parameter, f"must not repeat a value, got {list(values)}")
    return values


def check_max_failures(value: int) -> int:
    """Retries of a crashed trial from its checkpoint."""
    at_least("max_failures", value, 0)
    return value


def check_threads(value: int | None) -> int | None:
    return at_least("threads", value, 1)
