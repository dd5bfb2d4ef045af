"""``robusttune world prepare`` and ``robusttune world pretrain``: the embedded mini benchmark."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from robusttune.cli.output import add_common, command_group, emit, progress_bar, table
from robusttune.errors import ConfigError


def _world_config(path: str | None):
    from robusttune.config import WorldConfig, default_world, load_config

    return load_config(WorldConfig, path) if path else default_world()


def cmd_world_prepare(args: argparse.Namespace) -> int:
    from robusttune.api import cache_directory
    from robusttune.training.world import prepare_world

    config = _world_config(args.config)
    started = time.perf_counter()
    prepared = prepare_world(config, cache_directory(args.cache_dir), progress=progress_bar())
    seconds = round(time.perf_counter() - started, 2)
    payload = {"world": config.name, "weights": str(prepared.weights), "weights_source": prepared.source,
               "zero_shot": prepared.zero_shot, "seconds": seconds,
               "sizes": {"train": len(prepared.world.train), "val": len(prepared.world.val), "test": len(prepared.world.test),
                         **{f"ood_{k}": len(v) for k, v in prepared.world.ood.items()}}}

    def human() -> None:
        print(f"world '{config.name}' ready in {seconds:.1f} s (tiny CLIP: {prepared.source}, {prepared.weights})")
        print("zero-shot accuracy (%):")
        print(table([prepared.zero_shot], list(prepared.zero_shot)))

    emit(payload, args.json, human)
    return 0


def cmd_world_pretrain(args: argparse.Namespace) -> int:
    from robusttune.api import cache_directory
    from robusttune.data.mini.world import load_world, world_dir
    from robusttune.training.world import pretrain_and_save, world_key

    config = _world_config(args.config)
    cache = cache_directory(args.cache_dir)
    out = Path(args.out) if args.out else world_dir(config, cache) / f"tiny_clip_{world_key(config)}.pt"
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out}: file exists (pass --overwrite to replace it)")
    meta = pretrain_and_save(load_world(config, cache), out, progress=progress_bar())
    payload = {"weights": str(out), **meta}

    def human() -> None:
        print(f"pre-trained in {meta['pretrain_seconds']:.0f} s -> {out}")
        print(table([meta["zero_shot"]], list(meta["zero_shot"])))

    emit(payload, args.json, human)
    return 0


def register(commands) -> None:
    world_commands = command_group(commands, "world", help="build the embedded mini benchmark (data + pre-trained tiny CLIP)")
    prepare = world_commands.add_parser("prepare", help="generate (or reuse) the world and print its zero-shot accuracy")
    add_common(prepare, config_help="world config YAML/JSON (default: the built-in world)")
    prepare.set_defaults(handler=cmd_world_prepare)
    pretrain = world_commands.add_parser("pretrain", help="pre-train the world's tiny CLIP and write its weights")
    add_common(pretrain, config_help="world config YAML/JSON (default: the built-in world)")
    pretrain.add_argument("--out", metavar="FILE", help="weights file to write (default: in the cache)")
    pretrain.add_argument("--overwrite", action="store_true", help="replace an existing weights file")
    pretrain.set_defaults(handler=cmd_world_pretrain)
