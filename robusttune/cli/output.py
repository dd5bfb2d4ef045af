"""What every command shares: one-line argument errors, common flags, JSON or human output, tables, progress bars."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from robusttune.config import Precision
from robusttune.errors import ParameterError
from robusttune.metrics import WISE_ALPHA, WISE_PREFIX, is_accuracy_column, is_gap_column, is_wise_value, metric_columns, wise_key



class Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# API parameters whose flag is not ``--`` + the name with dashes
FLAGS = {"formats": "--format", "loggers": "--logger", "heartbeat_seconds": "--heartbeat", "finetuned": "FINETUNED",
         "warm_top": "--top"}


def flag_of(parameter: str) -> str:
    return FLAGS.get(parameter, "--" + parameter.replace("_", "-"))


def said_with_flags(error: Exception) -> str:
    """An error's one line as the command line says it: the bad parameter of a ``ParameterError``, and any
    parameter a message quotes as a remedy (```overwrite```), named by their flags."""
    message = str(error)
    if isinstance(error, ParameterError) and error.parameter.isidentifier():
        message = f"{flag_of(error.parameter)} {error.problem}"
    return re.sub(r"`([a-z_]+)`", lambda quoted: flag_of(quoted.group(1)), message)


def values(enum) -> list[str]:
    """An enum's values, as a flag's choices (the enum is the one list)."""
    return [member.value for member in enum]


def add_common(parser: argparse.ArgumentParser, *, config_help: str | None = None, cache: bool = True) -> None:
    """``--cache-dir``, ``--json`` and (when ``config_help`` is given) ``--config``."""
    if cache:
        parser.add_argument("--cache-dir", metavar="DIR",
                            help="cache directory (default: $ROBUSTTUNE_CACHE_DIR or ~/.cache/robusttune)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    if config_help:
        parser.add_argument("--config", metavar="FILE", help=config_help)


def add_placement(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--precision`` (default: the config's, else auto)."""
    parser.add_argument("--device", metavar="DEV", help="auto (default: a visible GPU, else the CPU), cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=values(Precision),
                        help="autocast dtype (auto: bf16 on a GPU that supports it, else fp32)")


def command_group(commands, name: str, *, help: str):
    """A command with subcommands (``robusttune world prepare``): returns the subcommands' registry."""
    group = commands.add_parser(name, help=help)
    subcommands = group.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND", parser_class=Parser)
    subcommands.required = True
    return subcommands


def emit(payload: dict[str, Any], as_json: bool, human: Callable[[], None]) -> None:
    """The JSON object (one line, last on stdout) under ``--json``, else the human-readable output."""
    if as_json:
        print(json.dumps(payload, sort_keys=True, default=float))
    else:
        human()


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table; accuracies (``id_*``, ``ood_*``, ``objective``) in %, gaps between them in points."""
    def cell(column: str, value: Any) -> str:
        if isinstance(value, float) and is_gap_column(column):
            return f"{100 * value:+.2f}"
        if isinstance(value, float):
            percent = is_accuracy_column(column)
            return f"{100 * value:.1f}" if percent else f"{value:.3g}"
        return "" if value is None else str(value)

    cells = [[cell(c, row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def trial_columns(rows: Sequence[dict[str, Any]], parameters: Sequence[str]) -> list[str]:
    names = {k for r in rows for k in r}
    wise = [wise_key(m) for m in metric_columns(k[len(WISE_PREFIX):] for k in names if is_wise_value(k))]
    return ["trial_id", "status", *metric_columns(names), *wise, *([WISE_ALPHA] if WISE_ALPHA in names else []),
            *parameters]


def progress_bar():
    """A pre-training progress callback: one bar per phase (``robusttune.progress``: none under ``--json``)."""
    from robusttune import progress

    bars: dict[str, Any] = {}

    def update(phase: str, step: int, total: int, loss: float) -> None:
        bar = bars.get(phase)
        if bar is None:
            bar = bars[phase] = progress.bar(f"pre-train ({phase})", total, unit="step")
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}")
        if step == total:
            bar.close()

    return update
