"""Which weights a CLIP starts from, and their activation stated, never guessed (``check_activation``).

OpenAI's CLIP weights were trained with QuickGELU (``x * sigmoid(1.702 x)``); most open weights of the same
architectures with GELU. open_clip knows which from a pretrained *tag* only (``get_pretrained_cfg('ViT-B-32',
'openai')`` says ``quick_gelu``); ``ViT-B-32`` itself has no ``quick_gelu``, ``ViT-B-32-quickgelu`` has. A local weights
*file* carries no such mark: loaded into ``ViT-B-32`` OpenAI's weights run with GELU and every number is silently
worse. So a local file of a model that exists with both activations (one with a ``-quickgelu`` twin) must say which:
the ``-quickgelu`` model name, or ``quick_gelu: true|false`` in the task; anything else is refused in one line before
anything starts. A file whose sha256 open_clip's registry knows (OpenAI's published ``.pt`` files carry it in their
URL) is named in the refusal, with the model name to use.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

import open_clip

from robusttune.errors import ConfigError

QUICKGELU_SUFFIX = "-quickgelu"
_HASH_IN_URL = re.compile(r"/([0-9a-f]{64})/")


def is_weights_file(pretrained: str | None) -> bool:
    """Whether ``pretrained`` names a local file (a path), not an open_clip tag or random init (None / 'none')."""
    if pretrained is None or pretrained == "none":
        return False
    return bool(Path(pretrained).suffix) or os.sep in pretrained or Path(pretrained).expanduser().exists()


def has_both_activations(model: str) -> bool:
    """Whether ``model``'s architecture exists with GELU and with QuickGELU in open_clip (``X`` and ``X-quickgelu``)."""
    base = model.removesuffix(QUICKGELU_SUFFIX)
    known = set(open_clip.list_models())
    return base in known and base + QUICKGELU_SUFFIX in known


def model_quick_gelu(model: str) -> bool:
    """The activation ``model``'s own config gives it (True: QuickGELU)."""
    return bool((open_clip.get_model_config(model) or {}).get("quick_gelu", False))


@functools.cache
def known_checkpoints() -> dict[str, tuple[str, str, bool]]:
    """sha256 -> (model, tag, quick_gelu) for the weights open_clip's registry names by hash (OpenAI's files)."""
    known: dict[str, tuple[str, str, bool]] = {}
    for model, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(model, tag)
        found = _HASH_IN_URL.search(cfg.get("url", "") or "")
        if found and found.group(1) not in known:
            known[found.group(1)] = (model.removesuffix(QUICKGELU_SUFFIX), tag, bool(cfg.get("quick_gelu", False)))
    return known


def recognise(path: str | Path) -> tuple[str, str, bool] | None:
    """(model, tag, quick_gelu) of a weights file open_clip's registry knows by its sha256, else None (also for a
    file that cannot be read)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 22), b""):
                digest.update(block)
    except OSError:
        return None
    return known_checkpoints().get(digest.hexdigest())


def check_activation(model_name: str, pretrained: str | None, *, quick_gelu: bool | None = None) -> None:
    """Refuse (``ConfigError``, one line) weights whose activation is not stated or contradicts itself: a local
    weights file of a model that exists with both activations (``ViT-B-32`` and ``ViT-B-32-quickgelu``) needs the
    ``-quickgelu`` name or ``quick_gelu``; ``quick_gelu`` must agree with a ``-quickgelu`` name and with a pretrained
    tag's own activation. Random init (``pretrained`` None) and a model with one activation need nothing."""
    named = model_name.endswith(QUICKGELU_SUFFIX)
    where = f"model {model_name} with pretrained {pretrained}"
    if quick_gelu is False and named:
        raise ConfigError(f"{where}: quick_gelu: false contradicts the model name {model_name} (QuickGELU); use "
                          f"{model_name.removesuffix(QUICKGELU_SUFFIX)} for GELU weights")
    if pretrained is None or pretrained == "none":
        return
    if not is_weights_file(pretrained):  # an open_clip tag: its own config says the activation
        tag_quick = bool(open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False)) \
            if pretrained in open_clip.list_pretrained_tags_by_model(model_name) else None
        if quick_gelu is not None and tag_quick is not None and quick_gelu != tag_quick:
            raise ConfigError(f"{where}: quick_gelu: {str(quick_gelu).lower()} contradicts the '{pretrained}' weights, "
                              f"trained with {'QuickGELU' if tag_quick else 'GELU'}; remove quick_gelu")
        return
    if named or quick_gelu is not None or not has_both_activations(model_name):
        return
    base = model_name.removesuffix(QUICKGELU_SUFFIX)
    known = recognise(Path(pretrained).expanduser())
    if known is not None:
        what = f"it is open_clip's {known[0]}/{known[1]} checkpoint, trained with {'QuickGELU' if known[2] else 'GELU'}"
        use = f"use model {base}{QUICKGELU_SUFFIX}" if known[2] else "set quick_gelu: false"
        raise ConfigError(f"{where}: a local weights file must state its activation, and {what}: {use}")
    raise ConfigError(f"{where}: a local weights file must state its activation ({base} exists with GELU and with "
                      f"QuickGELU): use model {base}{QUICKGELU_SUFFIX} for OpenAI's weights (QuickGELU), or set "
                      f"quick_gelu: false for GELU weights (e.g. LAION's)")
