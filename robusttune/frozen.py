"""The base of every config: a frozen pydantic model (layer 0: no torch, ray or optuna)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class Frozen(BaseModel):
    """Base for every config: immutable, unknown keys rejected, enums kept as enums, numbers finite (no NaN or
    infinity) and never booleans (``steps: yes`` is not one step)."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool | list | tuple) and info.field_name is not None:
            kind = numeric_kind(cls.model_fields[info.field_name].annotation)
            if kind == "number" and isinstance(value, bool) or kind == "numbers" and isinstance(value, list | tuple) \
                    and any(isinstance(v, bool) for v in value):
                raise ValueError("Input should be a number, not a boolean")
        return value


def numeric_kind(annotation: Any) -> str | None:
    """``"number"`` for an int/float annotation (or ``| None``), ``"numbers"`` for a tuple of them, else None."""
    import types
    import typing

    def numeric(arg: Any) -> bool:
        args = typing.get_args(arg) if typing.get_origin(arg) in (typing.Union, types.UnionType) else (arg,)
        return all(a in (int, float, type(None)) for a in args) and any(a in (int, float) for a in args)

    if numeric(annotation):
        return "number"
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # ``tuple[float, ...] | None``
        kinds = {numeric_kind(a) for a in typing.get_args(annotation) if a is not type(None)}
        return "numbers" if kinds == {"numbers"} else None
    if typing.get_origin(annotation) is tuple and all(numeric(a) for a in typing.get_args(annotation) if a is not ...):
        return "numbers"
    return None
