"""ImageNet-style folders: fake trees of generated images, scored by a model whose predictions we control."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from robusttune.data.imagenet import (imagenet_eval_set, objectnet_classes, ood_eval_set, ood_metadata)
from robusttune.errors import DataError
from robusttune.training.evaluate import evaluate


def write_image(path: Path, value: int, size: int = 12) -> None:
    """An image whose pixel value encodes which class the fake model should predict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value % 256, value // 256, 0)).save(path)


def to_tensor(image):
    import torchvision.transforms.functional as TF

    return TF.pil_to_tensor(image)  # uint8, as every image source yields


class PredictsEncodedClass(torch.nn.Module):
    """Logits over 1000 classes with a 1 at the class encoded in the image's centre pixel."""

    def prepare(self, images):
        return images.float() / 255

    def forward(self, images):
        centre = images[:, :, images.shape[2] // 2, images.shape[3] // 2]
        cls = (centre[:, 0] * 255).round().long() + 256 * (centre[:, 1] * 255).round().long()
        logits = torch.zeros(images.shape[0], 1000)
        logits[torch.arange(images.shape[0]), cls] = 1.0
        return logits


def test_imagenet_v2_labels_are_folder_indices(tmp_path):
    for cls in (0, 7, 999):
        write_image(tmp_path / "v2" / str(cls) / "a.png", cls)
        write_image(tmp_path / "v2" / str(cls) / "b.png", (cls + 1) % 1000)  # a wrong prediction
    eval_set = ood_eval_set("imagenet_v2", tmp_path / "v2", to_tensor)
    assert eval_set.metric == "ood_imagenet_v2" and len(eval_set) == 6
    assert evaluate(PredictsEncodedClass(), [eval_set])["ood_imagenet_v2"] == pytest.approx(0.5)


def test_imagenet_r_restricts_logits_to_its_sublist(tmp_path):
    sublist = ood_metadata()["imagenet_r_class_sublist"]
    for k in range(200):
        folder = tmp_path / "r" / f"n{k:08d}"
        folder.mkdir(parents=True)
    # class k=5 (ImageNet index sublist[5]): predicted right; class k=9: the model's top class lies
    # outside the sublist, so within the sublist it falls back to the first column (k=0): wrong.
    write_image(tmp_path / "r" / "n00000005" / "x.png", sublist[5])
    write_image(tmp_path / "r" / "n00000009" / "x.png", 0)
    eval_set = ood_eval_set("imagenet_r", tmp_path / "r", to_tensor)
    assert [s.label for s in eval_set.source.dataset.samples] == [5, 9]
    assert 0 not in sublist
    assert evaluate(PredictsEncodedClass(), [eval_set])["ood_imagenet_r"] == pytest.approx(0.5)


def test_objectnet_maps_folders_and_scores_by_grouped_max(tmp_path):
    names, groups = objectnet_classes()
    assert len(names) == 113 and groups[names.index("Alarm clock")] == (409, 530)
    meta = ood_metadata()["objectnet"]
    folder_of = {label: folder for folder, label in meta["folder_to_objectnet_label"].items()}
    alarm, banana = folder_of["Alarm clock"], folder_of["Banana"]
    write_image(tmp_path / "on" / alarm / "a.png", 530, size=16)  # digital clock -> Alarm clock: right
    write_image(tmp_path / "on" / banana / "b.png", 409, size=16)  # analog clock for a banana: wrong
    write_image(tmp_path / "on" / folder_of["Squeegee"] / "c.png", 1, size=16)  # not in ImageNet: skipped
    eval_set = ood_eval_set("objectnet", tmp_path / "on", to_tensor)
    assert len(eval_set) == 2
    image, _ = eval_set.source.dataset[0]
    assert image.shape[-1] == 12  # the 2-px border is cropped on every side
    assert evaluate(PredictsEncodedClass(), [eval_set])["ood_mean"] == pytest.approx(0.5)


def test_missing_and_malformed_folders_name_the_path(tmp_path):
    with pytest.raises(DataError, match=r"missing: dataset folder not found"):
        ood_eval_set("imagenet_sketch", tmp_path / "missing", to_tensor)
    (tmp_path / "few" / "n1").mkdir(parents=True)
    with pytest.raises(DataError, match=r"few: ImageNet-A needs 200 class folders, found 1"):
        ood_eval_set("imagenet_a", tmp_path / "few", to_tensor)
    (tmp_path / "v2" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=r"ImageNet-V2 class folders must be named 0..999, got 'cat'"):
        ood_eval_set("imagenet_v2", tmp_path / "v2", to_tensor)
    for k in range(1000):
        (tmp_path / "empty" / f"n{k:08d}").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty: no images found"):
        imagenet_eval_set("id_acc", tmp_path / "empty", to_tensor)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="got a file"):
        ood_eval_set("imagenet_v2", tmp_path / "file.txt", to_tensor)
    with pytest.raises(DataError, match="unknown OOD set 'imagenet_c'"):
        ood_eval_set("imagenet_c", tmp_path, to_tensor)


def test_imagenet_id_folders_sorted_wnids(tmp_path):
    for k in range(1000):
        (tmp_path / "val" / f"n{k:08d}").mkdir(parents=True)
    write_image(tmp_path / "val" / "n00000003" / "a.png", 3)
    write_image(tmp_path / "val" / "n00000998" / "a.png", 998)
    write_image(tmp_path / "val" / "n00000998" / "b.png", 3)
    metrics = evaluate(PredictsEncodedClass(), [imagenet_eval_set("id_acc", tmp_path / "val", to_tensor)])
    assert metrics == {"id_acc": pytest.approx(2 / 3)}


def test_folder_index_lists_each_folder_once_and_rescans_what_changed(tmp_path, monkeypatch):
    from robusttune.data import folder_index
    from robusttune.data.folder_index import FolderIndex

    root = tmp_path / "train"
    for k in range(3):
        folder = root / f"n{k:08d}"
        folder.mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (4, 4)).save(folder / f"{j}.png")
    cache = tmp_path / "cache"
    first = FolderIndex(root, cache)
    listed = [p for k in range(3) for p in first.images_in(root / f"n{k:08d}")]
    first.save()
    assert first.listed == 3 and len(listed) == 6

    real = folder_index.list_folder
    calls = []
    monkeypatch.setattr(folder_index, "list_folder", lambda folder: calls.append(folder.name) or real(folder))
    again = FolderIndex(root, cache)
    assert [p for k in range(3) for p in again.images_in(root / f"n{k:08d}")] == listed and calls == []  # read back
    import os
    import time

    Image.new("RGB", (4, 4)).save(root / "n00000001" / "new.png")
    later = time.time_ns() + 5_000_000_000  # a later mtime even on a coarse clock
    os.utime(root / "n00000001", ns=(later, later))
    changed = FolderIndex(root, cache)
    files = changed.images_in(root / "n00000001")
    assert calls == ["n00000001"] and (root / "n00000001" / "new.png") in files  # only the changed folder
    changed.images_in(root / "n00000000")
    assert calls == ["n00000001"]
    changed.save()
    index_file = next((cache / "index").glob("*.json"))
    index_file.write_text("{torn")  # a corrupt index is ignored and rewritten
    fresh = FolderIndex(root, cache)
    assert fresh.images_in(root / "n00000002") == listed[4:] and fresh.listed == 1
    fresh.save()
    assert json.loads(index_file.read_text())["root"] == str(root.resolve())
