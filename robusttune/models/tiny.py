"""The mini world's tiny CLIP: a real ``open_clip.model.CLIP`` with a small config and a compact vocabulary.

The default 49,408-token embedding alone would be ten times the rest of the model, so the text tower
only embeds the token ids the world's captions use. The map from open_clip token ids to compact ids is
order-preserving, so end-of-text stays the largest id: the text tower pools at the argmax token.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from torch import Tensor

from robusttune.cache import atomic_write
from robusttune.config import TinyClipConfig
from robusttune.errors import CheckpointError, ModelError

# The mini world's images are normalised with CLIP's statistics, like any CLIP input.
MINI_MEAN = tuple(open_clip.OPENAI_DATASET_MEAN)
MINI_STD = tuple(open_clip.OPENAI_DATASET_STD)


class CompactTokenizer:
    """open_clip's BPE tokenizer followed by an order-preserving map onto the ids in ``vocab_ids``."""

    def __init__(self, vocab_ids: Tensor, context_length: int):
        self.vocab_ids = vocab_ids.to(torch.long).sort().values
        self.context_length = context_length
        self._lookup = torch.full((int(self.vocab_ids.max()) + 1,), -1, dtype=torch.long)
        self._lookup[self.vocab_ids] = torch.arange(len(self.vocab_ids))

    @classmethod
    def from_texts(cls, texts: Sequence[str], context_length: int) -> CompactTokenizer:
        tokens = open_clip.tokenize(list(texts), context_length=77)
        ids = torch.unique(torch.cat([tokens.flatten(), torch.tensor([0])]))
        return cls(ids, context_length)

    def __len__(self) -> int:
        return len(self.vocab_ids)

    @property
    def sot_token_id(self) -> int:
        return int(self._lookup[_full_start_end()[0]])

    @property
    def eot_token_id(self) -> int:
        return int(self._lookup[_full_start_end()[1]])

    def __call__(self, texts: Sequence[str] | str) -> Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        full = open_clip.tokenize(texts, context_length=77)
        lengths = (full > 0).sum(dim=1)
        if int(lengths.max()) > self.context_length:
            longest = texts[int(lengths.argmax())]
            raise ModelError(f"caption too long for context length {self.context_length}: {longest!r}")
        full = full[:, : self.context_length]
        if int(full.max()) >= len(self._lookup) or bool((self._lookup[full] < 0).any()):
            raise ModelError("text uses words outside the tiny CLIP's vocabulary")
        return self._lookup[full]


def _full_start_end() -> tuple[int, int]:
    """open_clip's start- and end-of-text ids: the empty caption's tokens (through the tokenizer this class already
    uses; ``open_clip.get_tokenizer`` would configure the root logger of the process as a side effect)."""
    empty = open_clip.tokenize([""], context_length=77)[0]
    return int(empty[0]), int(empty[1])


def create_tiny_clip(config: TinyClipConfig, *, image_size: int, vocab_size: int, seed: int = 0) -> CLIP:
    """A randomly initialised tiny CLIP (seeded)."""
    vision = CLIPVisionCfg(
        layers=config.vision_layers, width=config.vision_width, head_width=config.vision_head_width,
        patch_size=config.patch_size, image_size=image_size,
    )
    text = CLIPTextCfg(
        context_length=config.context_length, vocab_size=vocab_size, width=config.text_width,
        heads=config.text_heads, layers=config.text_layers,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(embed_dim=config.embed_dim, vision_cfg=vision, text_cfg=text)
    model.visual.preprocess_cfg = {"mean": MINI_MEAN, "std": MINI_STD, "size": (image_size, image_size)}
    return model


def save_tiny_clip(path: str | Path, model: CLIP, tokenizer: CompactTokenizer, meta: dict[str, Any]) -> Path:
    """Write the weights (tensors only) and a JSON sidecar with the configuration and measurements."""
    path = Path(path)
    state = {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    state["vocab_ids"] = tokenizer.vocab_ids.clone()
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    from robusttune.cache import atomic_write_json

    atomic_write_json(path.with_suffix(".json"), meta)
    return path


def load_tiny_clip(path: str | Path, config: TinyClipConfig, *, image_size: int) -> tuple[CLIP, CompactTokenizer]:
    """Load a tiny CLIP written by ``save_tiny_clip`` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: tiny CLIP checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or foreign files surface as many exception types
        raise CheckpointError(f"{path}: not a readable weights-only checkpoint ({type(error).__name__})") from None
    if not isinstance(state, dict) or "vocab_ids" not in state:
        raise CheckpointError(f"{path}: not a tiny CLIP checkpoint (no vocab_ids)")
    tokenizer = CompactTokenizer(state.pop("vocab_ids"), config.context_length)
    model = create_tiny_clip(config, image_size=image_size, vocab_size=len(tokenizer))
    weights = {k.removeprefix("model."): v for k, v in state.items()}
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not match the world's tiny CLIP config: {str(error).splitlines()[0][:200]}") from None
    return model, tokenizer


def read_sidecar(path: str | Path) -> dict[str, Any]:
    sidecar = Path(path).with_suffix(".json")
    return json.loads(sidecar.read_text()) if sidecar.is_file() else {}
