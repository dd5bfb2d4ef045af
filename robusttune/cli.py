"""The ``robusttune`` command: the composition root. Heavy imports happen inside subcommands.

Conventions (DESIGN.md section 6): ``--json`` prints one JSON object as the last line of stdout; exit code
0 on success, 1 when the job itself failed, 2 for bad input with one line on stderr (no traceback
unless ``--debug``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from robusttune.errors import ConfigError, RobustTuneError

PROG = "robusttune"


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _emit(payload: dict[str, Any], as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        print(json.dumps(payload, sort_keys=True, default=float))
    else:
        human()


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(column: str, value: Any) -> str:
        if isinstance(value, float):
            percent = column.startswith(("id_", "ood_")) or column == "objective"
            return f"{100 * value:.1f}" if percent else f"{value:.3g}"
        return "" if value is None else str(value)

    cells = [[cell(c, row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _world_config(path: str | None):
    from robusttune.config import WorldConfig, default_world, load_config

    return load_config(WorldConfig, path) if path else default_world()


def _cache_dir(value: str | None) -> Path:
    from robusttune.cache import resolve_cache_dir

    path = resolve_cache_dir(value)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: cache directory is a file")
    return path


def _progress_bar(quiet: bool):
    """A progress callback drawing one tqdm bar per phase (to stderr)."""
    if quiet:
        return None
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def update(phase: str, step: int, total: int, loss: float) -> None:
        bar = bars.get(phase)
        if bar is None:
            bar = bars[phase] = tqdm(total=total, desc=f"pre-train ({phase})", unit="step", file=sys.stderr)
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}")
        if step == total:
            bar.close()

    return update


# ---------------------------------------------------------------------------------------------- world


def cmd_world_prepare(args: argparse.Namespace) -> int:
    from robusttune.training.mini_world import prepare_world

    config = _world_config(args.config)
    started = time.perf_counter()
    prepared = prepare_world(config, _cache_dir(args.cache_dir), progress=_progress_bar(args.json))
    seconds = round(time.perf_counter() - started, 2)
    payload = {"world": config.name, "weights": str(prepared.weights), "weights_source": prepared.source,
               "zero_shot": prepared.zero_shot, "seconds": seconds,
               "sizes": {"train": len(prepared.world.train), "val": len(prepared.world.val), "test": len(prepared.world.test),
                         **{f"ood_{k}": len(v) for k, v in prepared.world.ood.items()}}}

    def human() -> None:
        print(f"world '{config.name}' ready in {seconds:.1f} s (tiny CLIP: {prepared.source}, {prepared.weights})")
        print("zero-shot accuracy (%):")
        print(_table([prepared.zero_shot], list(prepared.zero_shot)))

    _emit(payload, args.json, human)
    return 0


def cmd_world_pretrain(args: argparse.Namespace) -> int:
    from robusttune.data.mini.world import load_world, world_dir
    from robusttune.training.mini_world import pretrain_and_save, world_key

    config = _world_config(args.config)
    cache = _cache_dir(args.cache_dir)
    out = Path(args.out) if args.out else world_dir(config, cache) / f"tiny_clip_{world_key(config)}.pt"
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out}: file exists (pass --overwrite to replace it)")
    meta = pretrain_and_save(load_world(config, cache), out, progress=_progress_bar(args.json))
    payload = {"weights": str(out), **meta}

    def human() -> None:
        print(f"pre-trained in {meta['pretrain_seconds']:.0f} s -> {out}")
        print(_table([meta["zero_shot"]], list(meta["zero_shot"])))

    _emit(payload, args.json, human)
    return 0


# ----------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Hyperparameter search for robust fine-tuning of CLIP "
                     "(counterfactual masked images + feature distillation).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    from robusttune import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def common(p: argparse.ArgumentParser, *, config_help: str | None = None) -> None:
        p.add_argument("--cache-dir", metavar="DIR", help="cache directory (default: $ROBUSTTUNE_CACHE_DIR or ~/.cache/robusttune)")
        p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
        if config_help:
            p.add_argument("--config", metavar="FILE", help=config_help)

    world = commands.add_parser("world", help="build the embedded mini benchmark (data + pre-trained tiny CLIP)")
    world_commands = world.add_subparsers(dest="world_command", metavar="SUBCOMMAND", parser_class=_Parser)
    world_commands.required = True
    prepare = world_commands.add_parser("prepare", help="generate (or reuse) the world and print its zero-shot accuracy")
    common(prepare, config_help="world config YAML/JSON (default: the built-in world)")
    prepare.set_defaults(handler=cmd_world_prepare)
    pretrain = world_commands.add_parser("pretrain", help="pre-train the world's tiny CLIP and write its weights")
    common(pretrain, config_help="world config YAML/JSON (default: the built-in world)")
    pretrain.add_argument("--out", metavar="FILE", help="weights file to write (default: in the cache)")
    pretrain.add_argument("--overwrite", action="store_true", help="replace an existing weights file")
    pretrain.set_defaults(handler=cmd_world_pretrain)

    from robusttune import cli_train

    cli_train.register(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except RobustTuneError as error:
        if args.debug:
            raise
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
