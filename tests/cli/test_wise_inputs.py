"""``robusttune wise`` refuses foreign or broken checkpoints in one line (exit 2) before it builds or evaluates
anything: a zero-shot checkpoint of another task, and weights holding NaN/inf."""

import json
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_exit_2, invoke

from robusttune.config import TaskSpec, default_world
from robusttune.errors import CheckpointError
from robusttune.training.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture()
def nothing_built(monkeypatch):
    """Fail the test if ``wise`` gets as far as building the task (and so evaluating)."""
    import robusttune.training.tasks

    monkeypatch.setattr(robusttune.training.tasks, "build_task", lambda *a, **k: pytest.fail("built the task"))


def rewritten(source: Path, target: Path, **changes) -> Path:
    payload = {k: v for k, v in load_checkpoint(source).items() if k != "format"}
    save_checkpoint(target, {k: v for k, v in {**payload, **changes}.items() if v is not None})
    return target


def test_a_zero_shot_checkpoint_of_another_world_is_refused(tiny_run, tiny_world_config, tmp_path, cache_dir, nothing_built):
    final = tiny_run / "final.pt"
    assert tiny_world_config.seed != 3
    other_world = {"world": {**tiny_world_config.to_dict(), "seed": 3}}
    other = rewritten(final, tmp_path / "other.pt", task=json.dumps(other_world))  # same shapes: used to go through
    assert_one_line_exit_2(invoke("wise", final, "--zero-shot", other, cwd=tmp_path, cache_dir=cache_dir),
                    f"{final} and {other} were trained on different tasks (world.seed {tiny_world_config.seed} vs 3); "
                    f"WiSE-FT needs the same zero-shot start")
    imagenet = rewritten(final, tmp_path / "imagenet.pt", task=json.dumps({"imagenet": {"train_dir": "t", "val_dir": "v"}}))
    assert_one_line_exit_2(invoke("wise", final, "--zero-shot", imagenet, cwd=tmp_path, cache_dir=cache_dir),
                    "different tasks (a mini world vs ImageNet)")
    unreadable = rewritten(final, tmp_path / "unreadable.pt", task=json.dumps({"world": {"seed": "x"}}))
    assert_one_line_exit_2(invoke("wise", final, "--zero-shot", unreadable, cwd=tmp_path, cache_dir=cache_dir), str(unreadable))


def test_a_zero_shot_checkpoint_of_the_same_task_or_without_one_is_accepted(tiny_run, tmp_path, cache_dir):
    final = tiny_run / "final.pt"
    same = rewritten(final, tmp_path / "same.pt")
    result = invoke("wise", final, "--zero-shot", same, "--alphas", "0,1", "--json", cwd=tmp_path, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout.splitlines()[-1])["rows"]
    assert rows[0]["id_acc"] == rows[1]["id_acc"]  # the same weights at both ends
    plain = tmp_path / "plain.pt"
    save_checkpoint(plain, {"model": load_checkpoint(final)["model"]})  # a plain state dict: no task to compare
    result = invoke("wise", final, "--zero-shot", plain, "--alphas", "0", "--json", cwd=tmp_path, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr


def test_same_task_ignores_names_and_run_only_keys():
    from robusttune.training.wise import check_same_task

    world = default_world().to_dict()
    check_same_task(TaskSpec(), TaskSpec.model_validate({"world": world}), "a", "b")  # no world = the default world
    check_same_task(TaskSpec(), TaskSpec.model_validate({"world": {**world, "name": "renamed"}}), "a", "b")
    imagenet = {"train_dir": "t", "val_dir": "v"}
    check_same_task(TaskSpec.model_validate({"imagenet": imagenet}),
                    TaskSpec.model_validate({"imagenet": {**imagenet, "num_workers": 0}}), "a", "b")
    with pytest.raises(CheckpointError, match=r"different tasks \(imagenet.templates openai vs simple\)"):
        check_same_task(TaskSpec.model_validate({"imagenet": imagenet}),
                        TaskSpec.model_validate({"imagenet": {**imagenet, "templates": "simple"}}), "a", "b")
    with pytest.raises(CheckpointError, match=r"different tasks \(world.model.vision_layers 4 vs 2\)"):
        check_same_task(TaskSpec(), TaskSpec.model_validate({"world": {"model": {"vision_layers": 2}}}), "a", "b")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_before_any_evaluation(tiny_run, tmp_path, cache_dir, nothing_built, bad):
    final = tiny_run / "final.pt"
    weights = load_checkpoint(final)["model"]
    key = next(k for k, v in weights.items() if torch.is_floating_point(v) and k.startswith("visual."))
    broken = {**weights, key: torch.full_like(weights[key], bad)}
    nan_final = rewritten(final, tmp_path / "nan-final.pt", model=broken)
    expected = f"weight {key} holds non-finite values (NaN/inf); not interpolated"
    assert_one_line_exit_2(invoke("wise", nan_final, cwd=tmp_path, cache_dir=cache_dir), f"{nan_final}: {expected}")
    nan_zero_shot = tmp_path / "nan-zero-shot.pt"
    save_checkpoint(nan_zero_shot, {"model": broken})
    assert_one_line_exit_2(invoke("wise", final, "--zero-shot", nan_zero_shot, cwd=tmp_path, cache_dir=cache_dir),
                    f"{nan_zero_shot}: {expected}")
    with_task = rewritten(final, tmp_path / "nan-same-task.pt", model=broken)
    assert_one_line_exit_2(invoke("wise", final, "--zero-shot", with_task, cwd=tmp_path, cache_dir=cache_dir), f"{with_task}: {expected}")


def test_a_checkpoint_without_weights_is_refused(tiny_run, tmp_path, cache_dir, nothing_built):
    final = tiny_run / "final.pt"
    no_model = tmp_path / "no-model.pt"
    save_checkpoint(no_model, {"step": 3})
    assert_one_line_exit_2(invoke("wise", final, "--zero-shot", no_model, cwd=tmp_path, cache_dir=cache_dir),
                    f"{no_model}: holds no model weights")
    assert_one_line_exit_2(invoke("wise", rewritten(final, tmp_path / "a.pt", model=None), cwd=tmp_path, cache_dir=cache_dir),
                    "holds no model weights")
