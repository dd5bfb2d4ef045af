"""``checkpoint_blocks: true``: gradient checkpointing of the vision blocks changes memory, never the numbers."""

import pytest
import torch
from helpers import train_config

from robusttune.models.classifier import frozen_copy
from robusttune.models.vit import checkpointed_blocks, checkpointing
from robusttune.training.loop import StepComputer


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the machine's cores are shared, and spinning OpenMP threads make tiny steps 30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models():
    from robusttune.config import TinyClipConfig
    from robusttune.models.classifier import ImageClassifier
    from robusttune.models.tiny import create_tiny_clip

    torch.manual_seed(0)
    clip = create_tiny_clip(TinyClipConfig(), image_size=32, vocab_size=64)
    head = torch.nn.functional.normalize(torch.randn(10, clip.visual.output_dim), dim=-1) * 100
    student = ImageClassifier(clip.visual, head, mean=(0.5,) * 3, std=(0.25,) * 3)
    teacher = frozen_copy(student)
    with torch.no_grad():  # the student has moved away from the teacher: the distillation has gradients
        for p in student.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return student, teacher


@pytest.mark.parametrize("flat", [{"method": "ft"}, {"region": "object", "refill": "single"},
                                  {"region": "context", "refill": "none"},
                                  {"region": "object", "refill": "multi", "cam": "gradcam"}])
def test_checkpointed_blocks_give_equal_losses_and_gradients(models, flat):
    student, teacher = models
    config = train_config(**flat)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.tensor([1, 2, 3, 4, 5, 6])
    results, saved = [], []
    for enabled in (False, True):
        student.zero_grad(set_to_none=True)
        computer = StepComputer(config, student, teacher)
        count = [0]

        def pack(tensor):
            count[0] += tensor.untyped_storage().nbytes()
            return tensor

        with checkpointed_blocks(student.visual, enabled=enabled):
            assert checkpointing(student.visual) is enabled
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss, parts = computer.loss(student.prepare(images), labels, 3)
            loss.backward()
        assert checkpointing(student.visual) is False  # restored on exit
        results.append((loss.detach(), parts, [p.grad.clone() for p in student.parameters()]))
        saved.append(count[0])
    (loss0, parts0, grads0), (loss1, parts1, grads1) = results
    assert torch.equal(loss0, loss1)
    assert parts0.keys() == parts1.keys() and all(torch.equal(parts0[k], parts1[k]) for k in parts0)
    assert any(g.abs().sum() > 0 for g in grads0)
    for g0, g1 in zip(grads0, grads1):
        torch.testing.assert_close(g0, g1, rtol=1e-5, atol=1e-7)
    assert saved[1] < saved[0] / 2  # the blocks' insides are no longer kept for backward


def test_the_knob_is_a_train_setting():
    assert train_config(checkpoint_blocks=True).checkpoint_blocks is True
    assert train_config().checkpoint_blocks is False
