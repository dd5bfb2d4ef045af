"""Progress bars for long local jobs (listing dataset folders, the zero-shot head, large evaluations, packing,
the baselines, the report's gallery): tqdm bars on stderr, shown only when the command line turns them on (never
under ``--json``, in library calls or in Ray workers, whose progress travels as heartbeats)."""

from __future__ import annotations

import sys
from typing import Any

_shown = False
DELAY_S = 1.0  # a bar appears only once its job has run this long: quick jobs print nothing


def show_bars(on: bool) -> None:
    global _shown
    _shown = bool(on)


def bars_shown() -> bool:
    return _shown


class _Silent:
    """A bar that draws nothing."""

    n = 0
    total = None

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def duration(seconds: float) -> str:
    """``4m10s``, ``2h05m``: an ETA for people."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def bar(desc: str, total: int | None = None, *, unit: str = "it", min_total: int = 0):
    """A tqdm bar (a context manager with ``update``), or a silent one when bars are off or the job is small."""
    if not _shown or (total is not None and total < min_total):
        return _Silent()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True, delay=DELAY_S)
