"""Cache-directory resolution and atomic file writes (stdlib only)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robusttune.errors import storage_error

CACHE_ENV_VAR = "ROBUSTTUNE_CACHE_DIR"


def resolve_cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: ``explicit`` if given, else ``$ROBUSTTUNE_CACHE_DIR``, else ``~/.cache/robusttune``."""
    if explicit is not None:
        return Path(explicit).expanduser()
    from_env = os.environ.get(CACHE_ENV_VAR)
    if from_env:
        return Path(from_env).expanduser()
    return Path.home() / ".cache" / "robusttune"


def stable_hash(payload: Any, length: int = 16) -> str:
    """A short, stable hash of JSON-serialisable data (keys sorted), used to key cache entries."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Write a file through ``write(tmp_path)`` and move it into place with ``os.replace``.

    Readers never see a half-written file: a crash leaves at most a ``*.tmp`` file behind. The file's bytes are
    flushed to disk before the rename, so a crash after it never leaves an empty or torn file in place.
    """
    target = Path(path)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        write(tmp)
        with open(tmp, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(tmp, target)
    except Exception as error:
        translated = storage_error(error, target.parent)
        if translated is None:
            raise
        raise translated from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
