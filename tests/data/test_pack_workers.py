"""``robusttune data pack`` uses the machine: one DataLoader for the whole pack, decoding and JPEG encoding in its
worker processes, ``--workers`` defaulting to the usable CPUs, and the source listed through the folder index
(``os.scandir``, no ``stat`` per file; read back from the cache the second time)."""

import os

import numpy as np
import pytest
from PIL import Image

from robusttune.data import folder_index, packed
from robusttune.data.imagenet import images_in
from robusttune.data.packed import PackedImages, open_pack, pack_folder
from robusttune.models.clip import preprocess_for
from helpers import invoke, v2_folder

TRANSFORM = preprocess_for(32)


def test_one_loader_for_the_whole_pack_and_the_work_happens_in_its_workers(tmp_path, monkeypatch):
    source = v2_folder(tmp_path / "v2")
    loaders, pids = [], tmp_path / "pids"
    real_loader, real_item = packed.DataLoader, packed._Chunks.__getitem__

    def counting_loader(*args, **kwargs):
        loaders.append(kwargs["num_workers"])
        return real_loader(*args, **kwargs)

    def where(self, i):  # the process that decodes, transforms and encodes each chunk
        with open(pids, "a") as out:
            out.write(f"{os.getpid()}\n")
        return real_item(self, i)

    monkeypatch.setattr(packed, "DataLoader", counting_loader)
    monkeypatch.setattr(packed._Chunks, "__getitem__", where)
    done = pack_folder(source, tmp_path / "pack", kind="imagenet_v2", transform=TRANSFORM, encoding="jpeg",
                       shard_size=2, workers=2)
    assert done.shards == 5 and loaders == [2]  # five shards, one loader (the old code started one per shard)
    workers = set(pids.read_text().split())
    assert len(pids.read_text().split()) == 5 and str(os.getpid()) not in workers and 1 <= len(workers) <= 2
    # the same images as a pack made in this process alone, shard for shard
    pids.unlink()
    pack_folder(source, tmp_path / "alone", kind="imagenet_v2", transform=TRANSFORM, encoding="jpeg", shard_size=2,
                workers=0)
    assert set(pids.read_text().split()) == {str(os.getpid())} and loaders == [2, 0]
    for name in sorted(p.name for p in (tmp_path / "pack").glob("shard-*")):
        assert (tmp_path / "pack" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes(), name
    a, b = PackedImages(open_pack(tmp_path / "pack")), PackedImages(open_pack(tmp_path / "alone"))
    assert [a[i][1] for i in range(9)] == [b[i][1] for i in range(9)] == [0, 0, 0, 5, 5, 5, 999, 999, 999]


def test_workers_default_to_the_usable_cpus(tmp_path, monkeypatch):
    source = v2_folder(tmp_path / "v2", per_class=1)
    seen = []
    real_loader = packed.DataLoader
    monkeypatch.setattr(packed, "DataLoader", lambda *a, **k: seen.append(k["num_workers"]) or real_loader(*a, **k))
    monkeypatch.setattr(packed, "usable_cpus", lambda: 1)
    pack_folder(source, tmp_path / "p1", kind="imagenet_v2", transform=TRANSFORM)
    result = invoke("data", "pack", source, tmp_path / "p2", "--kind", "imagenet_v2", "--json",
                    "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert seen == [1, 1]  # the function's default and the command's: one per usable CPU
    assert packed.pack_workers(None) == 1 and packed.pack_workers(0) == 0
    bad = invoke("data", "pack", source, tmp_path / "p3", "--kind", "imagenet_v2", "--workers", "-1")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == ["robusttune: error: --workers must be >= 0, got -1"]


def test_the_source_is_listed_through_the_folder_index(tmp_path, monkeypatch):
    source = v2_folder(tmp_path / "v2")
    (source / "5" / "notes.txt").write_text("not an image")
    (source / "5" / "folder.jpg").mkdir()  # a folder with an image's name is not an image
    Image.new("RGB", (40, 40)).save(source / "5" / "UPPER.JPG")
    for folder in sorted(source.iterdir()):
        assert folder_index.list_folder(folder) == images_in(folder)
    listed = []
    real_list = folder_index.list_folder
    monkeypatch.setattr(folder_index, "list_folder", lambda folder: listed.append(folder.name) or real_list(folder))
    first = pack_folder(source, tmp_path / "a", kind="imagenet_v2", transform=TRANSFORM, workers=0,
                        index_dir=tmp_path / "cache")
    assert first.images == 10 and sorted(listed) == ["0", "5", "999"]
    assert len(list((tmp_path / "cache" / "index").glob("*.json"))) == 1
    second = pack_folder(source, tmp_path / "b", kind="imagenet_v2", transform=TRANSFORM, workers=0,
                         index_dir=tmp_path / "cache")
    assert second.images == 10 and len(listed) == 3  # read back from the index: no folder listed again
    a, b = open_pack(tmp_path / "a"), open_pack(tmp_path / "b")
    assert a.index["listing_sha256"] == b.index["listing_sha256"] and np.array_equal(a.labels, b.labels)


def test_a_bad_image_in_a_worker_keeps_the_shards_before_it(tmp_path):
    source = v2_folder(tmp_path / "v2")
    (source / "999" / "1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(Exception, match=r"999/1.jpg: cannot read image \(UnidentifiedImageError\)$"):
        pack_folder(source, tmp_path / "pack", kind="imagenet_v2", transform=TRANSFORM, encoding="jpeg",
                    shard_size=2, workers=2)
    written = sorted(p.name for p in (tmp_path / "pack").glob("shard-*.offsets.npy"))
    assert written == [f"shard-{k:05d}.offsets.npy" for k in range(3)]  # positions 0-5; the bad one is position 7


def run_benchmark(*args):
    import subprocess
    import sys

    from helpers import ROOT

    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pack_throughput.py"), *args], capture_output=True,
                          text=True, timeout=600)


def test_the_pack_benchmark_refuses_bad_input():
    result = run_benchmark("--images", "0")
    assert result.returncode == 2 and result.stderr.strip() == "pack_throughput: --images must be >= 1"


@pytest.mark.slow
def test_the_pack_benchmark_times_1_and_2_workers():
    import json

    result = run_benchmark("--images", "12", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.splitlines()[-1])
    runs = figures["runs"]
    assert set(runs) == {"jpeg_w1", "jpeg_w2", "raw_w2"} and figures["images"] == 12
    assert runs["jpeg_w2"]["images_per_second_per_core"] == pytest.approx(runs["jpeg_w2"]["images_per_second"] / 2, abs=0.1)
    assert runs["raw_w2"]["bytes_per_image"] > 150_000 > runs["jpeg_w2"]["bytes_per_image"]  # 3 x 224 x 224 raw
    hours = figures["imagenet_train_hours"]
    assert hours["8_cores"] == pytest.approx(2 * hours["16_cores"], rel=0.02)
