"""``robusttune data pack``: pre-process an image folder once into uint8 shards that training reads directly."""

from __future__ import annotations

import argparse

from robusttune.cli.output import add_common, command_group, emit, values


def cmd_data_pack(args: argparse.Namespace) -> int:
    from robusttune import api, progress

    with progress.bar(f"pack {args.source}", unit="img") as bar:
        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        packed = api.pack(args.source, args.out, kind=args.kind, model=args.model, encoding=args.encoding,
                          quality=args.quality, shard_size=args.shard_size, workers=args.workers, progress=advance,
                          cache_dir=args.cache_dir)

    def human() -> None:
        resumed = f" ({packed.resumed_shards} shard(s) kept from an earlier run)" if packed.resumed_shards else ""
        print(f"packed {packed.images} images into {packed.shards} shard(s), {packed.bytes / 2**20:.1f} MiB, "
              f"in {packed.seconds:.1f} s{resumed}: {packed.out}")
        print("point train_dir / val_dir / ood_dirs at this folder to train from it")

    emit(packed.to_dict(), args.json, human)
    return 0


def register(commands) -> None:
    from robusttune.config import PACK_KINDS, PackEncoding

    data = command_group(commands, "data", help="prepare datasets (pack image folders into shards)")
    pack = data.add_parser("pack", help="resize + centre-crop an image folder once into uint8 shards (resumable)")
    add_common(pack)  # --cache-dir: where the source's folder index is kept
    pack.add_argument("source", metavar="SOURCE", help="an ImageNet-style folder (train, val, or one OOD set)")
    pack.add_argument("out", metavar="OUT", help="the pack folder (new or empty; an interrupted pack resumes)")
    pack.add_argument("--kind", required=True, choices=PACK_KINDS, help="imagenet (train or val) or the OOD set's name")
    pack.add_argument("--model", default="ViT-B-32", help="open_clip model whose input size the images get (default ViT-B-32)")
    pack.add_argument("--encoding", choices=values(PackEncoding), default=PackEncoding.RAW.value,
                      help="raw uint8 (lossless; the default, for CPU runs and small sets) or jpeg (about a fifth of the "
                           "bytes: use it for GPU runs, docs/guides/running-on-gpus.md)")
    pack.add_argument("--quality", type=int, default=90, metavar="Q", help="JPEG quality 1..100 (default 90)")
    pack.add_argument("--shard-size", type=int, default=1024, metavar="N", help="images per shard (default 1024)")
    pack.add_argument("--workers", type=int, default=None, metavar="K",
                      help="decoding processes (default: one per CPU this process can use, at most that; 0: this one)")
    pack.set_defaults(handler=cmd_data_pack)
