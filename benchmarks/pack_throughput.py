"""``robusttune data pack``'s images/s per CPU core, with 1 and 2 worker processes, on a synthetic ImageNet folder.

    python benchmarks/pack_throughput.py [--images 600] [--json]

The folder holds ``--images`` JPEGs of 500x375 (the generator of ``data_throughput.py``: smooth random scenes with
noise, about ImageNet's size) in 1,000 wnid folders. Each run packs the whole folder from scratch at ViT-B/32's
input size (resize 224 + centre crop): JPEG quality 90 (the encoding for GPU runs) with 1 and with 2 workers, and a
lossless pack with 2 workers. A run with k workers counts k cores (the main process only writes shards).

The last line (``--json``) holds, for each run, images/s of wall time (and per worker) and images per CPU second
(this process and its workers: the rate of one core that is not shared, which a busy machine's wall clock hides),
the wall-clock scaling from 1 to 2 workers (2.0 is perfect on an idle machine with 2 free cores), the per-core
efficiency with 2 workers (per CPU second, against 1 worker), the load average, and, from the 2-worker JPEG rate
per CPU second, the hours to pack ImageNet's training set (1,281,167 images) on 8 and on 16 cores, assuming the
per-core rate holds (it does while storage keeps up: ImageNet's JPEGs average about 110 KB, so 16 cores at
150 images/s read about 260 MB/s).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

IMAGENET_TRAIN = 1_281_167


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the DataLoader's workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pack_rate(source: Path, out: Path, *, workers: int, encoding: str) -> tuple[float, float, int]:
    """(images/s of wall time, images per CPU second, bytes) of one pack of ``source`` into the new folder ``out``."""
    from robusttune.data.packed import pack_folder
    from robusttune.models.clip import preprocess_for

    transform = preprocess_for(224)
    started, cpu = time.perf_counter(), cpu_seconds()
    done = pack_folder(source, out, kind="imagenet", transform=transform, encoding=encoding, workers=workers,
                       shard_size=256)
    wall, used = time.perf_counter() - started, cpu_seconds() - cpu
    return done.images / wall, done.images / used, done.bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600, help="JPEGs in the synthetic folder (default 600)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    if args.images < 1:
        print("pack_throughput: --images must be >= 1", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from data_throughput import synthetic_imagenet

    from robusttune.data.packed import usable_cpus

    if usable_cpus() < 2:
        print("pack_throughput: needs 2 usable CPUs to time 2 workers", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "imagenet"
        synthetic_imagenet(source, args.images)
        runs = {}
        load = os.getloadavg()[0]
        for name, workers, encoding in (("jpeg_w1", 1, "jpeg"), ("jpeg_w2", 2, "jpeg"), ("raw_w2", 2, "raw")):
            rate, per_cpu, size = pack_rate(source, Path(tmp) / name, workers=workers, encoding=encoding)
            runs[name] = {"workers": workers, "encoding": encoding, "images_per_second": round(rate, 1),
                          "images_per_second_per_core": round(rate / workers, 1),
                          "images_per_cpu_second": round(per_cpu, 1), "bytes_per_image": round(size / args.images)}
    # Per core from CPU time (this process + its workers): what a core does when it is not shared; wall-clock rates
    # on a busy machine (load above its cores) say more about the neighbours than about packing.
    per_core = runs["jpeg_w2"]["images_per_cpu_second"]
    figures = {"images": args.images, "load_average": round(load, 2), "cpus": os.cpu_count(), "runs": runs,
               "scaling_1_to_2_workers": round(runs["jpeg_w2"]["images_per_second"] / runs["jpeg_w1"]["images_per_second"], 2),
               "per_core_efficiency_2_workers": round(per_core / runs["jpeg_w1"]["images_per_cpu_second"], 2),
               "imagenet_train_hours": {f"{cores}_cores": round(IMAGENET_TRAIN / (per_core * cores) / 3600, 2)
                                        for cores in (8, 16)}}
    for name, run in runs.items():
        print(f"{name}: {run['images_per_second']:.0f} images/s ({run['images_per_second_per_core']:.0f} per worker), "
              f"{run['images_per_cpu_second']:.0f} per CPU second, {run['bytes_per_image'] / 1000:.1f} KB per image")
    print(f"load average {load:.1f} on {os.cpu_count()} CPUs; 1 -> 2 workers: x{figures['scaling_1_to_2_workers']} "
          f"wall, {figures['per_core_efficiency_2_workers']} per-core efficiency; ImageNet train (JPEG pack): "
          + ", ".join(f"{h} h on {c.replace('_', ' ')}" for c, h in figures["imagenet_train_hours"].items()))
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
