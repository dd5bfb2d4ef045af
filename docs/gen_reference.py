"""Generates the reference pages from the code at every `mkdocs build` (mkdocs-gen-files runs this file).

- reference/cli.md: every command and flag, read from the `robusttune` argument parser;
- reference/space.md: the search-space schema, read from the pydantic models' JSON schema;
- reference/training.md: the training settings (TrainConfig) and each method's knobs, from their declarations.

Nothing here is written by hand: change a flag's help, a field's description or a method's docstring and the page
changes with it.
"""

from __future__ import annotations

import argparse
import inspect
import json
from typing import Any

import mkdocs_gen_files

from robusttune.cli import build_parser
from robusttune.config import TrainConfig
from robusttune.methods import METHODS
from robusttune.space import SearchSpace


def cell(text: Any) -> str:
    """A value as one Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ").strip() if text not in (None, "") else ""


# --- the command line -------------------------------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse offers no public walk of its sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def flag_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = ", ".join(f"`{option}`" for option in action.option_strings) or f"`{action.metavar or action.dest}`"
        if action.option_strings and action.nargs != 0:
            name += f" `{action.metavar or action.dest.upper()}`"
        default = action.default
        shown = "" if default in (None, False, argparse.SUPPRESS) or action.nargs == 0 else f"`{default}`"
        choices = f" (one of {', '.join(map(str, action.choices))})" if action.choices else ""
        rows.append(f"| {name} | {cell((action.help or '') % vars(action) if action.help else '')}{cell(choices)} | {shown} |")
    return rows


def command_page(parser: argparse.ArgumentParser, path: list[str], out) -> None:
    children = subcommands(parser)
    if path:
        out.write(f"\n{'#' * min(len(path) + 1, 4)} `{' '.join(['robusttune', *path])}`\n\n")
        if parser.description:
            out.write(parser.description.strip() + "\n\n")
        out.write(f"```text\n{parser.format_usage().strip()}\n```\n\n")
        rows = flag_rows(parser)
        if rows:
            out.write("| argument | meaning | default |\n|---|---|---|\n" + "\n".join(rows) + "\n")
    for name, child in children.items():
        command_page(child, [*path, name], out)


with mkdocs_gen_files.open("reference/cli.md", "w") as page:
    page.write("# Command line\n\nGenerated from the argument parser (`robusttune.cli.build_parser`). Every command "
               "takes `--debug` before its name (tracebacks instead of one line). Exit codes: 0 success, 1 the job "
               "failed, 2 bad input (one line on stderr), 130 interrupted.\n")
    command_page(build_parser(), [], page)


# --- the search space -------------------------------------------------------------------------------------------


DEFINITIONS: dict[str, Any] = {}  # the $defs of the schema being written: enums are shown by their values


def type_of(schema: dict[str, Any] | bool) -> str:
    if not isinstance(schema, dict):  # JSON schema's `true`: any value
        return "any"
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        enum = DEFINITIONS.get(name, {}).get("enum")
        return ", ".join(f"`{value}`" for value in enum) if enum else name
    if "enum" in schema:
        return ", ".join(f"`{value}`" for value in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(type_of(option) for option in schema[key])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {type_of(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema:
        return f"mapping to {type_of(schema['additionalProperties'] or {})}"
    return str(kind)


def bounds(schema: dict[str, Any]) -> str:
    words = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<",
             "minItems": "items >=", "maxItems": "items <="}
    return ", ".join(f"{word} {schema[key]}" for key, word in words.items() if key in schema)


def default_of(field: dict[str, Any], required: bool) -> str:
    if "default" not in field:
        return "required" if required else ""
    shown = json.dumps(field["default"])
    return f"`{shown}`" if len(shown) <= 40 else "see below" if isinstance(field["default"], dict) else f"`{shown[:37]}...`"


def model_table(title: str, schema: dict[str, Any], out, level: str = "##") -> None:
    out.write(f"\n{level} {title}\n\n")
    if schema.get("description"):
        out.write(inspect.cleandoc(schema["description"]) + "\n\n")
    if "enum" in schema:
        out.write("One of: " + ", ".join(f"`{value}`" for value in schema["enum"]) + ".\n")
        return
    properties = schema.get("properties", {})
    if not properties:
        return
    out.write("| key | type | default | bounds | meaning |\n|---|---|---|---|---|\n")
    for key, field in properties.items():
        default = default_of(field, key in schema.get("required", ()))
        out.write(f"| `{key}` | {cell(type_of(field))} | {cell(default)} | {cell(bounds(field))} | "
                  f"{cell(field.get('description', ''))} |\n")


space_schema = SearchSpace.model_json_schema()
DEFINITIONS.update(space_schema.get("$defs", {}))
with mkdocs_gen_files.open("reference/space.md", "w") as page:
    page.write("# Search-space schema\n\nGenerated from the pydantic models of `robusttune.space` "
               "(`SearchSpace.model_json_schema()`). A space file is YAML or JSON; unknown keys are refused with a "
               "suggestion. Training settings (`fixed:` and searched `parameters:`) are listed in "
               "[Training settings and methods](training.md).\n")
    model_table("SearchSpace (the top level)", {k: v for k, v in space_schema.items() if k != "$defs"}, page)
    for name, definition in sorted(space_schema.get("$defs", {}).items()):
        model_table(name, definition, page)
    page.write("\n## The JSON schema\n\n??? note \"SearchSpace.model_json_schema()\"\n\n    ```json\n")
    page.write("\n".join("    " + line for line in json.dumps(space_schema, indent=2).splitlines()) + "\n    ```\n")


# --- training settings and methods ------------------------------------------------------------------------------

with mkdocs_gen_files.open("reference/training.md", "w") as page:
    page.write("# Training settings and methods\n\nGenerated from `robusttune.config.TrainConfig` and the method "
               "declarations in `robusttune.methods`. In a space, every key below is a `fixed:` value or a searched "
               "`parameters:` entry (a method's knobs are written flat, beside the common settings).\n")
    train_schema = TrainConfig.model_json_schema()
    DEFINITIONS.clear()
    DEFINITIONS.update(train_schema.get("$defs", {}))
    model_table("Common settings (TrainConfig)", {k: v for k, v in train_schema.items() if k != "$defs"}, page)
    page.write("\n## Methods\n\n| method | what it trains |\n|---|---|\n")
    for name, model in METHODS.items():
        page.write(f"| `{name}` | {cell(inspect.cleandoc(model.__doc__ or ''))} |\n")
    for name, model in METHODS.items():
        knob_schema = model.model_json_schema()
        DEFINITIONS.update(knob_schema.get("$defs", {}))
        knobs = {k: v for k, v in knob_schema.items() if k != "$defs"}
        knobs["properties"] = {k: v for k, v in knobs.get("properties", {}).items() if k != "name"}
        knobs.pop("description", None)
        if knobs["properties"]:
            model_table(f"Knobs of `{name}`", knobs, page, level="###")
