"""Reading config files: one strict loader for every YAML and JSON config (search spaces, frozen copies, world and
training configs). A duplicated key, an empty file, more than one document, a set or binary tag, or a file over its
bounds (size, values with aliases expanded, depth) is refused in one line, so that loading any file is cheap.

Layer 0: stdlib and yaml only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from robusttune.errors import ConfigError


MAX_FILE_BYTES = 2**20  # 1 MiB; the shipped search spaces are under 2 KiB
MAX_NODES = 100_000  # values in a file (scalars, lists, mappings, keys), aliases counted as what they expand to
MAX_DEPTH = 32  # nesting of lists and mappings (a search space needs 5)
MAX_MESSAGE = 2000  # characters of an error message; longer ones are cut


def shorten(text: str, limit: int = 80) -> str:
    """``text`` (a key or a repr from a config) cut to ``limit`` characters for an error message."""
    return text if len(text) <= limit else f"{text[:limit - 1]}…"


def one_line(message: str) -> str:
    """``message`` as one printable line: line breaks and other control characters escaped, cut to MAX_MESSAGE."""
    if not message.isprintable():
        message = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in message)
    return shorten(message, MAX_MESSAGE)


class _Refused(Exception):
    """Raised inside the loader for a file that parses but is refused: a duplicated key, too many values."""

    def __init__(self, message: str, mark: Any = None):
        super().__init__(message)
        self.message, self.mark = message, mark


_MERGE_TAG = "tag:yaml.org,2002:merge"
# Standard tags that build what no config key takes: an unordered set (choices would lose their order), ordered
# pairs instead of a mapping, bytes.
_REFUSED_TAGS = frozenset(f"tag:yaml.org,2002:{kind}" for kind in ("set", "omap", "pairs", "binary"))
_TOO_MANY = f"a config file must hold at most {MAX_NODES} values (scalars, list items and keys), got more"
_TOO_DEEP = f"lists and mappings must nest at most {MAX_DEPTH} levels deep, got deeper"
_EXPANDED = " (aliases expanded)"


class _StrictComposing:
    """Composer and constructor rules of the strict loader (mixed into libyaml's parser, or PyYAML's own): at most
    MAX_DEPTH levels and MAX_NODES nodes while composing, then duplicated keys, recursive aliases and the expanded
    size checked on the node graph before anything is constructed; a scalar no constructor can read (``!!int abc``,
    an integer of 5,000 digits) is refused like a syntax error."""

    def _strict_init(self) -> None:
        self._depth = self._composed = 0

    def compose_node(self, parent, index):
        self._depth += 1
        self._composed += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(_TOO_DEEP, self.peek_event().start_mark)
            if self._composed > MAX_NODES:
                raise _Refused(_TOO_MANY, self.peek_event().start_mark)
            node = Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1
        if node.tag in _REFUSED_TAGS:
            raise _Refused(f"the YAML tag !!{node.tag.rsplit(':', 1)[-1]} is not allowed (a config holds mappings, "
                           f"lists, strings, numbers, booleans and null)", node.start_mark)
        return node

    def construct_object(self, node, deep=False):
        try:
            return SafeConstructor.construct_object(self, node, deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as error:
            kind = node.tag.rsplit(":", 1)[-1]
            value = str(getattr(node, "value", ""))
            why = (f"an integer of {len(value)} characters is too long" if "integer string conversion" in str(error)
                   else f"{shorten(repr(value), 40)} is not a valid !!{kind}")
            raise _Refused(why, node.start_mark) from None

    def check_graph(self, root) -> None:
        """Refuse duplicated keys, recursive aliases and a document that expands (through aliases) beyond MAX_NODES
        values or MAX_DEPTH levels. One pass over the node graph: each list and mapping is measured once."""
        size: dict[int, int] = {}  # lists and mappings measured so far; a scalar is 1 value, 1 level
        depth: dict[int, int] = {}
        entered: set[int] = set()
        stack: list[tuple[Any, str, bool]] = [(root, "", False)]
        while stack:
            node, path, leaving = stack.pop()
            key = id(node)
            if isinstance(node, yaml.ScalarNode):
                continue
            children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
            if leaving:
                size[key] = 1 + sum(size.get(id(child), 1) for child in children)
                depth[key] = 1 + max((depth.get(id(child), 1) for child in children), default=0)
                if size[key] > MAX_NODES:
                    raise _Refused(_TOO_MANY + _EXPANDED, node.start_mark)
                if depth[key] > MAX_DEPTH:
                    raise _Refused(_TOO_DEEP + _EXPANDED, node.start_mark)
                continue
            if key in size:
                continue
            if key in entered:
                raise _Refused("an alias must not refer to a list or mapping that contains it", node.start_mark)
            entered.add(key)
            stack.append((node, path, True))
            if isinstance(node, yaml.MappingNode):
                self._check_unique_keys(node, path)
                labelled = [(v, _label(k)) for k, v in node.value] + [(k, "?") for k, _ in node.value]
            else:
                labelled = [(child, str(i)) for i, child in enumerate(node.value)]
            stack.extend((child, f"{path}.{label}" if path else label, False) for child, label in reversed(labelled)
                         if not isinstance(child, yaml.ScalarNode) and id(child) not in size)

    def _check_unique_keys(self, node, path: str) -> None:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue  # a list or mapping as a key is refused when constructed; merged keys may be overridden
            try:
                key = self.construct_object(key_node)
                hash(key)
            except (_Refused, TypeError):
                key = (key_node.tag, key_node.value)
            if key in seen:
                dotted = f"{path}.{_label(key_node)}" if path else _label(key_node)
                raise _Refused(f"key '{dotted}' must appear once, got it again (first at line {seen[key].line + 1})",
                               key_node.start_mark)
            seen[key] = key_node.start_mark


def _label(key_node) -> str:
    """How a mapping key appears in a dotted path (``budget.trials``)."""
    return shorten(str(key_node.value), 40) if isinstance(key_node, yaml.ScalarNode) else "?"


def _strict_loader_class() -> type:
    try:  # libyaml's parser (ten times faster), with PyYAML's composer so that depth and size are checked as it goes
        from yaml.cyaml import CParser

        class Loader(_StrictComposing, CParser, Composer, SafeConstructor, Resolver):
            def __init__(self, stream: str):
                CParser.__init__(self, stream)
                Composer.__init__(self)
                SafeConstructor.__init__(self)
                Resolver.__init__(self)
                self._strict_init()

            get_single_node = Composer.get_single_node  # CParser's own would compose in C, unchecked
            check_node, get_node = Composer.check_node, Composer.get_node
    except ImportError:  # PyYAML without libyaml
        from yaml.parser import Parser
        from yaml.reader import Reader
        from yaml.scanner import Scanner

        class Loader(_StrictComposing, Reader, Scanner, Parser, Composer, SafeConstructor,  # type: ignore[no-redef]
                     Resolver):
            def __init__(self, stream: str):
                Reader.__init__(self, stream)
                Scanner.__init__(self)
                Parser.__init__(self)
                Composer.__init__(self)
                SafeConstructor.__init__(self)
                Resolver.__init__(self)
                self._strict_init()

    return Loader


StrictLoader = _strict_loader_class()


def _check_size(text: str, source: str) -> None:
    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise ConfigError(f"{source}: a config file must be at most {MAX_FILE_BYTES // 2**20} MiB, got "
                          f"{len(text.encode('utf-8', 'surrogatepass'))} bytes")


def _top_level(data: Any, source: str) -> dict[str, Any]:
    if data is None:
        raise ConfigError(f"{source}: expected a mapping at the top level, got null")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_yaml_text(text: str, source: str) -> dict[str, Any]:
    """YAML text as a mapping, strictly: one document, no duplicated key at any depth, no Python tags, at most
    MAX_FILE_BYTES, MAX_NODES values (aliases expanded, so an alias bomb is refused) and MAX_DEPTH levels.
    An empty file (or only comments) is refused: it would otherwise mean every default. One-line ``ConfigError``
    naming ``source`` otherwise."""
    _check_size(text, source)
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(f"{source}: the file is empty; expected a mapping of keys to values")
        loader.check_graph(node)
        data = loader.construct_document(node)
    except _Refused as refused:
        where = f" line {refused.mark.line + 1}:" if refused.mark is not None else ""
        raise ConfigError(one_line(f"{source}:{where} {refused.message}")) from None
    except yaml.YAMLError as error:
        raise ConfigError(one_line(_yaml_error(error, source))) from None
    finally:
        loader.dispose()
    return _top_level(data, source)


def _yaml_error(error: yaml.YAMLError, source: str) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if problem and "nesting depth" in problem:  # libyaml >= 0.2.5 stops deep flow nesting itself: state our rule
        return f"{source}:{f' line {mark.line + 1}:' if mark is not None else ''} {_TOO_DEEP}"
    where = f" (line {mark.line + 1})" if mark is not None else ""
    context = getattr(error, "context", None)
    if problem:
        detail = f"{context}: {problem}" if context else problem
    else:
        lines = str(error).strip().splitlines()
        detail = lines[0] if lines else type(error).__name__
    return f"{source}: not valid YAML{where}: {detail}"


def load_json_text(text: str, source: str) -> dict[str, Any]:
    """JSON text as a mapping, with the YAML loader's rules: no duplicated key, bounded size, values and depth."""
    _check_size(text, source)
    if not text.strip():
        raise ConfigError(f"{source}: the file is empty; expected a mapping of keys to values")

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        mapping: dict[str, Any] = {}
        for key, value in pairs:
            if key in mapping:
                raise _Refused(f"key '{shorten(key, 40)}' must appear once in a JSON object, got it again")
            mapping[key] = value
        return mapping

    try:
        data = json.loads(text, object_pairs_hook=unique)
    except _Refused as refused:
        raise ConfigError(one_line(f"{source}: {refused.message}")) from None
    except RecursionError:
        raise ConfigError(f"{source}: {_TOO_DEEP}") from None
    except ValueError as error:  # json.JSONDecodeError, or an integer beyond Python's digit limit
        detail = "an integer is too long" if "integer string conversion" in str(error) else str(error).splitlines()[0]
        raise ConfigError(one_line(f"{source}: not valid JSON: {detail}")) from None
    _check_json_tree(data, source)
    return _top_level(data, source)


def _check_json_tree(data: Any, source: str) -> None:
    count, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ConfigError(f"{source}: {_TOO_MANY}")
        if level > MAX_DEPTH:
            raise ConfigError(f"{source}: {_TOO_DEEP}")
        if isinstance(value, dict):
            stack.extend((v, level + 1) for v in value.values())
            count += len(value)  # the keys
        elif isinstance(value, list):
            stack.extend((v, level + 1) for v in value)


def read_config_text(path: str | Path) -> str:
    """A config file's text: at most MAX_FILE_BYTES of UTF-8 (a leading BOM dropped), with one-line errors."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: config file not found")
    try:
        with file.open("rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)  # never more: a huge file (or a device) costs nothing
            size = max(len(raw), os.fstat(stream.fileno()).st_size)
    except OSError as error:
        raise ConfigError(f"{file}: cannot read the config file ({error.strerror or error})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{file}: a config file must be at most {MAX_FILE_BYTES // 2**20} MiB, got {size} bytes")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        kind = "JSON" if file.suffix == ".json" else "YAML"
        raise ConfigError(f"{file}: not valid {kind}: must be UTF-8 text, got byte {raw[error.start]:#04x} at "
                          f"position {error.start}") from None


def load_text(text: str, source: str, *, json_format: bool = False) -> dict[str, Any]:
    """Config text (YAML, or JSON when ``json_format``) as a mapping; see ``load_yaml_text``."""
    return load_json_text(text, source) if json_format else load_yaml_text(text, source)


def load_mapping_and_text(path: str | Path) -> tuple[dict[str, Any], str]:
    """A YAML or JSON config file as a mapping, and its text (read once)."""
    text = read_config_text(path)
    return load_text(text, str(path), json_format=Path(path).suffix == ".json"), text


def load_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file into a dict, with one-line errors naming the file."""
    return load_mapping_and_text(path)[0]
