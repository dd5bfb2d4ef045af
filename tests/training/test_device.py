"""The GPU path, proved on the CPU: tensors on the model's device, mixed precision, fused attention, the data loader."""

import dataclasses

import pytest
import torch
from helpers import assert_same_run, interrupted_then_resumed, train_run, train_config

from robusttune.config import CamMethod, TrainConfig, parse
from robusttune.data.sets import DatasetImages, TaskData
from robusttune.errors import ConfigError
from robusttune.models.classifier import frozen_copy
from robusttune.models.vit import vit_forward
from robusttune.training.device import Placement, resolve_device, resolve_precision
from robusttune.training.evaluate import evaluate
from robusttune.training.loop import StepComputer, train

SMALL = dict(steps=4, batch_size=16, eval_every=2, eval_batch_size=128, lr=1e-3)
STRATEGIES = [
    dict(region="object", refill="single", mask_threshold=0.3),
    dict(region="context", refill="multi", mask_ratio=0.5, cam="gradcam"),
    dict(region="random", refill="none", mask_threshold=0.5),
    dict(region="random", refill="multi", mask_ratio=0.4, distill="logit"),
    dict(region="none", w_distill=1.0),
]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_step_creates_every_tensor_on_the_models_device(tiny_prepared, strategy):
    student = tiny_prepared.classifier()
    images_u8, labels = tiny_prepared.task().train.batch(torch.arange(8))
    computer = StepComputer(train_config(**strategy), student, frozen_copy(student))
    torch.set_default_device("meta")
    try:
        loss, parts = computer.loss(student.prepare(images_u8), labels, step=3)
        loss.backward()
    finally:
        torch.set_default_device(None)
    assert loss.device.type == "cpu" and bool(torch.isfinite(loss))
    assert all(p.grad is None or p.grad.device.type == "cpu" for p in student.parameters())


def test_step_randomness_does_not_depend_on_the_default_device(tiny_prepared):
    """Masks and donors come from the CPU step generator, so they are the same whatever device runs the step."""
    student = tiny_prepared.classifier()
    images_u8, labels = tiny_prepared.task().train.batch(torch.arange(8))
    config = train_config(region="random", refill="multi", mask_ratio=0.4)
    losses = []
    for default in (None, "meta"):
        torch.set_default_device(default)
        try:
            losses.append(StepComputer(config, student, frozen_copy(student)).loss(student.prepare(images_u8), labels, 5)[0])
        finally:
            torch.set_default_device(None)
    assert torch.equal(losses[0].detach(), losses[1].detach())


def test_device_and_precision_resolution():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    assert Placement.of("cpu", "fp16").grad_scaler().is_enabled()
    assert not Placement.of("cpu", "bf16").grad_scaler().is_enabled()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device is visible"):
            resolve_device("cuda:0")
    with pytest.raises(ConfigError, match=r"^train: device: must be auto, cpu, cuda or cuda:N, got 'gpu'$"):
        parse(TrainConfig, {"device": "gpu"}, "train")


def test_a_checkpoint_resumes_on_another_device_but_not_in_another_precision():
    config = train_config(device="cuda:1", precision="bf16")
    assert config.resumes(train_config(device="cpu", precision="bf16").to_dict())
    assert not config.resumes(train_config(device="cuda:1", precision="fp32").to_dict())
    old = train_config().to_dict()
    del old["device"], old["precision"]  # a checkpoint written before these keys existed
    assert train_config().resumes(old)


def test_bf16_autocast_keeps_losses_finite_and_cam_masks_close_to_fp32(tiny_prepared):
    student = tiny_prepared.classifier()
    images_u8, labels = tiny_prepared.task().train.batch(torch.arange(64))
    images = student.prepare(images_u8)
    for region in ("object", "context"):
        config = train_config(region=region, refill="single", mask_threshold=0.3)
        masks = []
        for placement in (Placement.of("cpu", "fp32"), Placement.of("cpu", "bf16")):
            computer = StepComputer(config, student, frozen_copy(student), placement)
            with placement.autocast():
                clean = student.run(images, cam=CamMethod.RELEVANCE)
            assert (clean.logits.dtype is torch.bfloat16) == (placement.dtype is torch.bfloat16)
            cam = computer.method.cam(clean, labels)
            assert cam.dtype is torch.float32  # relevance accumulated in fp32 under autocast too
            masks.append(computer.method.patch_mask(cam, len(labels), cam.shape[1], torch.Generator().manual_seed(0)))
            loss, _ = computer.loss(images, labels, 0)
            assert loss.dtype is torch.float32 and bool(torch.isfinite(loss))
        agreement = float((masks[0] == masks[1]).float().mean())
        assert agreement >= 0.95, (region, agreement)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_keeps_fp32_weights(tiny_prepared, precision, tmp_path):
    from robusttune.training.checkpoint import load_checkpoint, save_checkpoint

    student = tiny_prepared.classifier()
    config = train_config(**SMALL, precision=precision, region="object", refill="multi", mask_threshold=0.3)
    result = train(config, student, frozen_copy(student), tiny_prepared.task(),
                   save_checkpoint=lambda state: save_checkpoint(tmp_path / "ck.pt", state))
    assert result.status == "complete" and all(0 <= v <= 1 for v in result.metrics.values())
    assert all(p.dtype is torch.float32 for p in student.parameters())
    assert ("scaler" in load_checkpoint(tmp_path / "ck.pt")) == (precision == "fp16")


def _fused_vs_explicit(visual, images, drop):
    with torch.no_grad():
        fused = vit_forward(visual, images, drop_patches=drop).features  # open_clip's own forward when drop is None
        fused_ours = vit_forward(visual, images, drop_patches=drop, capture_last_ln1=True).features  # our SDPA path
        explicit = vit_forward(visual, images, drop_patches=drop, capture_attention=True).features
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_ours, explicit, atol=1e-5, rtol=1e-5)


def test_fused_attention_equals_the_explicit_path_on_the_tiny_clip(tiny_prepared):
    student = tiny_prepared.classifier()
    images = student.prepare(tiny_prepared.task().train.batch(torch.arange(6))[0])
    patches = student.grid_size[0] * student.grid_size[1]
    drop = torch.rand(6, patches, generator=torch.Generator().manual_seed(0)) < 0.5
    for mask in (None, drop):
        _fused_vs_explicit(student.visual, images, mask)


def test_fused_attention_equals_the_explicit_path_on_vit_b32():
    import open_clip

    torch.manual_seed(0)
    visual = open_clip.create_model("ViT-B-32", pretrained=None).visual.eval()
    images = torch.randn(2, 3, 224, 224)
    drop = torch.rand(2, 49, generator=torch.Generator().manual_seed(1)) < 0.4
    for mask in (None, drop):
        _fused_vs_explicit(visual, images, mask)


def _disk_like(task: TaskData, workers: int) -> TaskData:
    """The mini world read through the DataLoader path (map-style datasets, worker processes)."""
    sets = tuple(dataclasses.replace(s, source=DatasetImages(s.source)) for s in task.eval_sets)
    return dataclasses.replace(task, train=DatasetImages(task.train), eval_sets=sets, num_workers=workers)


def test_loader_workers_and_resume_give_the_uninterrupted_run(tiny_prepared, tmp_path):
    config = train_config(**SMALL, region="object", refill="single", mask_threshold=0.3)
    task = tiny_prepared.task()
    in_memory = train_run(tiny_prepared, config, task)
    assert_same_run(in_memory, train_run(tiny_prepared, config, _disk_like(task, 2)))
    assert_same_run(in_memory, interrupted_then_resumed(tiny_prepared, config, tmp_path / "ck.pt", stop_at=2,
                                                        task=_disk_like(task, 1)))


def test_one_shared_evaluation_loader_scores_each_set_as_alone(tiny_prepared):
    student, task = tiny_prepared.classifier(), tiny_prepared.task()
    alone = evaluate(student, task.eval_sets, batch_size=50)
    shared = evaluate(student, _disk_like(task, 2).eval_sets, batch_size=50, num_workers=2)
    assert shared == alone


def test_uint8_preprocess_normalised_on_the_device_equals_open_clips_transform():
    import numpy as np
    import open_clip
    from PIL import Image

    from robusttune.data.sets import normalise
    from robusttune.models.clip import imagenet_preprocess

    model = open_clip.create_model("ViT-B-32", pretrained=None)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8))
    reference = open_clip.image_transform(224, is_train=False)(image)
    ours = imagenet_preprocess(model)(image)
    assert ours.dtype is torch.uint8 and ours.shape == (3, 224, 224)
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    torch.testing.assert_close(normalise(ours[None], mean, std)[0], reference, atol=1e-6, rtol=0)


def test_a_bf16_run_resumed_from_its_checkpoint_equals_the_uninterrupted_one(tiny_prepared, tmp_path):
    """bf16 autocast is deterministic on a given device: the resumed run is bit-identical, as in fp32."""
    config = train_config(**SMALL, precision="bf16", region="context", refill="multi", mask_ratio=0.4)
    assert_same_run(train_run(tiny_prepared, config),
                    interrupted_then_resumed(tiny_prepared, config, tmp_path / "ck.pt", stop_at=2))
