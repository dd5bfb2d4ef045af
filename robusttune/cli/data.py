"""``robusttune data pack``: pre-process an image folder once into uint8 shards that training reads directly."""

from __future__ import annotations

import argparse
import time

from robusttune.cli.output import add_common, command_group, emit


def cmd_data_pack(args: argparse.Namespace) -> int:
    from robusttune.data.packed import pack_folder
    from robusttune.models.clip import model_image_size, preprocess_for

    from robusttune import progress

    transform = preprocess_for(model_image_size(args.model))
    started = time.perf_counter()
    with progress.bar(f"pack {args.source}", unit="img") as bar:
        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        summary = pack_folder(args.source, args.out, kind=args.kind, transform=transform, encoding=args.encoding,
                              quality=args.quality, shard_size=args.shard_size, workers=args.workers, progress=advance)
    seconds = round(time.perf_counter() - started, 2)
    payload = {"out": str(summary.out), "images": summary.images, "shards": summary.shards, "bytes": summary.bytes,
               "resumed_shards": summary.resumed_shards, "seconds": seconds}

    def human() -> None:
        resumed = f" ({summary.resumed_shards} shard(s) kept from an earlier run)" if summary.resumed_shards else ""
        print(f"packed {summary.images} images into {summary.shards} shard(s), {summary.bytes / 2**20:.1f} MiB, "
              f"in {seconds:.1f} s{resumed}: {summary.out}")
        print("point train_dir / val_dir / ood_dirs at this folder to train from it")

    emit(payload, args.json, human)
    return 0


def register(commands) -> None:
    from robusttune.data.packed import KINDS

    data = command_group(commands, "data", help="prepare datasets (pack image folders into shards)")
    pack = data.add_parser("pack", help="resize + centre-crop an image folder once into uint8 shards (resumable)")
    add_common(pack, cache=False)
    pack.add_argument("source", metavar="SOURCE", help="an ImageNet-style folder (train, val, or one OOD set)")
    pack.add_argument("out", metavar="OUT", help="the pack folder (new or empty; an interrupted pack resumes)")
    pack.add_argument("--kind", required=True, choices=KINDS, help="imagenet (train or val) or the OOD set's name")
    pack.add_argument("--model", default="ViT-B-32", help="open_clip model whose input size the images get (default ViT-B-32)")
    pack.add_argument("--encoding", choices=["raw", "jpeg"], default="raw",
                      help="raw uint8 (lossless; the default, for CPU runs and small sets) or jpeg (about a fifth of the "
                           "bytes: use it for GPU runs, README 'Running on GPUs')")
    pack.add_argument("--quality", type=int, default=90, metavar="Q", help="JPEG quality 1..100 (default 90)")
    pack.add_argument("--shard-size", type=int, default=1024, metavar="N", help="images per shard (default 1024)")
    pack.add_argument("--workers", type=int, default=0, metavar="K",
                      help="decoding processes (default 0: this one; capped at the CPUs this process can use)")
    pack.set_defaults(handler=cmd_data_pack)
