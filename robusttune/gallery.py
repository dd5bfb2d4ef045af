"""The counterfactual gallery: a trial's masking re-run on its final checkpoint, drawn for a few ID images.

Each row shows an ID image, the student's CAM for its true class, the selected patches, and the refilled
counterfactual the teacher and student saw (for refill 'none', the patches dropped from attention are drawn
black). This module imports torch; ``robusttune.analysis`` only embeds the PNG files it writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from robusttune import progress
from robusttune.cache import atomic_write
from robusttune.config import TrainConfig, parse
from robusttune.methods import MaskedDistill
from robusttune.experiment import heads_dir, latest_by_trial, load_frozen_space, trial_files
from robusttune.metrics import OBJECTIVE, OOD_MEAN


def _pick_trials(experiment: Path) -> dict[str, str]:
    """{'best_ood': trial_id, 'best_joint': trial_id} among complete trials."""
    rows = {t: r for t, r in latest_by_trial(experiment).items() if r.get("status") == "complete" and OOD_MEAN in r}
    if not rows:
        return {}
    picks = {"best_ood": max(rows, key=lambda t: rows[t][OOD_MEAN])}
    if any(OBJECTIVE in r for r in rows.values()):
        picks["best_joint"] = max(rows, key=lambda t: rows[t].get(OBJECTIVE, float("-inf")))
    return picks


def draw_gallery(experiment: Path, trial_id: str, out: Path, *, cache_dir: Path, n_images: int = 6) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robusttune.models.classifier import frozen_copy
    from robusttune.training.checkpoint import load_checkpoint
    from robusttune.training.device import Placement
    from robusttune.training.loop import StepComputer, step_generator
    from robusttune.training.tasks import build_task

    row = latest_by_trial(experiment)[trial_id]
    checkpoint = trial_files(experiment, trial_id).latest
    if not checkpoint.is_file() or not row.get("config"):
        return None
    space, _ = load_frozen_space(experiment)
    config = parse(TrainConfig, row["config"], f"trial {trial_id} config")
    if not isinstance(config.method, MaskedDistill):  # only the paper's method draws masks and counterfactuals
        return None
    knobs = config.method
    student, task = build_task(space.task, cache_dir, head_folders=[heads_dir(experiment)])
    student.load_state_dict(load_checkpoint(checkpoint)["model"])
    student.eval()
    placement = Placement.of(config.device, config.precision)  # where the trial ran (or the CPU when no GPU is here)
    student.to(placement.device)
    picks = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(0))[:n_images]
    images_u8, labels = task.train.batch(picks.sort().values)
    images, labels = student.prepare(images_u8), labels.to(placement.device)
    computer = StepComputer(config, student, frozen_copy(student), placement).method
    with placement.autocast():
        clean = student.run(images, cam=knobs.cam)
    cam = computer.cam(clean, labels)  # drawn even when the trial's region does not use it
    grid_h, grid_w = student.grid_size
    patches = grid_h * grid_w
    if knobs.region.value == "none":
        mask = torch.zeros(len(labels), patches, dtype=torch.bool)
        counterfactual, drop = images, None
    else:
        g = step_generator(config, 0)
        mask = computer.patch_mask(cam if knobs.uses_cam else None, len(labels), patches, g)
        counterfactual, drop = computer.counterfactual(images, mask, g)
    images, counterfactual, mask, cam = images.cpu(), counterfactual.detach().cpu(), mask.cpu(), cam.detach().cpu()
    drop = drop.cpu() if drop is not None else None
    mean = torch.tensor(student.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(student.image_std).view(1, 3, 1, 1)
    show = lambda x: (x * std + mean).clamp(0, 1).permute(0, 2, 3, 1).detach().numpy()  # noqa: E731
    shown_cf = counterfactual.clone()
    if drop is not None:  # dropped patches: draw them black
        ph, pw = student.patch_size
        black = (torch.zeros(1, 3, 1, 1) - mean) / std
        for i in range(len(labels)):
            for p in drop[i].nonzero().flatten().tolist():
                r, c = divmod(p, grid_w)
                shown_cf[i, :, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = black[0]
    titles = ["image", "CAM (true class)", "selected patches", "counterfactual"]
    fig, axes = plt.subplots(len(labels), 4, figsize=(8, 2.1 * len(labels)), squeeze=False)
    originals, counterfactuals = show(images), show(shown_cf)
    for i in range(len(labels)):
        axes[i][0].imshow(originals[i])
        if cam is not None:
            axes[i][1].imshow(originals[i])
            heat = cam[i].detach().reshape(grid_h, grid_w).numpy()
            axes[i][1].imshow(heat, cmap="jet", alpha=0.5, extent=(0, images.shape[-1], images.shape[-2], 0))
        axes[i][2].imshow(mask[i].reshape(grid_h, grid_w).float().numpy(), cmap="gray", vmin=0, vmax=1)
        axes[i][3].imshow(counterfactuals[i])
        for j, ax in enumerate(axes[i]):
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=9)
    sampled = {k: v for k, v in (row.get("sampled") or {}).items() if k != "seed"}
    fig.suptitle(f"trial {trial_id}: " + json.dumps(sampled, default=str)[:110], fontsize=8)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return out


def write_galleries(experiment: Path, out_dir: Path, *, cache_dir: Path) -> dict[str, str]:
    """``gallery_best_ood.png`` and ``gallery_best_joint.png`` in ``out_dir`` (the report embeds them)."""
    written = {}
    picks = _pick_trials(experiment)
    with progress.bar("counterfactual gallery", len(picks), unit="trial") as bar:
        for name, trial_id in picks.items():
            path = draw_gallery(experiment, trial_id, out_dir / f"gallery_{name}.png", cache_dir=cache_dir)
            if path is not None:
                written[f"gallery_{name}.png"] = str(path)
            bar.update(1)
    return written
