#!/usr/bin/env python3
"""Write tools/wireshark/eis_hil.lua: the Wireshark dissector of the eis-hil protocol, generated from the
construct schema (protocol/_schema.py), the enums (protocol/_constants.py) and the CRC parameters
(protocol/_crc.py), so that it cannot drift from the Python codec.

What is generated from where:

- one ProtoField per header field and per payload field, in schema order, named
  ``eishil.<message>.<field>`` (record fields ``eishil.<message>.<array>.<field>``), with the unit taken
  from the field name's suffix (SPEC.md section 1: ``_us`` µs, ``_uV`` µV, ...) and, for scaled integers,
  the value in SI units appended to the item (``3712345 µV (3.712345 V)``);
- value names for enum fields and bit names for bit sets, from the IntEnum / IntFlag classes;
- one payload dissector per message type, walking the fields in order and checking each length, so a
  short payload is flagged ``MALFORMED_PAYLOAD`` at the field where it ends;
- the CRC-16/CCITT-FALSE and CRC-32C tables, from the polynomials in _crc.py.

The frame layer (hunt for the sync word, header CRC, TCP reassembly, both CRCs as expert info, heuristic,
default port) is the fixed Lua text below; it follows SPEC.md section 5.

    python tools/gen_wireshark.py            # rewrite the file
    python tools/gen_wireshark.py --check    # exit 1 if the file is not what this script generates
"""

from __future__ import annotations

import argparse
import enum
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from construct import Bytes, FormatField, Padded

import protocol as p
from protocol import _crc
from protocol._schema import PAYLOADS, CountOf, NumpyArray, Utf8

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tools" / "wireshark" / "eis_hil.lua"
DEFAULT_PORT = 7700
"""The server's default TCP port (``eis-hil serve --port``)."""

# Units from the field-name suffixes of SPEC.md section 1: (display unit, SI scale, SI unit or None).
UNITS: dict[str, tuple[str, float, str | None]] = {
    "_us": ("µs", 1e-6, "s"),
    "_ms": ("ms", 1e-3, "s"),
    "_uV": ("µV", 1e-6, "V"),
    "_uA": ("µA", 1e-6, "A"),
    "_mdegC": ("m°C", 1e-3, "°C"),
    "_ppm": ("ppm", 1e-4, "%"),
    "_hz": ("Hz", 1.0, None),
    "_ohm": ("Ω", 1.0, None),
}
SI_DIGITS = {"s": 6, "V": 6, "A": 6, "°C": 3, "%": 4}

# Value names: (message or "*", field) -> enum. Checked against the schema: a stale entry fails generation.
ENUMS: dict[tuple[str, str], type[enum.IntEnum]] = {
    ("*", "code"): p.ErrorCode,
    ("BYE", "reason"): p.ErrorCode,
    ("FAULT_EVENT", "kind"): p.FaultKind,
    ("CONTROL", "fault_kind"): p.FaultKind,
    ("*", "command"): p.ControlCommand,
    ("FAULT_EVENT", "phase"): p.FaultPhase,
    ("HEARTBEAT", "sim_state"): p.SimState,
    ("SUBSCRIBE", "eis_mode"): p.EisMode,
}
BITSETS: dict[tuple[str, str], type[enum.IntFlag]] = {
    ("CELL_STATES", "flags"): p.CellFlags,
    ("*", "cell_flags"): p.CellFlags,
    ("SUBSCRIBE", "msg_mask"): p.SubscribeMask,
}
SUMMARY = {
    "CELL_STATES": ("step", "n_cells"),
    "EIS_SPECTRUM": ("cell", "spectrum_id", "n_points"),
    "EIS_POINT": ("cell", "spectrum_id", "point_index"),
    "FAULT_EVENT": ("fault_id", "kind", "phase"),
    "CONTROL": ("command", "cell", "value"),
    "ACK": ("ack_seq", "command", "result"),
    "NAK": ("ack_seq", "command", "code"),
    "ERROR": ("code", "ref_seq"),
    "BYE": ("reason",),
    "HEARTBEAT": ("t_sim_us", "sim_state"),
    "SERVER_HELLO": ("cell_count", "scenario_id"),
    "CLIENT_HELLO": ("client_name",),
    "SUBSCRIBE": ("msg_mask", "n_cells"),
}
"""Fields shown in the Info column after the message name."""

# number kind -> ProtoField constructor
FORMATS = {
    "u8": "uint8",
    "u16": "uint16",
    "u32": "uint32",
    "u64": "uint64",
    "i8": "int8",
    "i16": "int16",
    "i32": "int32",
    "i64": "int64",
    "f32": "float",
    "f64": "double",
}


@dataclass
class Field:
    msg: str
    name: str
    abbr: str
    kind: str  # u8 .. f32, bytes, reserved, str, array, records
    size: int = 0
    count_of: str | None = None  # for a count field: the array it counts
    count_field: str | None = None  # for an array: its count field
    element: list[Field] | None = None  # record fields, or the one scalar element


def _unit(name: str) -> tuple[str, float, str | None] | None:
    for suffix, unit in UNITS.items():
        if name.endswith(suffix):
            return unit
    return None


def _lookup(table: dict[tuple[str, str], Any], msg: str, name: str) -> Any:
    return table.get((msg, name), table.get(("*", name)))


def _scalar(msg: str, name: str, abbr: str, fmt: FormatField) -> Field:
    code, size = fmt.fmtstr[-1], struct.calcsize(fmt.fmtstr)
    sign = "f" if code in "efd" else ("i" if code.islower() else "u")
    kind = f"{sign}{8 * size}"
    if kind not in FORMATS:
        raise TypeError(f"{msg}.{name}: no Lua mapping for format {fmt.fmtstr!r}")
    return Field(msg, name, abbr, kind, size)


def schema_fields() -> dict[str, list[Field]]:
    """The payload fields of every message type, from the construct declarations."""
    out: dict[str, list[Field]] = {}
    for msg_type, declaration in PAYLOADS.items():
        msg = msg_type.name
        prefix = f"eishil.{msg.lower()}"
        fields: list[Field] = []
        for sub in declaration.subcons:
            name, con = sub.name, sub.subcon
            abbr = f"{prefix}.{name}"
            if isinstance(con, CountOf):
                f = _scalar(msg, name, abbr, con.subcon)
                f.count_of = con.array_name
            elif isinstance(con, FormatField):
                f = _scalar(msg, name, abbr, con)
            elif isinstance(con, Padded):
                f = Field(msg, name, abbr, "reserved", int(con.length))
            elif isinstance(con, Bytes):
                f = Field(msg, name, abbr, "bytes", int(con.length))
            elif isinstance(con, Utf8):
                f = Field(msg, name, abbr, "str")
            elif isinstance(con, NumpyArray):
                if isinstance(con.element, FormatField):
                    elem = [_scalar(msg, name, abbr, con.element)]
                    f = Field(
                        msg, name, abbr, "array", elem[0].size, count_field=con.count_field, element=elem
                    )
                else:
                    elem = [_scalar(msg, s.name, f"{abbr}.{s.name}", s.subcon) for s in con.element.subcons]
                    size = sum(e.size for e in elem)
                    f = Field(msg, name, abbr, "records", size, count_field=con.count_field, element=elem)
            else:
                raise TypeError(f"{msg}.{name}: no Lua mapping for {type(con).__name__}")
            fields.append(f)
        out[msg] = fields
    _check_tables(out)
    return out


def _check_tables(fields: dict[str, list[Field]]) -> None:
    names = {(m, f.name) for m, fs in fields.items() for f in _flat(fs)}
    for table in (ENUMS, BITSETS):
        for msg, name in table:
            if not any(n == name and msg in ("*", m) for m, n in names):
                raise SystemExit(f"gen_wireshark: {msg}.{name} is not a field of the schema any more")
    for msg, shown in SUMMARY.items():
        for name in shown:
            if (msg, name) not in names:
                raise SystemExit(f"gen_wireshark: SUMMARY {msg}.{name} is not a field of the schema")


def _flat(fields: list[Field]) -> list[Field]:
    out: list[Field] = []
    for f in fields:
        out.append(f)
        if f.kind == "records" and f.element:
            out.extend(f.element)
    return out


# -- Lua rendering ---------------------------------------------------------------------------------------


def _lua_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _vals(e: type[enum.Enum]) -> str:
    items = ", ".join(f"[{int(m.value)}] = {_lua_str(m.name)}" for m in e)
    return "{ " + items + " }"


def _proto_field(f: Field, var: str) -> list[str]:
    lines: list[str] = []
    label = f.name
    if f.kind in ("bytes", "reserved"):
        lines.append(f"{var} = ProtoField.bytes({_lua_str(f.abbr)}, {_lua_str(label)})")
        return lines
    if f.kind == "str":
        lines.append(f"{var} = ProtoField.string({_lua_str(f.abbr)}, {_lua_str(label)}, base.UNICODE)")
        return lines
    ctor = FORMATS[f.kind]
    enum_cls = _lookup(ENUMS, f.msg, f.name)
    bits = _lookup(BITSETS, f.msg, f.name)
    unit = _unit(f.name)
    if ctor in ("float", "double"):
        # Shown as a double: Wireshark prints floats with 6 significant digits, doubles with 15, which
        # shows every binary32 value exactly.
        extra = f", {{ {_lua_str(' ' + unit[0])} }}" if unit else ""
        lines.append(f"{var} = ProtoField.double({_lua_str(f.abbr)}, {_lua_str(label)}{extra})")
    elif enum_cls is not None:
        lines.append(f"VALUE_NAMES[{_lua_str(f.abbr)}] = {_vals(enum_cls)}")
        lines.append(
            f"{var} = ProtoField.{ctor}({_lua_str(f.abbr)}, {_lua_str(label)}, base.DEC, "
            f"VALUE_NAMES[{_lua_str(f.abbr)}])"
        )
    elif bits is not None:
        lines.append(f"{var} = ProtoField.{ctor}({_lua_str(f.abbr)}, {_lua_str(label)}, base.HEX)")
        lines.append(f"BITS[{var}] = {{")
        for member in bits:
            if int(member.value) == 0 or bin(int(member.value)).count("1") != 1:
                continue  # NONE, ALL
            bit_abbr = f"{f.abbr}.{str(member.name).lower()}"
            lines.append(
                f"    ProtoField.bool({_lua_str(bit_abbr)}, {_lua_str(str(member.name))}, {f.size * 8}, nil, "
                f"0x{int(member.value):x}),"
            )
        lines.append("}")
    elif unit is not None:
        lines.append(
            f"{var} = ProtoField.{ctor}({_lua_str(f.abbr)}, {_lua_str(label)}, base.UNIT_STRING, "
            f"{{ {_lua_str(' ' + unit[0])} }})"
        )
    else:
        lines.append(f"{var} = ProtoField.{ctor}({_lua_str(f.abbr)}, {_lua_str(label)}, base.DEC)")
    return lines


def _si(f: Field) -> str:
    unit = _unit(f.name)
    if unit is None or unit[2] is None:
        return "nil"
    return f"{{ {unit[1]!r}, {_lua_str(unit[2])}, {SI_DIGITS[unit[2]]} }}"


def _var(f: Field) -> str:
    return "F[" + _lua_str(f.abbr) + "]"


def _payload_function(msg: str, fields: list[Field]) -> list[str]:
    fn = f"payload_{msg.lower()}"
    out = [f"local function {fn}(tvb, tree, o, e, info)", "    local n = {}"]
    for f in fields:
        nm = _lua_str(f.name)
        if f.kind in FORMATS_KINDS:
            out.append(f"    if o + {f.size} > e then return nil, {nm} end")
            out.append(
                f"    local v = add_num(tree, {_var(f)}, tvb(o, {f.size}), {_lua_str(f.kind)}, {_si(f)})"
            )
            if f.count_of:
                out.append(f"    n[{nm}] = v")
            if f.name in SUMMARY.get(msg, ()):
                out.append(f"    info[#info + 1] = {nm} .. '=' .. label_of({_lua_str(f.abbr)}, v)")
            out.append(f"    o = o + {f.size}")
        elif f.kind in ("bytes", "reserved"):
            out.append(f"    if o + {f.size} > e then return nil, {nm} end")
            out.append(f"    tree:add({_var(f)}, tvb(o, {f.size}))")
            out.append(f"    o = o + {f.size}")
        elif f.kind == "str":
            out.append(f"    if o + 1 > e then return nil, {nm} end")
            out.append("    local len = tvb(o, 1):uint()")
            out.append(f"    if o + 1 + len > e then return nil, {nm} end")
            out.append(f"    local s = add_str(tree, {_var(f)}, tvb, o, len)")
            out.append(f"    if s == nil then return nil, {nm} .. ' (invalid UTF-8)' end")
            if f.name in SUMMARY.get(msg, ()):
                out.append(f"    info[#info + 1] = {nm} .. '=\"' .. s .. '\"'")
            out.append("    o = o + 1 + len")
        elif f.kind == "array" and f.element:
            (el,) = f.element
            out.append(f"    local count = n[{_lua_str(str(f.count_field))}]")
            out.append(f"    if o + count * {f.size} > e then return nil, {nm} end")
            out.append(
                f"    local sub = group(tree, tvb, o, count * {f.size}, {nm} .. ': ' .. count .. ' values')"
            )
            out.append("    for k = 0, count - 1 do")
            out.append(
                f"        add_num(sub, {_var(el)}, tvb(o + k * {el.size}, {el.size}), "
                f"{_lua_str(el.kind)}, {_si(el)})"
            )
            out.append("    end")
            out.append(f"    o = o + count * {f.size}")
        elif f.kind == "records" and f.element:
            out.append(f"    local count = n[{_lua_str(str(f.count_field))}]")
            out.append(f"    if o + count * {f.size} > e then return nil, {nm} end")
            out.append(
                f"    local sub = group(tree, tvb, o, count * {f.size}, {nm} .. ': ' .. count .. ' records')"
            )
            out.append("    for k = 0, count - 1 do")
            out.append(f"        local r = sub:add(tvb(o, {f.size}), {_lua_str(f.name)} .. ' ' .. k)")
            out.append("        local parts = {}")
            for el in f.element:
                out.append(
                    f"        parts[#parts + 1] = {_lua_str(el.name)} .. ' ' .. add_num(r, {_var(el)}, "
                    f"tvb(o, {el.size}), {_lua_str(el.kind)}, {_si(el)}, true)"
                )
                out.append(f"        o = o + {el.size}")
            out.append("        r:append_text(': ' .. table.concat(parts, ', '))")
            out.append("    end")
        else:
            raise TypeError(f"{msg}.{f.name}: unhandled kind {f.kind}")
    out.append("    return o")
    out.append("end")
    out.append(f"PAYLOAD[{int(p.MsgType[msg])}] = {fn}")
    return out


FORMATS_KINDS = set(FORMATS)


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ _crc.CRC16_POLY) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
        table.append(crc)
    return table


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _crc.CRC32C_POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return table


def _lua_table(values: list[int], digits: int) -> str:
    rows = []
    for k in range(0, len(values), 8):
        rows.append("    " + ", ".join(f"0x{v:0{digits}x}" for v in values[k : k + 8]) + ",")
    return "{ [0] =\n" + "\n".join(rows) + "\n}"


def render() -> str:
    fields = schema_fields()
    decl: list[str] = []
    funcs: list[str] = []
    for msg, fs in fields.items():
        decl.append(f"-- {msg} (0x{int(p.MsgType[msg]):02x})")
        for f in _flat(fs):
            if f.kind == "array" and f.element:
                decl.extend(_proto_field(f.element[0], _var(f.element[0])))
            elif f.kind != "records":
                decl.extend(_proto_field(f, _var(f)))
        funcs.extend(_payload_function(msg, fs))
        funcs.append("")
    text = TEMPLATE.read_text(encoding="utf-8")
    subs = {
        "@MSG_TYPES@": _vals(p.MsgType),
        "@ERROR_CODES@": _vals(p.ErrorCode),
        "@FRAME_FLAGS@": "\n".join(
            f"FRAME_FLAG_BITS[#FRAME_FLAG_BITS + 1] = ProtoField.bool("
            f"{_lua_str('eishil.flags.' + str(m.name).lower())}, {_lua_str(str(m.name))}, 16, nil, "
            f"0x{int(m.value):x})"
            for m in p.FrameFlags
            if int(m.value)
        ),
        "@FIELDS@": "\n".join(decl),
        "@PAYLOADS@": "\n".join(funcs),
        "@CRC16_TABLE@": _lua_table(_crc16_table(), 4),
        "@CRC32C_TABLE@": _lua_table(_crc32c_table(), 8),
        "@CRC16_INIT@": f"0x{_crc.CRC16_INIT:04x}",
        "@CRC32C_INIT@": f"0x{_crc.CRC32C_INIT:08x}",
        "@CRC32C_XOROUT@": f"0x{_crc.CRC32C_XOROUT:08x}",
        "@SYNC0@": f"0x{p.SYNC[0]:02x}",
        "@SYNC1@": f"0x{p.SYNC[1]:02x}",
        "@VERSION@": str(p.PROTOCOL_VERSION),
        "@HEADER_SIZE@": str(p.HEADER_SIZE),
        "@CRC_SIZE@": str(p.CRC_SIZE),
        "@MAX_PAYLOAD@": str(p.MAX_PAYLOAD_SIZE),
        "@DEFAULT_PORT@": str(DEFAULT_PORT),
    }
    for key, value in subs.items():
        text = text.replace(key, value)
    leftover = re.findall(r"@[A-Z0-9_]+@", text)
    if leftover:
        raise SystemExit(f"gen_wireshark: template keys not filled in: {leftover}")
    return text


TEMPLATE = ROOT / "tools" / "wireshark" / "eis_hil.lua.in"
"""The fixed part of the dissector (frame layer, CRCs, helpers), with @KEYS@ filled in by ``render``."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            sys.stderr.write(f"{OUT.relative_to(ROOT)} is out of date: run python tools/gen_wireshark.py\n")
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    sys.stdout.write(f"wrote {OUT.relative_to(ROOT)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
