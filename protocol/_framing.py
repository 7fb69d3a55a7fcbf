"""Framing without decoding: raw frames out of a byte stream (SPEC.md section 5, steps 1-4).

Byte layout of a frame (little-endian)::

    [ sync 2 ][ version 1 ][ type 1 ][ flags 2 ][ length 2 ][ seq 4 ][ hcrc 2 ][ payload length ][ crc 4 ]
    |<-------------------- header CRC span: bytes 0..11 --------------------->|

Sans-IO, like the decoder: ``feed`` takes bytes and returns the intact frames, as they were on the wire.
"""

from __future__ import annotations

from ._constants import CRC_SIZE, HEADER_SIZE, MAX_PAYLOAD_SIZE, SYNC
from ._crc import crc16_ccitt_false, crc32c

HEADER_CRC_SPAN = 12
"""The header CRC covers bytes 0..11; it sits at bytes 12..13."""
LENGTH_OFFSET = 6
"""The payload length (u16) sits at bytes 6..7."""

_SYNC0 = SYNC[0]


class FrameSplitter:
    """Raw frames out of a byte stream: the framing steps of SPEC.md section 5 (hunt, header CRC, length
    bound, frame CRC, resync one byte after a bad frame), without decoding payloads. A frame of an unknown
    type or version is still a frame: it is returned, as it was on the wire. Sans-IO."""

    def __init__(self, max_payload_size: int = MAX_PAYLOAD_SIZE) -> None:
        self.max_payload_size = max_payload_size
        self.discarded_bytes = 0
        """Bytes that were not part of any intact frame (noise, bad frames, oversized headers)."""
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        while True:
            start = buf.find(SYNC)
            if start < 0:
                keep = 1 if buf and buf[-1] == _SYNC0 else 0
                self._discard(len(buf) - keep)
                break
            self._discard(start)
            if len(buf) < HEADER_SIZE:
                break
            if crc16_ccitt_false(memoryview(buf)[:HEADER_CRC_SPAN]) != int.from_bytes(
                buf[HEADER_CRC_SPAN : HEADER_CRC_SPAN + 2], "little"
            ):
                self._discard(1)
                continue
            length = int.from_bytes(buf[LENGTH_OFFSET : LENGTH_OFFSET + 2], "little")
            if length > self.max_payload_size:
                self._discard(HEADER_SIZE)
                continue
            total = HEADER_SIZE + length + CRC_SIZE
            if len(buf) < total:
                break
            if crc32c(memoryview(buf)[: total - CRC_SIZE]) != int.from_bytes(
                buf[total - CRC_SIZE : total], "little"
            ):
                self._discard(1)
                continue
            frames.append(bytes(buf[:total]))
            del buf[:total]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _discard(self, n: int) -> None:
        if n:
            self.discarded_bytes += n
            del self._buf[:n]
