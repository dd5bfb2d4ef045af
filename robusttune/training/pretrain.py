"""Pre-training the mini world's tiny CLIP so that it behaves like a (small) pre-trained CLIP.

Recipe (plain from-scratch CLIP training collapsed the text tower here):
1. supervised warm start: the image tower + a throw-away linear head, cross-entropy on the uncorrelated stream;
2. CLIP training of both towers with a multi-positive InfoNCE (a caption is a positive for every image in
   the batch it truly describes) plus an image-to-class-prompt cross-entropy term.
The stream renders fresh images every step from the pre-training digits (uniform textures, 8 colours).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robusttune.config import WorldConfig
from robusttune.data.mini import captions, render
from robusttune.data.mini.world import WorldData
from robusttune.models.tiny import CompactTokenizer, create_tiny_clip
from robusttune.training.schedule import warmup_cosine

Progress = Callable[[str, int, int, float], None]  # (phase, step, total, loss)


@dataclass(frozen=True)
class StreamBatch:
    images: Tensor  # float, normalised
    labels: Tensor
    colours: Tensor
    textures: Tensor


def stream_batch(world: WorldData, batch_size: int, g: torch.Generator, mean, std) -> StreamBatch:
    from robusttune.data.sets import normalise

    index = torch.randint(0, len(world.pretrain_labels), (batch_size,), generator=g)
    labels = world.pretrain_labels[index]
    textures = render.uniform_textures(batch_size, g)
    colours = render.digit_colours(batch_size, render.PRETRAIN_STYLE, g)
    images = render.render(world.pretrain_glyphs[index], textures, colours, render.PRETRAIN_STYLE,
                           canvas=world.config.canvas_size, size=world.config.image_size, g=g)
    return StreamBatch(normalise(images, mean, std), labels, colours, textures)


def _captions(batch: StreamBatch, g: torch.Generator) -> tuple[list[str], Tensor]:
    """One caption per image (random template, colour/texture each mentioned w.p. 0.5) and the
    positive matrix ``P[i, j]``: caption j truly describes image i."""
    n = len(batch.labels)
    template = torch.randint(0, len(captions.PROMPT_TEMPLATES), (n,), generator=g)
    says_colour = torch.rand(n, generator=g) < 0.5
    says_texture = torch.rand(n, generator=g) < 0.5
    texts = [
        captions.caption(int(template[j]), int(batch.labels[j]),
                         int(batch.colours[j]) if says_colour[j] else None,
                         int(batch.textures[j]) if says_texture[j] else None)
        for j in range(n)
    ]
    same_digit = batch.labels[:, None] == batch.labels[None, :]
    colour_ok = ~says_colour[None, :] | (batch.colours[:, None] == batch.colours[None, :])
    texture_ok = ~says_texture[None, :] | (batch.textures[:, None] == batch.textures[None, :])
    return texts, same_digit & colour_ok & texture_ok


def multi_positive_nce(logits: Tensor, positives: Tensor) -> Tensor:
    """Mean of -log(sum of softmax mass on positives), image->text and text->image."""
    def one_way(scores: Tensor, pos: Tensor) -> Tensor:
        log_all = torch.logsumexp(scores, dim=1)
        log_pos = torch.logsumexp(scores.masked_fill(~pos, float("-inf")), dim=1)
        return (log_all - log_pos).mean()

    return 0.5 * (one_way(logits, positives) + one_way(logits.T, positives.T))


def pretrain_tiny_clip(world: WorldData, *, progress: Progress | None = None) -> tuple[nn.Module, CompactTokenizer, dict]:
    """Pre-train a tiny CLIP on the world's uncorrelated stream; returns (model, tokenizer, timings)."""
    config: WorldConfig = world.config
    recipe = config.pretrain
    torch.manual_seed(recipe.seed)
    tokenizer = CompactTokenizer.from_texts(captions.vocabulary_text(), config.model.context_length)
    model = create_tiny_clip(config.model, image_size=config.image_size, vocab_size=len(tokenizer), seed=recipe.seed)
    mean, std = model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"]
    g = torch.Generator().manual_seed(recipe.seed)
    started = time.perf_counter()
    model.train()

    # 1. supervised warm start of the image tower
    probe = nn.Linear(config.model.embed_dim, len(captions.CLASSNAMES))
    optimizer = torch.optim.AdamW([*model.visual.parameters(), *probe.parameters()], lr=recipe.lr, weight_decay=recipe.weight_decay)
    for step in range(recipe.supervised_steps):
        batch = stream_batch(world, recipe.batch_size, g, mean, std)
        loss = F.cross_entropy(probe(model.visual(batch.images)), batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress:
            progress("supervised", step + 1, recipe.supervised_steps, float(loss.detach()))

    # 2. multi-positive CLIP training of both towers
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, recipe.clip_steps, recipe.warmup_steps))
    class_prompts = [[t.format(name) for name in captions.CLASSNAMES] for t in captions.PROMPT_TEMPLATES]
    prompt_tokens = [tokenizer(p) for p in class_prompts]
    max_log_scale = math.log(recipe.max_logit_scale)
    for step in range(recipe.clip_steps):
        batch = stream_batch(world, recipe.batch_size, g, mean, std)
        texts, positives = _captions(batch, g)
        image_features = F.normalize(model.encode_image(batch.images), dim=-1)
        text_features = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
        scale = model.logit_scale.exp()
        loss = multi_positive_nce(scale * image_features @ text_features.T, positives)
        prompts = F.normalize(model.encode_text(prompt_tokens[step % len(prompt_tokens)]), dim=-1)
        loss = loss + F.cross_entropy(scale * image_features @ prompts.T, batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_log_scale)
        if progress:
            progress("clip", step + 1, recipe.clip_steps, float(loss.detach()))
    model.eval()
    return model, tokenizer, {"pretrain_seconds": round(time.perf_counter() - started, 1)}
