import time
from pathlib import Path

import open_clip
import pytest
import torch

from robusttune.config import CamMethod
from robusttune.errors import CheckpointError, ModelError
from robusttune.models.classifier import ImageClassifier, frozen_copy
from robusttune.models.clip import build_classifier, create_clip
from robusttune.models.tiny import CompactTokenizer
from robusttune.models.vit import check_supported, vit_forward


@pytest.fixture(scope="module")
def vit_b32():
    torch.manual_seed(0)
    model, tokenizer = create_clip("ViT-B-32", None)
    return model, tokenizer


def test_vit_b32_random_weights_forward_backward(vit_b32):
    model, tokenizer = vit_b32
    classifier = build_classifier(model, tokenizer, ["cat", "dog", "car"], ["a photo of a {}.", "a {}."])
    images = torch.randn(2, 3, 224, 224)
    out = classifier.run(images, cam=CamMethod.RELEVANCE)
    assert out.features.shape == (2, 512) and out.logits.shape == (2, 3)
    assert len(out.vit.attentions) == 12 and out.vit.attentions[0].shape == (2, 12, 50, 50)
    torch.testing.assert_close(out.vit.attentions[0].sum(-1), torch.ones(2, 12, 50))
    out.logits.sum().backward()
    assert classifier.visual.conv1.weight.grad is not None
    assert float(classifier.visual.conv1.weight.grad.abs().sum()) > 0
    # our forward reproduces open_clip's own vision forward
    with torch.no_grad():
        torch.testing.assert_close(vit_forward(classifier.visual, images).features, classifier.visual(images), atol=1e-5, rtol=1e-5)


def test_local_checkpoint_round_trip(tmp_path: Path):
    torch.manual_seed(1)
    model, _ = create_clip("ViT-B-32", None)
    path = tmp_path / "clip.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded, _ = create_clip("ViT-B-32", str(path), quick_gelu=False)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_corrupt_or_foreign_checkpoint_is_refused(tmp_path: Path):
    corrupt = tmp_path / "broken.pt"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="broken.pt"):
        create_clip("ViT-B-32", str(corrupt), quick_gelu=False)
    with pytest.raises(CheckpointError, match="not found"):
        create_clip("ViT-B-32", str(tmp_path / "missing.pt"), quick_gelu=False)


def test_uncached_pretrained_tag_fails_fast_with_advice(monkeypatch, tmp_path):
    import huggingface_hub.constants

    # an empty machine: no Hugging Face cache, no legacy ~/.cache/clip
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path))
    started = time.perf_counter()
    with pytest.raises(ModelError, match="pass a local checkpoint file"):
        create_clip("ViT-B-32", "openai")
    assert time.perf_counter() - started < 10
    with pytest.raises(ModelError, match="unknown pretrained tag 'opena'"):
        create_clip("ViT-B-32", "opena")
    with pytest.raises(ModelError, match="did you mean 'ViT-B-32'"):
        create_clip("ViT-B-33", None)


def test_unknown_block_type_fails_loudly(vit_b32):
    model, _ = vit_b32
    import copy

    visual = copy.deepcopy(model.visual)
    visual.transformer.resblocks[3] = torch.nn.Identity()
    with pytest.raises(ModelError, match=r"unsupported vision block type Identity .* at block 3"):
        check_supported(visual)
    with pytest.raises(ModelError, match="VisionTransformer"):
        check_supported(torch.nn.Linear(2, 2))


def test_tiny_forward_matches_open_clip_and_drop_patches_changes_output(tiny_prepared):
    classifier = tiny_prepared.classifier()
    images = classifier.prepare(tiny_prepared.task().train.batch(torch.arange(4))[0])
    with torch.no_grad():
        torch.testing.assert_close(classifier.forward_features(images), classifier.visual(images), atol=1e-5, rtol=1e-5)
        captured = classifier.run(images, cam=CamMethod.RELEVANCE).features
        torch.testing.assert_close(captured, classifier.forward_features(images), atol=1e-5, rtol=1e-5)
        patches = classifier.grid_size[0] * classifier.grid_size[1]
        drop = torch.zeros(4, patches, dtype=torch.bool)
        drop[:, :10] = True
        dropped = classifier.run(images, drop_patches=drop, cam=CamMethod.RELEVANCE)
        assert not torch.allclose(dropped.features, captured)
        # dropped keys get exactly zero attention in every block
        assert float(dropped.vit.attentions[-1][..., 1:11].abs().max()) == 0.0


def test_teacher_is_a_frozen_independent_copy(tiny_prepared):
    student = tiny_prepared.classifier()
    teacher = frozen_copy(student)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        student.head.weight.add_(1.0)
    assert not torch.equal(student.head.weight, teacher.head.weight)


def test_compact_tokenizer_preserves_order_and_refuses_truncation():
    texts = ["a photo of the digit seven.", "an image of a two."]
    tokenizer = CompactTokenizer.from_texts(texts, context_length=16)
    ids = tokenizer(texts)
    full = open_clip.tokenize(texts, context_length=16)
    assert torch.equal(ids.argmax(dim=1), full.argmax(dim=1))  # end-of-text stays the largest id
    assert int(ids.max()) == len(tokenizer) - 1
    with pytest.raises(ModelError, match="too long"):
        tokenizer(["a photo of the digit seven " * 5])
    with pytest.raises(ModelError, match="outside the tiny CLIP's vocabulary"):
        tokenizer(["zebra"])


def test_zero_shot_head_is_scaled_class_mean_of_normalised_prompts(tiny_prepared):
    from robusttune.data.mini.captions import CLASSNAMES, PROMPT_TEMPLATES
    from robusttune.models.tiny import load_tiny_clip

    config = tiny_prepared.world.config
    clip, tokenizer = load_tiny_clip(tiny_prepared.weights, config.model, image_size=config.image_size)
    classifier = tiny_prepared.classifier()
    with torch.no_grad():
        texts = [t.format(c) for c in CLASSNAMES for t in PROMPT_TEMPLATES]
        emb = torch.nn.functional.normalize(clip.encode_text(tokenizer(texts)), dim=-1).reshape(10, len(PROMPT_TEMPLATES), -1)
        expected = torch.nn.functional.normalize(emb.mean(1), dim=-1) * clip.logit_scale.exp()
    torch.testing.assert_close(classifier.head.weight, expected, atol=1e-5, rtol=1e-5)
    assert isinstance(classifier, ImageClassifier) and float(classifier.head.bias.detach().abs().sum()) == 0.0


def test_zero_shot_head_is_built_once_and_a_bad_copy_is_rebuilt(tiny_prepared, tmp_path, monkeypatch):
    from robusttune.data.mini.captions import CLASSNAMES, PROMPT_TEMPLATES
    from robusttune.models.heads import head_key
    from robusttune.models.tiny import load_tiny_clip

    config = tiny_prepared.world.config
    model, tokenizer = load_tiny_clip(tiny_prepared.weights, config.model, image_size=config.image_size)
    folders = [tmp_path / "experiment-heads", tmp_path / "cache-heads"]
    built = build_classifier(model, tokenizer, CLASSNAMES, PROMPT_TEMPLATES, head_folders=folders).head.weight.detach()
    key = head_key(model, CLASSNAMES, PROMPT_TEMPLATES)
    assert all((folder / f"head-{key}.pt").is_file() for folder in folders)
    torch.testing.assert_close(built, build_classifier(model, tokenizer, CLASSNAMES, PROMPT_TEMPLATES).head.weight.detach())

    calls = []
    real = open_clip.build_zero_shot_classifier
    monkeypatch.setattr(open_clip, "build_zero_shot_classifier", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = build_classifier(model, tokenizer, CLASSNAMES, PROMPT_TEMPLATES, head_folders=folders).head.weight.detach()
    assert calls == [] and torch.equal(again, built)  # read back, not rebuilt
    (folders[0] / f"head-{key}.pt").write_bytes(b"torn")  # a corrupt shared copy: the cache's copy serves, it is rewritten
    build_classifier(model, tokenizer, CLASSNAMES, PROMPT_TEMPLATES, head_folders=folders)
    assert calls == [] and torch.equal(torch.load(folders[0] / f"head-{key}.pt", weights_only=True)["head"], built)
    for folder in folders:  # both copies bad: rebuilt, never trusted
        torch.save({"format": "robusttune.head/1", "key": key, "head": torch.zeros(3, 3)}, folder / f"head-{key}.pt")
    rebuilt = build_classifier(model, tokenizer, CLASSNAMES, PROMPT_TEMPLATES, head_folders=folders).head.weight.detach()
    assert calls == [1] and torch.equal(rebuilt, built)
    # the key follows everything the head depends on: prompts, classes, text weights
    assert head_key(model, CLASSNAMES, PROMPT_TEMPLATES[:1]) != key
    assert head_key(model, list(reversed(CLASSNAMES)), PROMPT_TEMPLATES) != key
    original = model.token_embedding.weight[0, 0].item()
    with torch.no_grad():
        model.token_embedding.weight[0, 0] += 1.0
    assert head_key(model, CLASSNAMES, PROMPT_TEMPLATES) != key
    with torch.no_grad():
        model.token_embedding.weight[0, 0] = original
        model.visual.conv1.weight[0, 0, 0, 0] += 1.0  # the image tower does not enter the head
    assert head_key(model, CLASSNAMES, PROMPT_TEMPLATES) == key
