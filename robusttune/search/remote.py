"""Results of robusttune's own Ray tasks (baselines, merges, confirmation runs): ``ray_get``."""

from __future__ import annotations

from typing import Any


def ray_get(refs: Any) -> Any:
    """``ray.get(refs)``; a task that raised one of robusttune's own errors (one line: a GPU it cannot use, a missing
    folder) re-raises that error, not Ray's wrapper with the remote traceback."""
    import ray
    from ray.exceptions import RayTaskError

    from robusttune.errors import RobustTuneError

    try:
        return ray.get(refs)
    except RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, RobustTuneError):
            raise cause from None
        raise
