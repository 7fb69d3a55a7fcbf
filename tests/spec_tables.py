"""Read the payload tables of SPEC.md and describe the construct declarations in the same terms."""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

from construct import Bytes, FormatField, Padded

from protocol import _schema
from protocol._constants import MsgType

SPEC = Path(__file__).resolve().parent.parent / "protocol" / "SPEC.md"
_TYPE = {
    "B": "u8",
    "H": "u16",
    "I": "u32",
    "L": "u32",
    "Q": "u64",
    "b": "i8",
    "h": "i16",
    "i": "i32",
    "l": "i32",
    "q": "i64",
    "f": "f32",
}


def _type_of(subcon: Any) -> tuple[str, int | None]:
    if isinstance(subcon, _schema.CountOf):
        return _type_of(subcon.subcon)
    if isinstance(subcon, FormatField):
        return _TYPE[subcon.fmtstr[-1]], struct.calcsize(subcon.fmtstr)
    if isinstance(subcon, Bytes):
        return f"u8[{subcon.length}]", subcon.length
    if isinstance(subcon, Padded):
        return f"reserved[{subcon.length}]", subcon.length
    if isinstance(subcon, _schema.Utf8):
        return "str", None
    if isinstance(subcon, _schema.NumpyArray):
        element = "record" if subcon.dtype.names else _type_of(subcon.element)[0]
        return f"{element}[{subcon.count_field}]", None
    raise TypeError(type(subcon))


def schema_rows(declaration: Any) -> list[tuple[str, str, str]]:
    """(offset, field, type); offsets after the first variable-length field are '-'."""
    rows: list[tuple[str, str, str]] = []
    offset: int | None = 0
    for sub in declaration.subcons:
        type_name, size = _type_of(sub.subcon)
        rows.append((str(offset) if offset is not None else "-", sub.name, type_name))
        offset = offset + size if (offset is not None and size is not None) else None
    return rows


def spec_rows() -> dict[str, list[tuple[str, str, str]]]:
    """Tables under headings '### 0xNN NAME' (and '### Record CELL_STATE_RECORD')."""
    tables: dict[str, list[tuple[str, str, str]]] = {}
    current: str | None = None
    for line in SPEC.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            heading = re.match(r"^### (?:0x[0-9A-F]{2} |Record )([A-Z_]+)$", line)
            current = heading.group(1) if heading else None
            if current:
                tables[current] = []
            continue
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        # Field tables have 5 columns and an offset (or '-') first; other tables are skipped.
        if current and len(cells) == 5 and re.fullmatch(r"\d+|-", cells[0]):
            tables[current].append((cells[0], cells[1], cells[2]))
    return {k: v for k, v in tables.items() if v}


def schema_tables() -> dict[str, list[tuple[str, str, str]]]:
    tables = {t.name: schema_rows(d) for t, d in _schema.PAYLOADS.items()}
    tables["CELL_STATE_RECORD"] = schema_rows(_schema.CELL_STATE_RECORD)
    return tables


assert set(MsgType.__members__) <= set(schema_tables())
