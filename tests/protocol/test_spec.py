"""SPEC.md matches the code: every payload table against the construct schema, the message and enum
codes, the CRC parameters and the worked example."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import protocol as p
from protocol import _crc

from ..spec_tables import SPEC, schema_tables, spec_rows

TEXT = SPEC.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(schema_tables()))
def test_payload_table_matches_schema(name: str) -> None:
    assert spec_rows().get(name) == schema_tables()[name]


def test_message_codes() -> None:
    listed = dict(re.findall(r"^\| (0x[0-9A-F]{2}) \| ([A-Z_]+) \|", TEXT, flags=re.M))
    assert {int(code, 16): name for code, name in listed.items()} == {t.value: t.name for t in p.MsgType}


@pytest.mark.parametrize("enum", [p.FaultKind, p.ErrorCode])
def test_enum_listings(enum: type[p.FaultKind] | type[p.ErrorCode]) -> None:
    for member in enum:
        assert re.search(rf"\b(0x{member.value:02X}|{member.value}) {member.name}\b", TEXT), member


def test_crc_parameters() -> None:
    for value in (
        _crc.CRC16_POLY,
        _crc.CRC16_CHECK,
        _crc.CRC32C_POLY,
        _crc.CRC32C_POLY_REFLECTED,
        _crc.CRC32C_CHECK,
    ):
        assert f"0x{value:04X}" in TEXT or f"0x{value:08X}" in TEXT


def test_sizes() -> None:
    assert f"Maximum payload: {p.MAX_PAYLOAD_SIZE} bytes" in TEXT
    assert f"maximum frame is {p.MAX_FRAME_SIZE} bytes" in TEXT
    assert f"Frame overhead: {p.HEADER_SIZE + p.CRC_SIZE} bytes" in TEXT


def test_worked_example_is_the_vector() -> None:
    block = TEXT[TEXT.index("## 9. Worked example") :]
    example = "".join(re.findall(r"^((?:[0-9a-f]{2} )+)", block, flags=re.M)).replace(" ", "")
    vectors = json.loads(
        (Path(__file__).resolve().parents[1] / "vectors" / "vectors.json").read_text(encoding="utf-8")
    )
    assert example == next(v["hex"] for v in vectors["vectors"] if v["name"] == "control_seek")


def test_state_table_is_generated_from_the_code() -> None:
    """SPEC.md 6.3 is what tools/gen_spec.py writes from protocol.SIM_TRANSITIONS (make pytest checks it
    too): the table a second team implements is the one the server follows."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "tools" / "gen_spec.py"
    spec = importlib.util.spec_from_file_location("gen_spec", path)
    assert spec is not None
    assert spec.loader is not None
    gen_spec = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_spec)
    assert gen_spec.render(TEXT) == TEXT, "protocol/SPEC.md is stale: run python tools/gen_spec.py"
    table = TEXT[
        TEXT.index("<!-- generated: sim-table -->") : TEXT.index("<!-- end generated: sim-table -->")
    ]
    for state, row in p.SIM_TRANSITIONS.items():
        assert state.name in table
        for cmd, target in row.items():
            line = next(x for x in table.splitlines() if x.startswith(f"| {cmd.value} {cmd.name} |"))
            cells = [c.strip() for c in line.strip("|").split("|")][1:]
            assert cells[list(p.SIM_TRANSITIONS).index(state)] == f"ACK → {target.name}"
