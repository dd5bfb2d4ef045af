"""Packed datasets: ``robusttune data pack`` on small ImageNet-style folders, read back by training and evaluation."""

import json

import pytest
import torch
from PIL import Image

from robusttune.data import packed
from robusttune.data.imagenet import ImageFolderSet
from robusttune.data.packed import PackedImages, open_pack, pack_folder, scan_kind
from robusttune.errors import DataError
from robusttune.models.clip import preprocess_for
from helpers import invoke, v2_folder

TRANSFORM = preprocess_for(32)


def test_lossless_pack_equals_the_on_the_fly_transform_bit_for_bit(tmp_path):
    source = v2_folder(tmp_path / "v2")
    result = invoke("data", "pack", str(source), str(tmp_path / "pack"), "--kind", "imagenet_v2", "--model", "ViT-B-32",
                    "--shard-size", "4", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["images"] == 9 and summary["shards"] == 3 and summary["resumed_shards"] == 0
    assert result.stderr == ""  # no progress bar under --json
    samples, _, crop = scan_kind("imagenet_v2", source)
    on_the_fly = ImageFolderSet(samples, preprocess_for(224), crop_border=crop, root=source)
    pack = open_pack(tmp_path / "pack", "imagenet_v2")
    pack.check_transform(preprocess_for(224))
    with pytest.raises(DataError, match="packed with another transform"):
        pack.check_transform(TRANSFORM)
    dataset = PackedImages(pack)
    assert len(dataset) == len(on_the_fly) == 9
    for i in range(9):
        image, label = dataset[i]
        expected, expected_label = on_the_fly[i]
        assert image.dtype is torch.uint8 and torch.equal(image, expected) and label == expected_label
    assert [dataset[i][1] for i in range(9)] == [0, 0, 0, 5, 5, 5, 999, 999, 999]
    subset = PackedImages(pack, [8, 1])
    assert torch.equal(subset[0][0], on_the_fly[8][0]) and subset[1][1] == 0


def test_jpeg_pack_is_close_to_the_lossless_one(tmp_path):
    source = v2_folder(tmp_path / "v2")
    raw = pack_folder(source, tmp_path / "raw", kind="imagenet_v2", transform=TRANSFORM)
    jpeg = pack_folder(source, tmp_path / "jpeg", kind="imagenet_v2", transform=TRANSFORM, encoding="jpeg", quality=95,
                       shard_size=4, workers=1)
    assert jpeg.images == raw.images == 9
    lossless, lossy = PackedImages(open_pack(tmp_path / "raw")), PackedImages(open_pack(tmp_path / "jpeg"))
    for i in range(9):
        a, b = lossless[i][0].float(), lossy[i][0].float()
        assert a.shape == b.shape == (3, 32, 32) and float((a - b).abs().mean()) < 12  # random noise: JPEG's worst case
        assert lossless[i][1] == lossy[i][1]


def test_an_interrupted_pack_is_never_read_and_resumes_to_the_same_pack(tmp_path, monkeypatch):
    source = v2_folder(tmp_path / "v2")
    written, real_save = [], packed._save_npy

    def dies_after_two_shards(path, array):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(path)
        real_save(path, array)

    monkeypatch.setattr(packed, "_save_npy", dies_after_two_shards)
    with pytest.raises(KeyboardInterrupt):
        pack_folder(source, tmp_path / "pack", kind="imagenet_v2", transform=TRANSFORM, shard_size=2)
    monkeypatch.setattr(packed, "_save_npy", real_save)
    with pytest.raises(DataError, match="unfinished pack; rerun 'robusttune data pack'"):
        open_pack(tmp_path / "pack")
    with pytest.raises(DataError, match="interrupted pack with other settings"):
        pack_folder(source, tmp_path / "pack", kind="imagenet_v2", transform=TRANSFORM, shard_size=3)
    resumed = pack_folder(source, tmp_path / "pack", kind="imagenet_v2", transform=TRANSFORM, shard_size=2)
    fresh = pack_folder(source, tmp_path / "fresh", kind="imagenet_v2", transform=TRANSFORM, shard_size=2)
    assert resumed.resumed_shards == 2 and resumed.shards == fresh.shards == 5
    a, b = PackedImages(open_pack(tmp_path / "pack")), PackedImages(open_pack(tmp_path / "fresh"))
    assert all(torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1] for i in range(9))
    assert not (tmp_path / "pack" / packed.STATE_FILE).exists()
    again = pack_folder(source, tmp_path / "pack", kind="imagenet_v2", transform=TRANSFORM, shard_size=2)
    assert again.resumed_shards == again.shards  # already finished: nothing redone


@pytest.mark.parametrize("workers", ["0", "1"])
def test_bad_inputs_get_one_line_errors_and_keep_finished_shards(tmp_path, workers, monkeypatch):
    source = v2_folder(tmp_path / "v2")
    (source / "999" / "2.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "pack"
    result = invoke("data", "pack", str(source), str(out), "--kind", "imagenet_v2", "--shard-size", "4",
                    "--workers", workers, "--model", "ViT-B-32")
    error = result.stderr.strip().splitlines()[-1]  # after the progress bar's lines
    assert result.returncode == 2 and error.startswith("robusttune: error: ") and error.endswith("999/2.jpg: cannot read image (UnidentifiedImageError)")
    assert "Traceback" not in result.stderr
    assert (out / "shard-00000.npy").is_file() and (out / "shard-00001.npy").is_file()
    Image.new("RGB", (40, 40)).save(source / "999" / "2.jpg")
    result = invoke("data", "pack", str(source), str(out), "--kind", "imagenet_v2", "--shard-size", "4", "--json")
    assert result.returncode == 0 and json.loads(result.stdout.splitlines()[-1])["resumed_shards"] == 2
    from robusttune import progress

    monkeypatch.setattr(progress, "DELAY_S", 0.0)  # bars appear after a second; this pack takes less
    shown = invoke("data", "pack", str(source), str(tmp_path / "shown"), "--kind", "imagenet_v2")
    assert shown.returncode == 0 and f"pack {source}: " in shown.stderr  # the bar, on stderr

    wrong = invoke("data", "pack", str(source), str(tmp_path / "other"), "--kind", "imagenet")
    assert wrong.returncode == 2 and "ImageNet needs 1000 class folders, found 3" in wrong.stderr
    busy = invoke("data", "pack", str(source), str(source), "--kind", "imagenet_v2")
    assert busy.returncode == 2 and "not empty" in busy.stderr
    assert invoke("data", "pack", str(tmp_path / "missing"), str(tmp_path / "p2"), "--kind", "imagenet_v2").returncode == 2


def test_a_damaged_or_foreign_pack_is_refused(tmp_path):
    source = v2_folder(tmp_path / "v2")
    pack_folder(source, tmp_path / "pack", kind="imagenet_v2", transform=TRANSFORM, shard_size=4)
    with pytest.raises(DataError, match="a pack of imagenet_v2, but imagenet_r is needed"):
        open_pack(tmp_path / "pack", "imagenet_r")
    shard = tmp_path / "pack" / "shard-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError, match="shard-00001.npy: missing or damaged shard"):
        open_pack(tmp_path / "pack")
    with pytest.raises(DataError, match="already holds a pack of other images or settings"):
        pack_folder(source, tmp_path / "pack", kind="imagenet_v2", transform=preprocess_for(48), shard_size=4)
