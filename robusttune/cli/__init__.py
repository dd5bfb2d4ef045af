"""The ``robusttune`` command: the composition root. Each command module parses its flags, calls
``robusttune.api`` (or the library) and prints; heavy imports happen inside the commands.

Conventions: ``--json`` prints one JSON object as the last line of stdout; exit code 0 on success, 1 when the
job itself failed, 2 for bad input with one line on stderr (no traceback unless ``--debug``), 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path


def _quiet_exit(number: int, frame) -> None:
    raise SystemExit(128 + number)  # before main: nothing was started, nothing to say (no import traceback)


_STARTING = sys.argv[:1] == ["-m"] or Path(sys.argv[0] if sys.argv else "").name == "robusttune"
if _STARTING:  # run as the command (python -m robusttune.cli, the robusttune script), not imported by a program
    for _number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(_number, _quiet_exit)

from robusttune.cli import bench, data, doctor, launch, plan, report, sweep, train, world
from robusttune.cli.output import Parser, said_with_flags
from robusttune.errors import RobustTuneError, storage_error

PROG = "robusttune"
COMMAND_GROUPS = (world, data, train, sweep, plan, doctor, report, launch, bench)  # each registers its commands, in this order


def build_parser() -> argparse.ArgumentParser:
    from robusttune import __version__

    parser = Parser(prog=PROG, description="Hyperparameter search for robust fine-tuning of CLIP "
                    "(counterfactual masked images + feature distillation).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from robusttune import progress

    progress.show_bars(not getattr(args, "json", False))
    if signal.getsignal(signal.SIGINT) is _quiet_exit:  # Ctrl-C is a KeyboardInterrupt from here on
        signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = _stop_signals_interrupt()
    try:
        return int(args.handler(args) or 0)
    except RobustTuneError as error:
        if args.debug:
            raise
        print(f"{PROG}: error: {said_with_flags(error)}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # a full disk or a read-only place the command had to write to, said in one line
        if args.debug:
            raise
        place = Path(error.filename).parent if error.filename else Path.cwd()
        translated = storage_error(error, place)
        print(f"{PROG}: error: {translated or f'{error.filename or place}: {error.strerror or error}'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 128 + getattr(interrupt, "signal_number", 2)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _stop_signals_interrupt() -> dict:
    """SIGTERM and SIGHUP from the command's first second on end it as Ctrl-C does (a ``KeyboardInterrupt`` that
    carries the signal's number: exit 143 / 129, the clean-up on the way runs), not by the default handler's sudden
    death, which leaves half-made folders (a sweep's own handlers take over once it runs). Returns what to restore."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}

    def interrupt(number: int, frame) -> None:
        error = KeyboardInterrupt(signal.Signals(number).name)
        error.signal_number = number
        raise error

    return {number: signal.signal(number, interrupt) for number in (signal.SIGTERM, signal.SIGHUP)}


__all__ = ["PROG", "build_parser", "main"]
