"""The zero-shot head, cached: built once per (text tower weights, class names, templates) and read back after.

Building ImageNet's head runs 1,000 classes x 80 prompts through the text tower (minutes on a GPU, far longer on
CPU threads); every trial and the baselines of a sweep need the same one. A head is stored as
``head-<key>.pt`` in each folder it is given (the experiment's ``heads/``, shared by every trial on every node,
and the user cache), where ``key`` hashes the text tower's weights, the class names and the rendered templates. A
file that is corrupt, of another key or of the wrong shape is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from robusttune.cache import atomic_write

log = logging.getLogger(__name__)

FORMAT = "robusttune.head/1"


def head_key(model: torch.nn.Module, classnames: Sequence[str], templates: Sequence[str | Callable[[str], str]]) -> str:
    """A digest of everything the head depends on: every non-image weight of the CLIP, the classes, the prompts."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("visual."):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    rendered = [t("{}") if callable(t) else str(t) for t in templates]
    digest.update(json.dumps({"classnames": list(classnames), "templates": rendered}).encode())
    return digest.hexdigest()[:32]


def _read(path: Path, key: str, classes: int) -> Tensor | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torn, truncated or foreign: rebuild
        log.warning("%s: unreadable zero-shot head; rebuilding it", path)
        return None
    head = payload.get("head") if isinstance(payload, dict) else None
    if (payload.get("format") if isinstance(payload, dict) else None) != FORMAT or payload.get("key") != key \
            or not isinstance(head, Tensor) or head.dim() != 2 or head.shape[0] != classes:
        log.warning("%s: not the zero-shot head of this model and these classes; rebuilding it", path)
        return None
    return head.float()


def cached_head(model: torch.nn.Module, classnames: Sequence[str], templates: Sequence[str | Callable[[str], str]],
                build: Callable[[], Tensor], *, folders: Sequence[Path]) -> Tensor:
    """The head from the first folder that holds a valid copy, else ``build()``; then every folder holds one."""
    key = head_key(model, classnames, templates)
    name = f"head-{key}.pt"
    found = {Path(folder): _read(Path(folder) / name, key, len(classnames)) for folder in folders}
    head = next((h for h in found.values() if h is not None), None)
    if head is None:
        log.info("building the zero-shot head (%d classes x %d templates)", len(classnames), len(templates))
        head = build()
    for folder, copy in found.items():
        if copy is None:
            try:
                atomic_write(folder / name, lambda tmp: torch.save({"format": FORMAT, "key": key, "head": head}, tmp))
            except OSError as error:  # a read-only cache must not stop a run
                log.warning("%s: cannot store the zero-shot head (%s)", folder, error.strerror)
    return head
