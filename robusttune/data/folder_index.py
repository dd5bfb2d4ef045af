"""A dataset folder's listing, scanned once and cached: ImageNet's train folder holds about 1.3 million files in
1,000 class folders, and listing them (one ``is_file`` each, on EFS/NFS) is slow for every trial of a sweep.

The index of a root (one JSON file in ``<cache>/index/``) keeps each class folder's image file names with the
folder's modification time; a folder whose mtime changed (a file added, removed or renamed) is listed again, the
rest are read back. An index that is corrupt or belongs to another root is ignored and rewritten. (Where a file
system keeps coarse mtimes, a file added within the same tick as a scan is missed until its folder changes again.)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from robusttune.cache import atomic_write_json, stable_hash
from robusttune.data import imagenet

log = logging.getLogger(__name__)

FORMAT = "robusttune.folder-index/1"


def list_folder(folder: Path) -> list[Path]:
    """``imagenet.images_in`` without a ``stat`` per file: ``os.scandir`` knows each entry's type from the directory
    listing itself (a ``stat`` only for symbolic links), which on NFS/EFS is the difference between one round trip
    per folder and one per image."""
    with os.scandir(folder) as entries:
        names = [e.name for e in entries
                 if os.path.splitext(e.name)[1].lower() in imagenet.IMAGE_EXTENSIONS and e.is_file()]
    return [folder / name for name in sorted(names)]


class FolderIndex:
    def __init__(self, root: Path, cache_dir: Path | None):
        self.root = Path(root).resolve()
        self.path = Path(cache_dir) / "index" / f"{stable_hash(str(self.root))}.json" if cache_dir else None
        self.folders: dict[str, dict] = self._load()
        self.listed = 0  # folders listed from disk (not read back) by this index
        self._changed = False

    def _load(self) -> dict[str, dict]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            if saved.get("format") == FORMAT and saved.get("root") == str(self.root):
                return {name: entry for name, entry in saved["folders"].items()
                        if isinstance(entry.get("mtime_ns"), int) and isinstance(entry.get("files"), list)}
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            pass
        log.warning("%s: unreadable or foreign folder index; scanning %s again", self.path, self.root)
        return {}

    def images_in(self, folder: Path) -> list[Path]:
        """The folder's image files (sorted), from the index when the folder is unchanged since it was listed."""
        folder = Path(folder)
        key = str(folder.resolve().relative_to(self.root)) if folder.resolve().is_relative_to(self.root) else str(folder)
        mtime = folder.stat().st_mtime_ns
        entry = self.folders.get(key)
        if entry is not None and entry["mtime_ns"] == mtime:
            return [folder / name for name in entry["files"]]
        files = list_folder(folder)
        self.folders[key] = {"mtime_ns": mtime, "files": [p.name for p in files]}
        self.listed += 1
        self._changed = True
        return files

    def save(self) -> None:
        if self._changed and self.path is not None:
            try:
                atomic_write_json(self.path, {"format": FORMAT, "root": str(self.root), "folders": self.folders})
            except OSError as error:  # a read-only cache must not stop a run
                log.warning("%s: cannot store the folder index (%s)", self.path, error.strerror)
            self._changed = False
