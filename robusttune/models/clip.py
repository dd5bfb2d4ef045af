"""Building CLIP models with open_clip (the only model library) and turning them into classifiers.

Weights come from a local file, from open_clip's local cache, or (only when explicitly allowed) a download.
robusttune never downloads silently: a pretrained tag whose weights are not cached fails fast with a
message that says how to pass a local file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import open_clip
import torch
from torch import Tensor

from robusttune import progress
from robusttune.errors import CheckpointError, ModelError
from robusttune.models.classifier import ImageClassifier

log = logging.getLogger(__name__)

Tokenizer = Callable[[Sequence[str]], Tensor]


def check_model_name(name: str) -> None:
    known = open_clip.list_models()
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ModelError(f"unknown open_clip model name '{name}'{hint}")


def _cached_weights(name: str, tag: str) -> str | None:
    """The local path of ``name``/``tag`` weights if open_clip's caches already hold them."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if cfg.get("file"):
        return cfg["file"] if Path(cfg["file"]).is_file() else None
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hub)
        candidates = [filename] if filename else []
        candidates += ["open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin"]
        for candidate in candidates:
            found = try_to_load_from_cache(repo_id, candidate)
            if isinstance(found, str) and Path(found).is_file():
                return found
    url = cfg.get("url", "")
    if url:
        legacy = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if legacy.is_file():
            return str(legacy)
    return None


def create_clip(name: str, pretrained: str | None, *, allow_download: bool = False,
                quick_gelu: bool | None = None) -> tuple[torch.nn.Module, Tokenizer]:
    """An open_clip CLIP by model name and weights: a local file path, a pretrained tag, or None (random init).

    OpenAI weights use QuickGELU: a local file must state its activation (the ``-quickgelu`` model name, e.g.
    ``ViT-B-32-quickgelu``, or ``quick_gelu``; ``robusttune.models.pretrained.check_activation``); with the ``openai``
    tag open_clip sets it automatically.
    """
    from robusttune.models.pretrained import check_activation, is_weights_file

    check_model_name(name)
    check_activation(name, pretrained, quick_gelu=quick_gelu)
    tokenizer = open_clip.get_tokenizer(name)
    if pretrained is None or pretrained == "none":
        return open_clip.create_model(name, pretrained=None, force_quick_gelu=bool(quick_gelu)), tokenizer
    path = Path(pretrained).expanduser()
    if is_weights_file(pretrained):
        model = open_clip.create_model(name, pretrained=None, force_quick_gelu=bool(quick_gelu))
        load_clip_weights(model, path)
        return model, tokenizer
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise ModelError(f"unknown pretrained tag '{pretrained}' for {name}; known tags: {', '.join(tags) or 'none'}, or pass a local checkpoint file")
    cached = _cached_weights(name, pretrained)
    if cached is None and not allow_download:
        raise ModelError(
            f"pretrained weights {name}/{pretrained} are not in the local cache and robusttune does not download "
            f"at run time; pass a local checkpoint file as the pretrained value (e.g. open_clip_pytorch_model.bin), "
            f"or allow downloads explicitly (allow_download: true)"
        )
    model = open_clip.create_model(name, pretrained=cached if cached is not None else pretrained,
                                   force_quick_gelu=bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu")))
    return model, tokenizer


def load_clip_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a CLIP state dict (open_clip or OpenAI layout) from ``path`` with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        open_clip.load_checkpoint(model, str(path), weights_only=True)
    except (RuntimeError, KeyError, ValueError, EOFError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: cannot load CLIP weights: {first[:300]}") from None
    except Exception as error:  # unpickling errors come in several types across torch versions
        if "pickle" in type(error).__name__.lower() or "weights_only" in str(error):
            raise CheckpointError(f"{path}: not a weights-only checkpoint (refusing to unpickle arbitrary objects)") from None
        raise


def image_stats(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the model's images are normalised with (open_clip's preprocess config)."""
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    return mean, std


def zero_shot_head(
    model: torch.nn.Module, tokenizer: Tokenizer, classnames: Sequence[str], templates: Sequence[str | Callable[[str], str]],
    *, batch_classes: int = 10, device: str | torch.device = "cpu",
) -> Tensor:
    """Zero-shot head weights ``(C, D)``: per class the mean of its L2-normalised prompt embeddings,
    re-normalised and scaled by ``logit_scale.exp()`` (open_clip's ``build_zero_shot_classifier``)."""
    if not classnames or not templates:
        raise ModelError("a zero-shot head needs at least one class name and one template")
    was_training = model.training
    home = next(model.parameters()).device
    model.to(device).eval()  # the text tower runs where the head is built (a GPU when there is one), then goes home
    try:
        weights = open_clip.build_zero_shot_classifier(
            model, tokenizer=tokenizer, classnames=list(classnames), templates=list(templates),
            num_classes_per_batch=batch_classes, device=device,
            use_tqdm=progress.bars_shown() and len(classnames) * len(templates) >= 1000,  # only a long build draws a bar
        )
    finally:
        model.to(home).train(was_training)
    with torch.no_grad():
        return (model.logit_scale.exp() * weights.T).detach().float().cpu().clone()


def build_classifier(
    model: torch.nn.Module, tokenizer: Tokenizer, classnames: Sequence[str], templates: Sequence[str | Callable[[str], str]],
    *, head_folders: Sequence[Path] = (), device: str | torch.device | None = None,
) -> ImageClassifier:
    """The zero-shot classifier (image tower + head) that fine-tuning starts from. With ``head_folders`` the head is
    read from (or built once into) those folders (``robusttune.models.heads``). The head is built on ``device``
    (default: the first visible GPU, else the CPU)."""
    mean, std = image_stats(model)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if head_folders:
        from robusttune.models.heads import cached_head

        head = cached_head(model, classnames, templates,
                           lambda: zero_shot_head(model, tokenizer, classnames, templates, device=device), folders=head_folders)
    else:
        head = zero_shot_head(model, tokenizer, classnames, templates, device=device)
    # The classifier shares the image tower's modules and keeps a frozen copy of the text side (for methods that
    # read text features); the caller drops the CLIP.
    from robusttune.models.text import text_side

    classifier = ImageClassifier(model.visual, head, mean=mean, std=std)
    classifier.text = text_side(model, tokenizer, classnames, templates)
    return classifier


def imagenet_classnames_and_templates() -> tuple[list[str], list[Callable[[str], str]]]:
    """ImageNet's 1000 class names and the 80 OpenAI templates, as shipped by open_clip."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    return list(IMAGENET_CLASSNAMES), list(OPENAI_IMAGENET_TEMPLATES)


def preprocess_for(image_size: int | tuple[int, int], mean=open_clip.OPENAI_DATASET_MEAN,
                   std=open_clip.OPENAI_DATASET_STD) -> Callable:
    """open_clip's evaluation transform (resize + centre crop, no augmentation) up to uint8 ``(3, H, W)``: its
    ``ToTensor`` + ``Normalize`` happen on the model's device (``ImageClassifier.prepare``), with the same arithmetic."""
    from torchvision.transforms import Compose, Normalize, PILToTensor

    full = open_clip.image_transform(image_size, is_train=False, mean=mean, std=std)
    *geometry, to_tensor, normalize = full.transforms
    if not isinstance(normalize, Normalize) or "ToTensor" not in type(to_tensor).__name__:
        raise ModelError(f"unexpected open_clip preprocess layout: {full}")
    return Compose([*geometry, PILToTensor()])


def imagenet_preprocess(model: torch.nn.Module) -> Callable:
    """The uint8 evaluation transform of ``model`` (``preprocess_for`` its image size)."""
    return preprocess_for(model.visual.image_size, *image_stats(model))


def model_image_size(name: str) -> int | tuple[int, int]:
    """A model's input size from open_clip's config (no weights built)."""
    check_model_name(name)
    return open_clip.get_model_config(name)["vision_cfg"]["image_size"]
