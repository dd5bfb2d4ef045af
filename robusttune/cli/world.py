"""``robusttune world prepare`` and ``robusttune world pretrain``: the embedded mini benchmark."""

from __future__ import annotations

import argparse

from robusttune.cli.output import add_common, command_group, emit, progress_bar, table


def cmd_world_prepare(args: argparse.Namespace) -> int:
    from robusttune import api

    world = api.prepare_world(args.config, cache_dir=args.cache_dir, progress=progress_bar())

    def human() -> None:
        print(f"world '{world.world}' ready in {world.seconds:.1f} s (tiny CLIP: {world.weights_source}, {world.weights})")
        print("zero-shot accuracy (%):")
        print(table([world.zero_shot], list(world.zero_shot)))

    emit(world.to_dict(), args.json, human)
    return 0


def cmd_world_pretrain(args: argparse.Namespace) -> int:
    from robusttune import api

    meta = api.pretrain_world(args.config, out=args.out, overwrite=args.overwrite, cache_dir=args.cache_dir,
                              progress=progress_bar())

    def human() -> None:
        print(f"pre-trained in {meta['pretrain_seconds']:.0f} s -> {meta['weights']}")
        print(table([meta["zero_shot"]], list(meta["zero_shot"])))

    emit(meta, args.json, human)
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
