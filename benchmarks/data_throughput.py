"""Images per second of the ImageNet input paths, measured side by side on one synthetic ImageNet-style folder.

    python benchmarks/data_throughput.py [--images 2000] [--batch-size 64] [--json]

The folder holds ``--images`` JPEGs of 500x375 (smooth random scenes with noise, about the size of ImageNet's
JPEGs) in 1,000 wnid folders. Paths timed, each over every image, in batches of ``--batch-size``, with
ViT-B/32's transform (resize 224 + centre crop):

* ``on_the_fly``: the path before the loader (open_clip's float transform, one image at a time, in this process);
* ``loader_w0|w1|w2``: the DataLoader path (uint8 transform, 0/1/2 worker processes);
* ``packed_raw``: a lossless pack (``robusttune data pack``) read through the same loader in this process;
* ``packed_jpeg``: a JPEG (quality 90) pack, decoded in this process.

Per CPU core: the in-process paths use one core, the loader with k workers k cores. The last line (``--json``)
holds images/s of each, ``packed_over_on_the_fly_per_core`` (target >= 10) and the one-off packing time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from robusttune.data.imagenet import ImageFolderSet, imagenet_samples
from robusttune.data.packed import PackedImages, open_pack, pack_folder
from robusttune.data.sets import DatasetImages, Loading, batch_loader, sequential_batches
from robusttune.models.clip import preprocess_for


def synthetic_imagenet(root: Path, images: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    per_class = -(-images // 1000)
    written = 0
    for k in range(1000):
        folder = root / f"n{k:08d}"
        folder.mkdir(parents=True)
        for j in range(per_class if written < images else 0):
            coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            scene = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.BICUBIC), dtype=np.int16)
            scene = np.clip(scene + rng.normal(0, 12, scene.shape), 0, 255).astype(np.uint8)
            Image.fromarray(scene).save(folder / f"{j}.JPEG", quality=90)
            written += 1


def images_per_second(source, batch_size: int, loading: Loading) -> float:
    started = time.perf_counter()
    count = 0
    for images, _ in batch_loader(source, sequential_batches(len(source), batch_size), loading):
        count += len(images)
    return count / (time.perf_counter() - started)


def on_the_fly(samples, root: Path, batch_size: int) -> float:
    """The path before the loader: open_clip's float transform, ``DatasetImages.batch`` in this process."""
    import open_clip

    dataset = ImageFolderSet(samples, open_clip.image_transform(224, is_train=False), root=root)
    started = time.perf_counter()
    for batch in sequential_batches(len(dataset), batch_size):
        torch.stack([dataset[i][0] for i in batch])
    return len(dataset) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    transform = preprocess_for(224)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "train"
        synthetic_imagenet(root, args.images)
        samples = imagenet_samples(root)
        jpeg_mb = sum(s.path.stat().st_size for s in samples) / len(samples) / 2**10
        rates = {"on_the_fly": on_the_fly(samples, root, args.batch_size)}
        folder = DatasetImages(ImageFolderSet(samples, transform, root=root))
        for workers in (0, 1, 2):
            rates[f"loader_w{workers}"] = images_per_second(folder, args.batch_size, Loading(workers))
        started = time.perf_counter()
        pack_folder(root, Path(tmp) / "raw", kind="imagenet", transform=transform, workers=2)
        pack_seconds = time.perf_counter() - started
        pack_folder(root, Path(tmp) / "jpeg", kind="imagenet", transform=transform, encoding="jpeg", workers=2)
        for name in ("raw", "jpeg"):
            source = DatasetImages(PackedImages(open_pack(Path(tmp) / name)))
            rates[f"packed_{name}"] = images_per_second(source, args.batch_size, Loading(0))
    cores = {"loader_w1": 1, "loader_w2": 2}
    per_core = {name: rate / cores.get(name, 1) for name, rate in rates.items()}
    result = {
        "images": len(samples), "mean_jpeg_kib": round(jpeg_mb, 1), "images_per_second": {k: round(v, 1) for k, v in rates.items()},
        "images_per_second_per_core": {k: round(v, 1) for k, v in per_core.items()},
        "packed_over_on_the_fly_per_core": round(per_core["packed_raw"] / per_core["on_the_fly"], 2),
        "packed_jpeg_over_on_the_fly_per_core": round(per_core["packed_jpeg"] / per_core["on_the_fly"], 2),
        "pack_seconds": round(pack_seconds, 1), "pack_workers": 2,
    }
    for name, rate in rates.items():
        print(f"{name:<12} {rate:9.1f} images/s   {per_core[name]:9.1f} per core")
    print(f"packing {len(samples)} images (2 workers): {pack_seconds:.1f} s, once")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
