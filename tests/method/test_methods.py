"""The method registry: every registered method has its knobs and its step, each step is its paper's definition, and
every method trains and resumes bit-identically through the one loop."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from helpers import assert_same_run, interrupted_then_resumed, invoke, train_config, train_run
from robusttune.method import registry
from robusttune.method.flyp import clip_contrastive_loss
from robusttune.method.l2sp import l2sp_penalty
from robusttune.method.lipsum import lipsum_regulariser, random_token_sequences
from robusttune.method.lp_ft import probe_steps
from robusttune.methods import METHODS, MethodName, knob_names
from robusttune.models.classifier import frozen_copy
from robusttune.training.loop import StepComputer

SMALL = dict(steps=4, batch_size=16, eval_every=2, eval_batch_size=128, lr=1e-3)
EVERY_METHOD = [dict(method="ft"), dict(method="lp"), dict(method="lp_ft", lp_fraction=0.5),
                dict(method="l2sp", strength=0.5), dict(method="flyp"), dict(method="lipsum", texts=16),
                dict(method="masked_distill", region="object", w_distill=1.0)]


def test_every_method_has_its_knobs_and_its_step():
    assert registry.registered() == sorted(m.value for m in MethodName) == sorted(m.value for m in METHODS)
    for name, knobs in METHODS.items():
        assert knobs().name is name  # every knob has a default: a method is usable by its name alone
    assert knob_names("ft") == knob_names("lp") == knob_names("flyp") == [] and knob_names("lp_ft") == ["lp_fraction"]
    assert knob_names("l2sp") == ["strength"] and "w_distill" in knob_names("masked_distill")
    assert knob_names("lipsum") == ["reg_weight", "texts", "text_length"]
    lipsum = METHODS[MethodName.LIPSUM]()
    assert (lipsum.reg_weight, lipsum.texts, lipsum.text_length) == (1.0, 80, 8)  # the official script's defaults


@pytest.mark.parametrize("variant", EVERY_METHOD, ids=lambda v: v["method"])
def test_every_method_trains_and_resumes_bit_identically(tiny_prepared, tmp_path, variant):
    config = train_config(**SMALL, **variant)
    uninterrupted = train_run(tiny_prepared, config)
    assert uninterrupted[1].status == "complete"
    assert set(uninterrupted[1].history[-1]["metrics"]) >= {"id_acc", "id_val_acc", "ood_mean"}
    # resumed at step 2, which for LP-FT (half of 4 steps) is where the fine-tuning stage starts
    assert_same_run(uninterrupted, interrupted_then_resumed(tiny_prepared, config, tmp_path / "ckpt.pt", stop_at=2))


def test_ft_is_the_papers_method_without_distillation(tiny_prepared):
    """The same steps bit for bit: vanilla FT is not a separate code path's approximation."""
    assert_same_run(train_run(tiny_prepared, train_config(**SMALL, method="ft")),
                    train_run(tiny_prepared, train_config(**SMALL, w_distill=0.0)))
    assert_same_run(train_run(tiny_prepared, train_config(**SMALL, method="ft")),
                    train_run(tiny_prepared, train_config(**SMALL, method="l2sp", strength=0.0)))


def test_l2sp_penalty_is_the_official_formula():
    """holyseven/TransferLearningClassification model/network_base.py: ``alpha * tf.nn.l2_loss(w - w0)`` summed over
    the kernels, ``tf.nn.l2_loss(x) = sum(x ** 2) / 2``."""
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(5, 7, generator=g), torch.randn(3, 3, 2, 2, generator=g)]
    anchors = [w + 0.1 * torch.randn(w.shape, generator=g) for w in weights]
    official = sum(0.3 * ((w - a) ** 2).sum() / 2 for w, a in zip(weights, anchors))
    torch.testing.assert_close(l2sp_penalty(weights, anchors, 0.3), official, atol=1e-6, rtol=1e-6)


def test_l2sp_step_adds_the_penalty_over_the_weight_matrices(tiny_prepared):
    student = tiny_prepared.classifier()
    teacher = frozen_copy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    images, labels = tiny_prepared.task().train.batch(torch.arange(8))
    images = student.prepare(images)
    loss, parts = StepComputer(train_config(method="l2sp", strength=2.0), student, teacher).loss(images, labels, 0)
    anchors = dict(teacher.named_parameters())
    matrices = [(name, p) for name, p in student.named_parameters() if p.ndim >= 2]
    assert {name for name, _ in matrices} >= {"head.weight", "visual.conv1.weight", "visual.proj"}
    assert not any(name.endswith(".bias") or "ln_" in name for name, _ in matrices)
    expected = F.cross_entropy(student(images), labels) + sum(((p - anchors[n]) ** 2).sum() for n, p in matrices)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-6)
    assert float(parts["loss_l2sp"]) > 0
    loss.backward()  # the penalty pulls toward the anchors: its gradient is strength * (w - w0) on top of the CE's
    assert student.visual.conv1.weight.grad is not None


def test_l2sp_with_a_very_large_weight_ends_near_the_initial_weights(tiny_prepared):
    """Strength 1e4 holds every penalised weight within 1e-3 of the zero-shot weights over 12 steps (the moves are
    AdamW's, of order lr, and the penalty pulls each one back); plain FT with the same settings moves further."""
    zero_shot = tiny_prepared.classifier().state_dict()
    matrices = [k for k, v in zero_shot.items() if v.ndim >= 2 and v.is_floating_point()]

    def drift(**method) -> float:
        states = []
        config = train_config(**{**SMALL, "steps": 12, "eval_every": 12, "lr": 3e-4, "weight_decay": 0.0}, **method)
        train_run(tiny_prepared, config, save_checkpoint=lambda state: states.append(copy.deepcopy(state)))
        return max(float((states[-1]["model"][k] - zero_shot[k]).abs().max()) for k in matrices)

    held, free = drift(method="l2sp", strength=1e4), drift(method="ft")
    assert held < 1e-3 < free, (held, free)


def test_lp_ft_trains_the_head_alone_then_every_weight(tiny_prepared):
    zero_shot = tiny_prepared.classifier().state_dict()
    states = []
    config = train_config(**{**SMALL, "steps": 6, "eval_every": 3}, method="lp_ft", lp_fraction=0.5)
    assert probe_steps(0.5, 6) == 3
    train_run(tiny_prepared, config, save_checkpoint=lambda state: states.append(copy.deepcopy(state)))
    after_probe, after_ft = (state["model"] for state in states)
    tower = [k for k in zero_shot if k.startswith("visual.")]
    assert all(torch.equal(after_probe[k], zero_shot[k]) for k in tower)  # the probing stage: tower untouched
    assert not torch.equal(after_probe["head.weight"], zero_shot["head.weight"])
    assert sum(not torch.equal(after_ft[k], zero_shot[k]) for k in tower) == len(tower)  # then every weight trains
    # AdamW kept no moments for the tower during the probe (it had no gradient), so they start at the stage switch
    moments = states[0]["optimizer"]["state"]
    assert len(moments) == 2  # the head's weight and bias


def test_a_linear_probe_holds_only_the_head_in_its_optimizer(tiny_prepared):
    states = []
    train_run(tiny_prepared, train_config(**SMALL, method="lp"), save_checkpoint=lambda state: states.append(copy.deepcopy(state)))
    assert len(states[-1]["optimizer"]["param_groups"][0]["params"]) == 2


def test_train_config_file_names_the_method(tiny_world_config, tmp_path, cache_dir):
    """``robusttune train --config FILE`` with ``method: {name: lp}`` trains a linear probe, and its ``final.pt`` is
    today's format (``model``: the classifier's state dict) with the config it trained with."""
    path = tmp_path / "lp.yaml"
    path.write_text(yaml.safe_dump({"world": tiny_world_config.to_dict(), **SMALL, "method": {"name": "lp"}}))
    result = invoke("train", "--config", path, "--out", tmp_path / "run", "--json", "--threads", "2", cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    final = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    assert json.loads(final["config"])["method"] == {"name": "lp"}
    start = torch.load(tmp_path / "run" / "final.pt", weights_only=True)["model"]
    assert set(start) >= {"head.weight", "visual.conv1.weight"}
    flags = invoke("train", "--config", path, "--method", "l2sp", "--strength", "0.2", "--out", tmp_path / "l2sp",
                   "--json", "--threads", "2", "--steps", "0", cache_dir=cache_dir)
    assert flags.returncode == 0, flags.stderr
    trained = torch.load(tmp_path / "l2sp" / "final.pt", weights_only=True)
    assert json.loads(trained["config"])["method"] == {"name": "l2sp", "strength": 0.2}
    wrong = invoke("train", "--config", path, "--w-distill", "3", "--out", tmp_path / "bad", cache_dir=cache_dir)
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == (f"robusttune: error: {path}: unknown key 'method.w_distill' (a knob of masked_distill, "
                                    "not of method 'lp')")
    assert not (tmp_path / "bad").exists()


def test_lipsum_regulariser_is_the_official_formula():
    """cs-giung/lipsum-ft scripts/Lipsum-FT.py: ``target = s * priors @ T.T``, ``source = s * output @ T.T`` on
    L2-normalised image features, ``mean(sum((source - target) ** 2, -1) / (2 * M))``; written here with loops."""
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    texts = F.normalize(torch.randn(5, 10, generator=g), dim=-1)
    s = 14.3
    total = 0.0
    for b in range(6):
        f, f0 = student[b] / student[b].norm(), teacher[b] / teacher[b].norm()
        total += sum(float((s * f @ texts[m] - s * f0 @ texts[m]) ** 2) for m in range(5)) / (2 * 5)
    torch.testing.assert_close(lipsum_regulariser(student, teacher, texts, s), torch.tensor(total / 6), atol=1e-6, rtol=1e-6)
    assert float(lipsum_regulariser(teacher, teacher, texts, s)) == 0


def test_lipsum_random_texts_are_start_random_ids_end():
    tokens = random_token_sequences(80, 8, torch.Generator().manual_seed(0), sot=44, eot=45, context_length=16)
    assert tokens.shape == (80, 16) and (tokens[:, 0] == 44).all() and (tokens[:, 9] == 45).all()
    assert (tokens[:, 1:9] < 44).all() and (tokens[:, 10:] == 0).all() and tokens[:, 1:9].unique().numel() > 30
    assert (tokens.argmax(dim=1) == 9).all()  # the tower pools at the end token, the largest id


def test_lipsum_step_draws_texts_per_step_through_the_frozen_text_tower(tiny_prepared):
    student = tiny_prepared.classifier()
    assert student.text is not None and copy.deepcopy(student).text is student.text  # shared, never copied
    assert not any(k.startswith("text") or "token_embedding" in k for k in student.state_dict())
    teacher = frozen_copy(student)
    computer = StepComputer(train_config(method="lipsum", texts=8), student, teacher)
    images, labels = tiny_prepared.task().train.batch(torch.arange(8))
    images = student.prepare(images)
    loss, parts = computer.loss(images, labels, 0)
    assert float(parts["loss_lipsum"]) < 1e-10  # the student starts as the zero-shot model (up to fp32 rounding)
    torch.testing.assert_close(loss, F.cross_entropy(student(images), labels))
    step = computer.method
    assert torch.equal(step.text_features(3), step.text_features(3)) and not torch.equal(step.text_features(3), step.text_features(4))
    assert all(not p.requires_grad for p in student.text.tower.parameters())
    with torch.no_grad():
        student.head.weight.mul_(1.5)  # a fine-tuned student: the regulariser now measures its logit gap
    assert float(computer.loss(images, labels, 1)[1]["loss_lipsum"]) < 1e-10  # the head is not in the image features
    with torch.no_grad():
        student.visual.proj.add_(0.05)
    assert float(computer.loss(images, labels, 1)[1]["loss_lipsum"]) > 1e-7  # 8.5e-6 here: far above the rounding


def test_flyp_loss_is_clips_contrastive_loss():
    """locuslab/FLYP clip/loss.py ``ClipLoss`` (world size 1, no ground labels), as open_clip ships it, on
    L2-normalised features: ``(CE(s f t^T, arange) + CE(s t f^T, arange)) / 2``."""
    import open_clip

    g = torch.Generator().manual_seed(0)
    images, texts = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    scale = torch.tensor(14.3)
    official = open_clip.ClipLoss()(F.normalize(images, dim=-1), F.normalize(texts, dim=-1), scale)
    torch.testing.assert_close(clip_contrastive_loss(images, texts, scale), official, atol=1e-6, rtol=1e-6)
    matched = clip_contrastive_loss(images, images, torch.tensor(100.0))  # each caption its image's: near zero
    assert float(matched) < float(clip_contrastive_loss(images, texts, torch.tensor(100.0))) and float(matched) < 1e-3


def test_flyp_head_is_the_text_towers_zero_shot_head(tiny_prepared):
    """Rebuilt from the untouched text tower, the head is the zero-shot head the classifier was built with."""
    student = tiny_prepared.classifier()
    rebuilt = student.text.head_weights(student.text.tower, "cpu")
    torch.testing.assert_close(rebuilt, student.head.weight.detach(), atol=1e-6, rtol=1e-6)


def test_flyp_trains_both_towers_and_rebuilds_the_head(tiny_prepared):
    states = []
    student, result = train_run(tiny_prepared, train_config(**SMALL, method="flyp"),
                                save_checkpoint=lambda state: states.append(copy.deepcopy(state)))
    assert result.status == "complete"
    frozen = student.text.tower.state_dict()
    trained = result.method_state
    assert set(trained) == set(frozen) and "logit_scale" in trained
    assert sum(not torch.equal(trained[k], frozen[k]) for k in frozen) == len(frozen)  # every text weight trained
    assert torch.equal(states[-1]["method_state"]["logit_scale"], trained["logit_scale"])  # checkpointed
    zero_shot = tiny_prepared.classifier()
    assert all(torch.equal(zero_shot.text.tower.state_dict()[k], v) for k, v in frozen.items())  # the frozen one kept
    # the head is the fine-tuned text tower's zero-shot head, never a trained one (the optimizer does not hold it)
    tower = copy.deepcopy(student.text.tower)
    tower.load_state_dict(trained)
    torch.testing.assert_close(student.head.weight.detach(), student.text.head_weights(tower, "cpu"), atol=1e-6, rtol=1e-6)
    assert not torch.equal(student.head.weight, zero_shot.head.weight)
    assert len(states[-1]["optimizer"]["param_groups"][0]["params"]) == (
        len(list(student.visual.parameters())) + len(list(tower.parameters())))
