"""The two CRCs of the frame, with their parameters named (as libcanard does) and their check values.

Header check: CRC-16/CCITT-FALSE (also catalogued as CRC-16/IBM-3740)
    width 16, poly 0x1021, init 0xFFFF, refin false, refout false, xorout 0x0000, check 0x29B1.
    Computed with ``binascii.crc_hqx`` (C speed; it implements exactly this polynomial, unreflected).

Frame check: CRC-32C (Castagnoli, also catalogued as CRC-32/ISCSI)
    width 32, poly 0x1EDC6F41 (reflected 0x82F63B78), init 0xFFFFFFFF, refin true, refout true,
    xorout 0xFFFFFFFF, check 0xE3069283.
    Computed with the ``crc32c`` package (SSE4.2 / ARMv8 CRC instructions when present).

The pure-Python ``*_reference`` functions are the bit-by-bit definitions; the tests prove that the fast
implementations agree with them and with the check values, so SPEC.md and the code cannot drift apart.
"""

from __future__ import annotations

import binascii

import crc32c as _crc32c

CRC16_POLY = 0x1021
CRC16_INIT = 0xFFFF
CRC16_XOROUT = 0x0000
CRC16_CHECK = 0x29B1

CRC32C_POLY = 0x1EDC6F41
CRC32C_POLY_REFLECTED = 0x82F63B78
CRC32C_INIT = 0xFFFFFFFF
CRC32C_XOROUT = 0xFFFFFFFF
CRC32C_CHECK = 0xE3069283

CHECK_INPUT = b"123456789"


def crc16_ccitt_false(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/CCITT-FALSE of ``data``."""
    return binascii.crc_hqx(data, CRC16_INIT)


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli) of ``data``."""
    return int(_crc32c.crc32c(data))


def crc16_ccitt_false_reference(data: bytes) -> int:
    """Bit-by-bit CRC-16/CCITT-FALSE: MSB first, no reflection."""
    crc = CRC16_INIT
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ CRC16_POLY) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc ^ CRC16_XOROUT


def crc32c_reference(data: bytes) -> int:
    """Bit-by-bit CRC-32C: reflected input and output, LSB first."""
    crc = CRC32C_INIT
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ CRC32C_POLY_REFLECTED if crc & 1 else crc >> 1
    return crc ^ CRC32C_XOROUT
