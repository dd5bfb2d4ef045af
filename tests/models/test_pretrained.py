"""The weights' activation is stated, never guessed: a local weights file of a model that exists with GELU and with
QuickGELU (ViT-B-32) is refused in one line unless the model name (``-quickgelu``) or ``quick_gelu`` says which; the
staging check looks for a pretrained tag's weights on the node."""

import hashlib

import pytest
import torch
import yaml
from helpers import assert_one_line_exit_2, invoke

from robusttune.errors import ConfigError
from robusttune.models import pretrained
from robusttune.models.pretrained import check_activation


@pytest.fixture(scope="module")
def random_vit_b32_file(tmp_path_factory):
    """Random ViT-B-32 weights in open_clip's state-dict format (its keys and shapes, read off a model built on the
    meta device; fp16: half the bytes, loading casts them)."""
    import open_clip
    from open_clip.model import CLIP

    with torch.device("meta"):  # open_clip's own ViT-B-32, without weights
        shapes = {k: (v.shape, v.dtype) for k, v in CLIP(**open_clip.get_model_config("ViT-B-32")).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(shape, generator=generator) * 0.02).half() if dtype.is_floating_point
             else torch.zeros(shape, dtype=dtype) for k, (shape, dtype) in shapes.items()}
    path = tmp_path_factory.mktemp("weights") / "vit_b32.pt"
    torch.save(state, path)
    return path


def activations(model) -> set[str]:
    return {type(m).__name__ for m in model.visual.modules() if type(m).__name__ in ("GELU", "QuickGELU")}


def test_a_local_file_without_its_activation_is_refused_and_quickgelu_runs(random_vit_b32_file):
    from robusttune.models.clip import create_clip

    path = str(random_vit_b32_file)
    with pytest.raises(ConfigError) as refused:
        create_clip("ViT-B-32", path)
    message = str(refused.value)
    assert "\n" not in message and "must state its activation" in message and "use model ViT-B-32-quickgelu" in message
    model, _ = create_clip("ViT-B-32-quickgelu", path)  # stated by the name: OpenAI's activation
    assert activations(model) == {"QuickGELU"}
    saved = torch.load(path, weights_only=True)
    assert torch.equal(model.state_dict()["visual.conv1.weight"], saved["visual.conv1.weight"].float())


@pytest.mark.slow
def test_the_quick_gelu_key_states_the_activation(random_vit_b32_file):
    from robusttune.models.clip import create_clip

    model, _ = create_clip("ViT-B-32", str(random_vit_b32_file), quick_gelu=True)  # stated by the key
    assert activations(model) == {"QuickGELU"}
    model, _ = create_clip("ViT-B-32", str(random_vit_b32_file), quick_gelu=False)  # GELU weights, said so
    assert activations(model) == {"GELU"}


def test_a_known_checkpoint_is_named_in_the_refusal(random_vit_b32_file, monkeypatch):
    # open_clip's registry names OpenAI's files by sha256 (in their URLs)
    assert pretrained.known_checkpoints()[
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"] == ("ViT-B-32", "openai", True)
    digest = hashlib.sha256(random_vit_b32_file.read_bytes()).hexdigest()
    monkeypatch.setattr(pretrained, "known_checkpoints", lambda: {digest: ("ViT-B-32", "openai", True)})
    with pytest.raises(ConfigError, match="it is open_clip's ViT-B-32/openai checkpoint, trained with QuickGELU: "
                                          "use model ViT-B-32-quickgelu"):
        check_activation("ViT-B-32", str(random_vit_b32_file))


def test_what_needs_no_statement_and_what_contradicts_itself():
    check_activation("ViT-B-32", None)  # random init
    check_activation("ViT-B-32", "openai")  # a tag: open_clip's config says QuickGELU
    check_activation("ViT-B-32", "laion2b_s34b_b79k", quick_gelu=False)
    check_activation("ViT-B-32-quickgelu", "/weights/missing.pt")  # stated by the name (the file is checked later)
    check_activation("ViT-B-32", "/weights/missing.pt", quick_gelu=False)
    check_activation("ViT-B-16-SigLIP", "/weights/siglip.pt")  # one activation only: nothing to state
    with pytest.raises(ConfigError, match="a local weights file must state its activation .ViT-B-32 exists with GELU "
                                          "and with QuickGELU.: use model ViT-B-32-quickgelu"):
        check_activation("ViT-B-32", "/weights/missing.pt")
    with pytest.raises(ConfigError, match="quick_gelu: false contradicts the model name ViT-B-32-quickgelu"):
        check_activation("ViT-B-32-quickgelu", "/weights/w.pt", quick_gelu=False)
    with pytest.raises(ConfigError, match="quick_gelu: false contradicts the 'openai' weights, trained with QuickGELU"):
        check_activation("ViT-B-32", "openai", quick_gelu=False)


def imagenet_space(tmp_path, **imagenet):
    (tmp_path / "train").mkdir(exist_ok=True)
    task = {"model": "ViT-B-32", "pretrained": str(tmp_path / "w" / "vit_b32.pt"), "train_dir": str(tmp_path / "train"),
            "val_dir": str(tmp_path / "val"), **imagenet}
    space = {"name": "inet", "task": {"imagenet": task}, "objective": {"metrics": ["id_val_acc", "id_acc"],
                                                                      "directions": ["max", "max"]},
             "parameters": {"lr": {"type": "float", "low": 1e-5, "high": 1e-4, "log": True}}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def test_sweep_and_train_refuse_an_unstated_activation_before_anything(tmp_path, cache_dir):
    space = imagenet_space(tmp_path)
    result = invoke("sweep", space, "--storage", tmp_path / "runs", "--name", "x", cache_dir=cache_dir)
    assert_one_line_exit_2(result, f"model ViT-B-32 with pretrained {tmp_path / 'w' / 'vit_b32.pt'}: a local weights "
                                   f"file must state its activation")
    assert not (tmp_path / "runs").exists()
    config = tmp_path / "train.yaml"  # robusttune train: refused before the folders are read
    config.write_text(yaml.safe_dump({"imagenet": {"model": "ViT-B-32", "pretrained": str(tmp_path / "w.pt"),
                                                   "train_dir": "/nonexistent/train", "val_dir": "/nonexistent/val"},
                                      "steps": 1}))
    result = invoke("train", "--config", config, "--out", tmp_path / "out", cache_dir=cache_dir)
    assert_one_line_exit_2(result, "must state its activation")
    bad = imagenet_space(tmp_path, model="ViT-B-32-quickgelu", quick_gelu=False)
    result = invoke("sweep", bad, "--storage", tmp_path / "runs", "--name", "x", cache_dir=cache_dir)
    assert_one_line_exit_2(result, "quick_gelu: false contradicts the model name ViT-B-32-quickgelu")


def test_the_shipped_paper_spaces_name_a_file_and_its_activation():
    from robusttune.space import load_space

    for name in ("paper", "paper_proxy"):
        imagenet = load_space(name)[0].task.imagenet
        assert imagenet.model == "ViT-B-32-quickgelu" and imagenet.pretrained.endswith(".pt"), name
        check_activation(imagenet.model, imagenet.pretrained, quick_gelu=imagenet.quick_gelu)


def test_staging_looks_for_a_tags_weights_on_the_node(tmp_path, monkeypatch):
    from robusttune.models import clip
    from robusttune.search.staging import cached_tag, required_paths, tag_missing
    from robusttune.space import load_space

    tagged = load_space(str(imagenet_space(tmp_path, pretrained="openai")))[0]
    assert cached_tag(tagged) == ("ViT-B-32", "openai") and [w for w, _ in required_paths(tagged)] == ["train_dir", "val_dir"]
    downloads = load_space(str(imagenet_space(tmp_path, pretrained="openai", allow_download=True)))[0]
    assert cached_tag(downloads) is None  # fetched by the trial itself
    filed = load_space(str(imagenet_space(tmp_path, model="ViT-B-32-quickgelu")))[0]
    assert cached_tag(filed) is None and ("pretrained weights", str(tmp_path / "w" / "vit_b32.pt")) in required_paths(filed)
    monkeypatch.setattr(clip, "_cached_weights", lambda model, tag: None)
    assert tag_missing(("ViT-B-32", "openai")).startswith("pretrained weights ViT-B-32/openai (not in open_clip's cache")
    monkeypatch.setattr(clip, "_cached_weights", lambda model, tag: "/cache/open_clip_model.safetensors")
    assert tag_missing(("ViT-B-32", "openai")) is None
