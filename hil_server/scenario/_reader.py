"""Typed reading of a YAML node tree that records every problem (file, line, key path) instead of stopping."""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import yaml

from ._errors import Issue

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_ALLOWED_SCALAR_TAGS = frozenset(
    {_STR, _NULL, "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"}
)


class _Bad:
    """Marks a value that already produced an error, so callers do not report it twice."""


BAD = _Bad()


@dataclass(frozen=True)
class Range:
    """A closed or open interval; None on a side means unbounded. ``integer`` only changes the wording."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False

    def contains(self, x: float) -> bool:
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        return not (self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi))

    def describe(self) -> str:
        what = "an integer" if self.integer else "a number"
        lo, hi = _fmt(self.lo), _fmt(self.hi)
        if self.lo is not None and self.hi is not None:
            return f"{what} in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{what} {'>' if self.lo_open else '>='} {lo}"
        if self.hi is not None:
            return f"{what} {'<' if self.hi_open else '<='} {hi}"
        return what


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    if isinstance(x, int):
        return str(x)
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def line_of(node: yaml.Node | None) -> int | None:
    return None if node is None else node.start_mark.line + 1


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def suggest(word: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def shown(node: yaml.Node) -> str:
    """How a value appears in messages: the text as written, quoted, cut to a readable length."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "nothing (null)"
    text = str(node.value)
    if len(text) > 40:
        text = text[:37] + "..."
    return repr(text)


class Reader:
    def __init__(self, file: str, constructor: yaml.SafeLoader) -> None:
        self.file = file
        self.errors: list[Issue] = []
        self._constructor = constructor

    def error(self, node: yaml.Node | None, path: str, message: str) -> None:
        self.errors.append(Issue(self.file, line_of(node), path, message))

    def scalar(self, node: yaml.Node, path: str) -> object:
        """The Python value of a scalar node, or BAD for anything the scenario format does not allow."""
        if not isinstance(node, yaml.ScalarNode):
            return BAD
        if node.tag not in _ALLOWED_SCALAR_TAGS:
            self.error(node, path, f"YAML tag {node.tag!r} is not allowed")
            return BAD
        try:
            return self._constructor.construct_object(node)
        except yaml.YAMLError as exc:
            self.error(node, path, f"cannot read value: {exc}")
            return BAD

    def mapping(
        self, node: yaml.Node, path: str, allowed: Collection[str], required: Collection[str] = ()
    ) -> dict[str, yaml.Node] | None:
        """Keys to value nodes. Duplicate keys (YAML keeps the last silently) and unknown keys are errors."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path, f"expected a mapping (key: value lines), got {shown(node)}")
            return None
        found: dict[str, yaml.Node] = {}
        seen: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR:
                self.error(key_node, path, f"keys must be plain words, got {shown(key_node)}")
                continue
            key = str(key_node.value)
            if key in seen:
                self.error(
                    key_node, join(path, key), f"duplicate key (first given on line {line_of(seen[key])})"
                )
                continue
            seen[key] = key_node
            if key not in allowed:
                self.error(
                    key_node,
                    join(path, key),
                    f"unknown key '{key}'{suggest(key, allowed)}; allowed here: {', '.join(sorted(allowed))}",
                )
                continue
            found[key] = value_node
        for key in required:
            if key not in seen:
                self.error(node, join(path, key), "missing required key")
        return found

    def sequence(self, node: yaml.Node, path: str) -> Iterator[tuple[str, yaml.Node]]:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, path, f"expected a list, got {shown(node)}")
            return
        for i, item in enumerate(node.value):
            yield join(path, i), item

    def number(self, node: yaml.Node, path: str, bounds: Range = Range()) -> float | None:
        value = self.scalar(node, path)
        if value is BAD and isinstance(node, yaml.ScalarNode):
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.error(node, path, f"expected {bounds.describe()}, got {shown(node)}")
            return None
        if not bounds.contains(value):
            self.error(node, path, f"expected {bounds.describe()}, got {shown(node)}")
            return None
        return float(value)

    def integer(self, node: yaml.Node, path: str, bounds: Range) -> int | None:
        bounds = Range(bounds.lo, bounds.hi, bounds.lo_open, bounds.hi_open, integer=True)
        value = self.scalar(node, path)
        if value is BAD and isinstance(node, yaml.ScalarNode):
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not bounds.contains(value):
            self.error(node, path, f"expected {bounds.describe()}, got {shown(node)}")
            return None
        return value

    def string(self, node: yaml.Node, path: str, *, what: str = "a string") -> str | None:
        value = self.scalar(node, path)
        if value is BAD and isinstance(node, yaml.ScalarNode):
            return None
        if not isinstance(value, str):
            self.error(node, path, f"expected {what}, got {shown(node)}")
            return None
        return value

    def choice(self, node: yaml.Node, path: str, choices: Collection[str]) -> str | None:
        value = self.string(node, path, what=f"one of {', '.join(choices)}")
        if value is None:
            return None
        if value not in choices:
            self.error(
                node, path, f"expected one of {', '.join(choices)}, got {value!r}{suggest(value, choices)}"
            )
            return None
        return value
