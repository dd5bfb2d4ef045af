import pytest
import torch
from helpers import assert_same_run, interrupted_then_resumed, train_run, train_config

from robusttune.config import CamMethod, TrainConfig
from robusttune.models.classifier import frozen_copy
from robusttune.training.loop import StepComputer, batch_indices, lr_factor


SMALL = dict(steps=6, batch_size=16, eval_every=3, eval_batch_size=128, lr=1e-3)


@pytest.mark.parametrize("variant", [
    dict(region="object", refill="single", mask_threshold=0.3),
    dict(region="context", refill="multi", mask_ratio=0.5, cam="gradcam"),
    dict(region="random", refill="none", mask_ratio=0.4, distill="logit"),
])
def test_same_seed_gives_identical_metrics(tiny_prepared, variant):
    config = train_config(**SMALL, **variant)
    _, first = train_run(tiny_prepared, config)
    _, second = train_run(tiny_prepared, config)
    assert first.status == "complete" and [r["metrics"] for r in first.history] == [r["metrics"] for r in second.history]
    assert [r["step"] for r in first.history] == [3, 6]
    assert 0 < first.history[-1]["mask_fraction"] < 1


def test_different_seeds_change_the_run(tiny_prepared):
    _, a = train_run(tiny_prepared, train_config(**SMALL, seed=0))
    _, b = train_run(tiny_prepared, train_config(**SMALL, seed=1))
    assert a.history[-1]["loss_distill"] != b.history[-1]["loss_distill"]


def test_resume_from_checkpoint_equals_uninterrupted_run(tiny_prepared, tmp_path):
    config = train_config(**SMALL, region="object", refill="multi", mask_ratio=0.3)
    assert_same_run(train_run(tiny_prepared, config), interrupted_then_resumed(tiny_prepared, config, tmp_path / "ck.pt", stop_at=3))


def test_non_finite_loss_ends_the_run_with_a_failed_status(tiny_prepared, monkeypatch):
    original = StepComputer.loss

    def nan_at_step_4(self, images, labels, step, slot=0):
        loss, parts = original(self, images, labels, step, slot)
        return (loss * float("nan") if step == 4 else loss), parts

    monkeypatch.setattr(StepComputer, "loss", nan_at_step_4)
    rows = []
    _, result = train_run(tiny_prepared, train_config(**SMALL), report=rows.append)
    assert result.status == "failed" and "non-finite loss" in result.failure and "step 4" in result.failure
    assert rows[-1]["status"] == "failed" and rows[0]["step"] == 3  # the evaluation before the failure is kept


def test_vanilla_and_linear_probe_baselines(tiny_prepared):
    zero_shot = tiny_prepared.classifier()
    probe, result = train_run(tiny_prepared, train_config(**SMALL, method="lp"))
    assert result.status == "complete"
    for key, value in zero_shot.state_dict().items():
        if key.startswith("visual."):
            assert torch.equal(value, probe.state_dict()[key]), key
    assert not torch.equal(zero_shot.head.weight, probe.head.weight)
    _, zs = train_run(tiny_prepared, train_config(steps=0, region="none", w_distill=0))
    assert zs.steps == 0 and set(zs.metrics) >= {"id_acc", "id_val_acc", "ood_mean"}


def test_gradient_accumulation_matches_one_big_batch(tiny_prepared):
    base = dict(SMALL, region="none", w_distill=0.0, steps=2, eval_every=None)
    one, _ = train_run(tiny_prepared, train_config(**base))
    accumulated, _ = train_run(tiny_prepared, train_config(**base, accum_steps=2))
    for key, value in one.state_dict().items():
        torch.testing.assert_close(value, accumulated.state_dict()[key], atol=2e-5, rtol=1e-4)


def test_clean_distillation_uses_one_student_forward(tiny_prepared, monkeypatch):
    student = tiny_prepared.classifier()
    teacher = frozen_copy(student)
    calls = []
    original = student.run
    monkeypatch.setattr(student, "run", lambda *a, **k: calls.append(k) or original(*a, **k))
    computer = StepComputer(train_config(region="none", w_distill=1.0), student, teacher)
    images, labels = tiny_prepared.task().train.batch(torch.arange(8))
    images = student.prepare(images)
    computer.loss(images, labels, 0)
    assert len(calls) == 1
    calls.clear()
    StepComputer(train_config(region="object"), student, teacher).loss(images, labels, 0)
    assert len(calls) == 2 and calls[0]["cam"] is CamMethod.RELEVANCE  # clean (with CAM capture) + counterfactual


def test_schedule_and_data_order():
    assert lr_factor(0, 100, 0.1) == pytest.approx(0.1) and lr_factor(10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 100, 0.1) == pytest.approx(0.0, abs=1e-9)
    config = train_config(batch_size=10, seed=3)
    epoch = torch.cat([batch_indices(config, 50, s) for s in range(5)])
    assert sorted(epoch.tolist()) == list(range(50))
    assert not torch.equal(batch_indices(config, 50, 0), batch_indices(config, 50, 5))


def test_cam_on_real_vit_b32_architecture():
    from robusttune.models.clip import build_classifier, create_clip

    torch.manual_seed(0)
    clip, tokenizer = create_clip("ViT-B-32", None)
    student = build_classifier(clip, tokenizer, ["cat", "dog"], ["a photo of a {}."])
    computer = StepComputer(train_config(region="object", mask_ratio=0.25), student, frozen_copy(student))
    images, labels = torch.randn(2, 3, 224, 224), torch.tensor([0, 1])
    clean = student.run(images, cam=CamMethod.RELEVANCE)
    relevance = computer.method.cam(clean, labels)
    assert relevance.shape == (2, 49) and bool(torch.isfinite(relevance).all()) and float(relevance.min()) >= 0
    assert all(p.grad is None for p in student.parameters())  # the CAM takes no parameter gradients
    loss, parts = computer.loss(images, labels, 0)
    loss.backward()
    assert parts["mask_fraction"] == pytest.approx(12 / 49)


def test_onecycle_schedule_is_pytorchs_with_the_official_arguments():
    from robusttune.training.loop import make_schedule

    config = train_config(schedule="onecycle", lr=3e-5, warmup_fraction=0.02, steps=500)
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([weight], lr=config.lr, weight_decay=0.1)
    schedule = make_schedule(optimizer, config, 500)
    lrs, betas = [], []
    for _ in range(500):
        lrs.append(optimizer.param_groups[0]["lr"])
        betas.append(optimizer.param_groups[0]["betas"][0])
        optimizer.step()
        schedule.step()
    peak = lrs.index(max(lrs))
    assert peak == round(0.02 * 500) - 1  # warm-up over 2% of the steps
    assert lrs[0] == pytest.approx(3e-5 / 25) and max(lrs) == pytest.approx(3e-5)  # div_factor 25
    assert lrs[-1] == pytest.approx(3e-5 / 25 / 1e4, rel=0.05)  # final_div_factor 1e4 (one step before the end)
    assert betas[0] == pytest.approx(0.95) and betas[peak] == pytest.approx(0.85) and betas[-1] == pytest.approx(0.95, abs=1e-4)
    cosine = make_schedule(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0), train_config(steps=100), 100)
    assert isinstance(cosine, torch.optim.lr_scheduler.LambdaLR)  # the mini world's default keeps beta1 fixed


def test_paper_preset_fills_the_official_defaults_under_the_configs_own_values():
    from robusttune.config import PAPER_PRESET
    from robusttune.methods import PAPER_METHOD_PRESET, L2sp, MaskedDistill

    paper = train_config(preset="paper")
    assert paper.epochs == 10 and paper.steps is None and paper.schedule.value == "onecycle"
    assert paper.method.distill_norm.value == "none" and paper.method.w_distill == 30 and paper.lr == 3e-5
    mine = train_config(preset="paper", steps=40, lr=1e-4, region="context", refill="multi")
    assert mine.steps == 40 and mine.epochs is None and mine.lr == 1e-4 and mine.method.w_distill == 30
    assert mine.method.mask_threshold == 0.3  # the official context/multi threshold
    assert set(PAPER_PRESET) <= set(TrainConfig.model_fields)
    assert set(PAPER_METHOD_PRESET) <= set(MaskedDistill.model_fields)
    assert train_config(preset="paper", method="l2sp").method == L2sp()  # the paper's knobs are its method's only
