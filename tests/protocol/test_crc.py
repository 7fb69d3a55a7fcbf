"""The CRC parameters in SPEC.md, proved: check values, and fast == bit-by-bit reference."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from protocol import _crc


def test_check_values() -> None:
    assert _crc.crc16_ccitt_false(_crc.CHECK_INPUT) == _crc.CRC16_CHECK == 0x29B1
    assert _crc.crc32c(_crc.CHECK_INPUT) == _crc.CRC32C_CHECK == 0xE3069283
    assert _crc.crc16_ccitt_false_reference(_crc.CHECK_INPUT) == 0x29B1
    assert _crc.crc32c_reference(_crc.CHECK_INPUT) == 0xE3069283


@given(st.binary(max_size=300))
def test_fast_matches_reference(data: bytes) -> None:
    assert _crc.crc16_ccitt_false(data) == _crc.crc16_ccitt_false_reference(data)
    assert _crc.crc32c(data) == _crc.crc32c_reference(data)


def test_empty_input() -> None:
    assert _crc.crc16_ccitt_false(b"") == 0xFFFF
    assert _crc.crc32c(b"") == 0
