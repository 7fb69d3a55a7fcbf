#!/usr/bin/env python3
"""Turn tests/vectors/vectors.json into a C header for firmware_stub/tests/test_vectors.c.

    gen_vectors_h.py VECTORS_JSON OUT_H [--corpus DIR]

For every vector: its bytes, and per expected event a row (kind, nbytes, seq, msg_type, ...) plus, for a
frame, a generated function that compares every field of the decoded struct with the JSON value (floats by
their float32 bit pattern, so exactly). A JSON field this script cannot map to the C structs is an error,
so a new field in the vectors fails the build instead of going unchecked. --corpus writes each vector's
bytes as a file: the libFuzzer seed corpus. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path
from typing import Any

BYTES_FIELDS = {"auth_challenge", "model_hash", "scenario_hash", "auth_response"}
FLOAT_FIELDS = {"kk_residual", "freq_hz", "z_re_ohm", "z_im_ohm"}
COUNT_FIELDS = {
    ("SERVER_HELLO", "freq_hz"): "n_freq",
    ("SUBSCRIBE", "cells"): "n_cells",
    ("CELL_STATES", "records"): "n_cells",
    ("EIS_SPECTRUM", "freq_hz"): "n_points",
    ("EIS_SPECTRUM", "z_re_ohm"): "n_points",
    ("EIS_SPECTRUM", "z_im_ohm"): "n_points",
    ("FAULT_EVENT", "cells"): "n_cells",
}
RECORD_FIELDS = ("cell", "flags", "voltage_uV", "current_uA", "temperature_mdegC", "soc_ppm", "soh_ppm")


def c_bytes(data: bytes) -> str:
    rows = [", ".join(f"0x{b:02x}" for b in data[i : i + 16]) for i in range(0, len(data), 16)]
    return "{\n    " + ",\n    ".join(rows) + "}"


def c_string(data: bytes) -> str:
    """Octal escapes: unlike \\x they never swallow the next character."""
    return (
        '"' + "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\?' else f"\\{b:03o}" for b in data) + '"'
    )


def f32_bits(value: float) -> str:
    return f"0x{struct.unpack('<I', struct.pack('<f', value))[0]:08x}u"


def c_int(expr: str, name: str, value: int) -> str:
    if value < 0:
        lit = "(INT64_C(-9223372036854775807) - 1)" if value == -(2**63) else f"INT64_C({value})"
        return f'    check_i("{name}", (int64_t)({expr}), {lit});'
    return f'    check_u("{name}", (uint64_t)({expr}), UINT64_C({value}));'


def scalar(msg_type: str, expr: str, name: str, value: Any, out: list[str]) -> None:
    if name in BYTES_FIELDS:
        raw = bytes.fromhex(value)
        out.append(f'    check_mem("{name}", {expr}, sizeof({expr}), {c_string(raw)}, {len(raw)}u);')
    elif name in FLOAT_FIELDS:
        out.append(f'    check_f32("{name}", {expr}, {f32_bits(value)});')
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(f'    check_str("{name}", &{expr}, {c_string(raw)}, {len(raw)}u);')
    elif isinstance(value, int) and not isinstance(value, bool):
        out.append(c_int(expr, name, value))
    else:
        raise SystemExit(f"{msg_type}.{name}: cannot map {value!r} to C")


def check_function(fname: str, msg_type: str, fields: dict[str, Any], statics: list[str]) -> str:
    member = msg_type.lower()
    out = [
        f"static void {fname}(const hil_event_t *ev)",
        "{",
        f"    const hil_{member}_t *m = &ev->msg.{member};",
    ]
    counted: set[str] = set()
    for name, value in fields.items():
        if not isinstance(value, list):
            scalar(msg_type, f"m->{name}", name, value, out)
            continue
        count = COUNT_FIELDS.get((msg_type, name))
        if count is None:
            raise SystemExit(f"{msg_type}.{name}: array without a known count field")
        if count not in counted:
            out.append(c_int(f"m->{count}", count, len(value)))
            counted.add(count)
        if name == "records":
            for i, rec in enumerate(value):
                if tuple(rec) != RECORD_FIELDS:
                    raise SystemExit(f"{msg_type}.records: unexpected record fields {tuple(rec)}")
                for field, v in rec.items():
                    scalar(msg_type, f"m->records[{i}].{field}", field, v, out)
        elif value:
            arr = f"{fname}_{name}"
            if name in FLOAT_FIELDS:
                statics.append(
                    f"static const uint32_t {arr}[] = {{{', '.join(f32_bits(v) for v in value)}}};"
                )
                out.append(f'    check_f32s("{name}", m->{name}, {arr}, {len(value)}u);')
            else:
                statics.append(f"static const uint16_t {arr}[] = {{{', '.join(f'{v}u' for v in value)}}};")
                out.append(f'    check_u16s("{name}", m->{name}, {arr}, {len(value)}u);')
    out.append("}")
    return "\n".join(out)


def crc16_ccitt_false(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def payload_needed(data: bytes, protocol_max: int) -> int:
    """The largest ``payload_len`` (up to the protocol maximum) of any intact header in ``data``: a receiver
    built for less would report that candidate OVERSIZED instead of the vector's outcome."""
    need = 0
    for i in range(len(data) - 13):
        if data[i : i + 2] == b"\xe1\x5a" and crc16_ccitt_false(data[i : i + 12]) == int.from_bytes(
            data[i + 12 : i + 14], "little"
        ):
            length = int.from_bytes(data[i + 6 : i + 8], "little")
            if length <= protocol_max:
                need = max(need, length)
    return need


def expect_row(event: dict[str, Any], check: str) -> str:
    if "frame" in event:
        f = event["frame"]
        return (
            f"    {{HIL_EV_FRAME, 0u, 1, {f['seq']}u, HIL_MSG_{f['msg_type']}, {f['flags']}u, "
            f"{f['version']}u, {check}}},"
        )
    seq, msg_type = event["seq"], event["msg_type"]
    has = seq is not None
    return (
        f"    {{HIL_EV_{event['error']}, {event['nbytes']}u, {int(has)}, {seq if has else 0}u, "
        f"{msg_type if msg_type is not None else 0}, 0u, 0u, NULL}},"
    )


def generate(doc: dict[str, Any]) -> str:
    parts = [
        "/* Generated by firmware_stub/gen_vectors_h.py from tests/vectors/vectors.json. Do not edit. */",
        f"#define VECTORS_PROTOCOL_VERSION {doc['protocol_version']}",
        f"#define VECTORS_MAX_PAYLOAD {doc['max_payload_size']}",
    ]
    rows: list[str] = []
    auth = None
    for i, vec in enumerate(doc["vectors"]):
        data = bytes.fromhex(vec["hex"])
        statics: list[str] = []
        funcs: list[str] = []
        expects: list[str] = []
        for j, event in enumerate(vec["outcome"]):
            check = "NULL"
            if "frame" in event:
                check = f"v{i}_check{j}"
                funcs.append(
                    check_function(check, event["frame"]["msg_type"], event["frame"]["fields"], statics)
                )
                if vec["name"] == "client_hello":
                    auth = event["frame"]["fields"]["auth_response"]
            expects.append(expect_row(event, check))
        need = payload_needed(data, doc["max_payload_size"])
        parts.append(f"/* {vec['name']}: {vec['description']} */")
        parts.append(f"#if HIL_MAX_PAYLOAD >= {need} /* its largest intact header announces {need} bytes */")
        if data:
            parts.append(f"static const uint8_t v{i}_bytes[] = {c_bytes(data)};")
        parts += statics + funcs
        if expects:
            parts.append(f"static const expect_t v{i}_expect[] = {{\n" + "\n".join(expects) + "\n};")
        parts.append("#endif")
        rows.append(
            f"#if HIL_MAX_PAYLOAD >= {need}\n"
            f'    {{"{vec["name"]}", {int(vec["valid"])}, {f"v{i}_bytes" if data else "NULL"}, {len(data)}u, '
            f"{f'v{i}_expect' if expects else 'NULL'}, {len(expects)}u}},\n#endif"
        )
    if auth is None:
        raise SystemExit("no client_hello vector: the auth test needs its auth_response")
    parts.append(f"static const uint8_t CLIENT_HELLO_AUTH_RESPONSE[32] = {c_bytes(bytes.fromhex(auth))};")
    parts.append("static const vector_t VECTORS[] = {\n" + "\n".join(rows) + "\n};")
    parts.append("#define N_VECTORS (sizeof VECTORS / sizeof VECTORS[0])")
    parts.append(f"#define N_VECTORS_GENERATED {len(doc['vectors'])}u /* with HIL_MAX_PAYLOAD 4096 */")
    return "\n\n".join(parts) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("vectors", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--corpus", type=Path, help="also write each vector's bytes here (fuzzer seeds)")
    args = ap.parse_args()
    doc = json.loads(args.vectors.read_text(encoding="utf-8"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(generate(doc), encoding="utf-8")
    if args.corpus:
        args.corpus.mkdir(parents=True, exist_ok=True)
        for vec in doc["vectors"]:
            (args.corpus / vec["name"]).write_bytes(bytes.fromhex(vec["hex"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
