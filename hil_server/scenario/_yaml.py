"""YAML to a node tree with positions, refusing what a scenario never needs and a hostile file could abuse.

Only composition happens here (no object construction): aliases and anchors are refused outright, so an
exponential "billion laughs" expansion can never start; nesting depth is bounded before the recursive composer
goes deeper; the file size is checked before the file is read in full.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from hil_server.eis_data.textfile import TextFileError, decode_text

MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 24
"""Mappings and lists nested deeper than this are refused; real scenarios need about 8."""


class RefusedError(Exception):
    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


YAML12_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)$")
"""Floats in exponent notation without a dot (``8e-6``, ``1e3``): YAML 1.2 reads them as numbers, YAML 1.1
(PyYAML) as strings. The scenario format follows YAML 1.2 here: ``scale: 8e-6`` is a number."""


class _GuardedLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def _line(self, event: yaml.Event) -> int | None:
        return None if event.start_mark is None else event.start_mark.line + 1

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            raise RefusedError(
                self._line(event), f"YAML alias '*{event.anchor}' is not allowed: write the value out"
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise RefusedError(
                self._line(event), f"YAML anchor '&{anchor}' is not allowed: scenarios use no aliases"
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise RefusedError(self._line(event), f"nesting deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_GuardedLoader.add_implicit_resolver("tag:yaml.org,2002:float", YAML12_FLOAT, list("-+.0123456789"))


def read_limited(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The file's bytes; RefusedError when it is larger than ``limit`` (checked before reading it whole)."""
    with path.open("rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise RefusedError(None, f"file larger than {limit} bytes: not a scenario")
    return data


def compose(data: bytes) -> tuple[yaml.Node | None, yaml.SafeLoader]:
    """The document's root node (None for an empty document) and the loader, reused to construct scalars.

    Raises RefusedError for policy violations and yaml.YAMLError for syntax errors.
    """
    try:
        text = decode_text(data, "")
    except TextFileError as exc:
        raise RefusedError(exc.line, exc.message) from None
    loader = _GuardedLoader(text)
    try:
        root = loader.get_single_node()
    finally:
        loader.dispose()
    return root, loader
