"""The experiment's lock: one process at a time runs an experiment (``sweep``, ``resume``, ``confirm``). A second
one is refused in one line naming the holder. ``flock`` on a file that is never unlinked while held."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robusttune.errors import ConfigError, DataError, storage_error


LOCK = ".lock"


def _holder_text(info: Mapping[str, Any]) -> str:
    return f"'{info.get('command', '?')}' (pid {info.get('pid', '?')} on {info.get('host', '?')}, since {info.get('since', '?')})"


def _read_holder(stream: Any) -> dict[str, Any] | None:
    """What the lock file says about its holder (written by the holder once it has the lock)."""
    stream.seek(0)
    text = stream.read().strip()
    if not text:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return {"command": text}  # an older robusttune's free text
    return info if isinstance(info, dict) else None


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _processes_holding(path: Path) -> list[int]:
    """The processes of this host that have ``path`` open (Linux ``/proc``; empty elsewhere or when unreadable)."""
    try:
        target = os.stat(path)
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    found = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                here = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (here.st_dev, here.st_ino) == (target.st_dev, target.st_ino):
                found.append(pid)
                break
    return found


def _describe_holder(path: Path, info: Mapping[str, Any] | None) -> str:
    """The refusal's words for whoever holds the lock. A holder named by the file but no longer running on this host
    is stale: the lock is then held by a process it left behind (a forked child keeps the lock), which we name."""
    import socket

    if not info:
        return "another process"
    text = _holder_text(info)
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) and not _pid_alive(info["pid"]):
        left = [pid for pid in _processes_holding(path) if pid != os.getpid()]
        which = f"pid {', '.join(map(str, left))}" if left else "a process it left behind"
        return f"{which}, left behind by {text}, which is no longer running (stop it first)"
    return text


class ExperimentLock:
    """An exclusive lock on an experiment for the process that runs it (``sweep``, ``resume``, ``confirm``): a
    second process is refused with a one-line error naming the holder (command, pid, host, since when).

    ``flock`` on ``<experiment>/.lock``, a file that is never unlinked or replaced while held: releasing only empties
    it, then closes it (the OS drops the lock when the holder dies, too). Because a folder may still be removed as a
    whole (a failed sweep that leaves nothing to resume, ``overwrite``), a process that got the lock checks that the
    file it locked is still the one at the path, else it locked a removed file and tries again. A holder the file
    names but that is no longer running on this host is reported as stale, with the process that kept the lock."""

    def __init__(self, experiment: Path, command: str):
        self.path, self.command, self._stream = Path(experiment) / LOCK, command, None

    def __enter__(self) -> ExperimentLock:
        import fcntl
        import socket

        for _ in range(100):  # each round follows a removal by another process; more than a few never happens
            try:
                stream = open(self.path, "a+", encoding="utf-8")
            except FileNotFoundError:
                raise DataError(f"{self.path.parent}: experiment directory not found (removed by another process?)") from None
            except OSError as error:  # a read-only or full place is said as every command says it
                raise storage_error(error, self.path.parent) or DataError(
                    f"{self.path}: cannot open the experiment's lock ({error.strerror})") from None
            try:
                fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _describe_holder(self.path, _read_holder(stream))
                stream.close()
                raise ConfigError(f"{self.path.parent}: in use by {holder}; wait for it or stop it first") from None
            try:
                mine, there = os.fstat(stream.fileno()), os.stat(self.path)
                same = (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)
            except OSError:
                same = False
            if not same:  # the file we locked was removed (or replaced) meanwhile: its lock guards nothing
                stream.close()
                if not self.path.parent.is_dir():
                    raise DataError(f"{self.path.parent}: experiment directory not found (removed by another process?)")
                continue
            stream.seek(0)
            stream.truncate()
            stream.write(json.dumps({"command": self.command, "pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
            stream.flush()
            self._stream = stream
            return self
        raise DataError(f"{self.path}: the experiment's lock keeps being replaced by another process")

    @property
    def held(self) -> bool:
        return self._stream is not None

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if self._stream is not None:
            try:
                self._stream.seek(0)
                self._stream.truncate()  # no holder named any more; the file itself stays (never unlinked)
                self._stream.flush()
            except OSError:
                pass
            self._stream.close()  # closing releases the lock
            self._stream = None


def lock_holder(experiment: Path) -> str | None:
    """Who holds the experiment's lock, or None."""
    import fcntl

    path = Path(experiment) / LOCK
    if not path.is_file():
        return None
    try:
        stream = open(path, encoding="utf-8")  # read-only: never creates the file
    except OSError:
        return None
    with stream:
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _describe_holder(path, _read_holder(stream))
        fcntl.flock(stream.fileno(), fcntl.LOCK_UN)
    return None
