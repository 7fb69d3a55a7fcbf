"""Framing without decoding: raw frames out of a byte stream (SPEC.md section 5, steps 1-4).

Byte layout of a frame (little-endian)::

    [ sync 2 ][ version 1 ][ type 1 ][ flags 2 ][ length 2 ][ seq 4 ][ hcrc 2 ][ payload length ][ crc 4 ]
    |<-------------------- header CRC span: bytes 0..11 --------------------->|

Sans-IO, like the decoder: ``feed`` takes bytes and returns the intact frames, as they were on the wire.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from ._codec import HEADER_STRUCT
from ._constants import CRC_SIZE, HEADER_SIZE, MAX_PAYLOAD_SIZE, SYNC
from ._crc import crc16_ccitt_false, crc32c
from ._errors import DecodeErrorKind, RemoteProtocolError

HEADER_CRC_SPAN = 12
"""The header CRC covers bytes 0..11; it sits at bytes 12..13."""
_HCRC_END = HEADER_CRC_SPAN + 2
_SYNC0 = SYNC[0]


@dataclasses.dataclass
class DecoderStats:
    frames: int = 0
    errors: int = 0
    bytes_received: int = 0
    bytes_garbage: int = 0
    """Bytes discarded outside any reported frame (noise, false sync words, cut-off frames)."""
    errors_by_kind: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


class FrameScanner:
    """The receiver algorithm of SPEC.md section 5 (steps 1-4 and 6; the decoder's docstring lists them and
    the garbage cases), once, for the decoder and the splitter. A subclass says what an intact frame becomes
    (``_intact``): a decoded ``Frame`` or its raw bytes. Errors and garbage are accounted for here."""

    def __init__(self, *, max_payload_size: int = MAX_PAYLOAD_SIZE) -> None:
        if not 0 <= max_payload_size <= 0xFFFF:
            raise ValueError("max_payload_size must fit the u16 length field")
        self.max_payload_size = max_payload_size
        self.stats = DecoderStats()
        self._buf = bytearray()
        self._offset = 0
        """Stream offset of ``_buf[0]``."""
        self._covered_until = 0
        """Discarded bytes before this stream offset belong to a frame already reported as BAD_CRC."""
        self._garbage = 0
        self._ready: collections.deque[Any] = collections.deque()
        """Items ready for the caller: errors, and what ``_intact`` made of each intact frame."""
        self._eof = False

    @property
    def buffered(self) -> int:
        """Bytes held that are not yet decoded."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof:
            raise ValueError("feed() after feed_eof()")
        self._buf += data
        self.stats.bytes_received += len(data)

    def feed_eof(self) -> None:
        """Mark the end of the stream: buffered bytes that never became a frame are reported."""
        self._eof = True

    def _consume(self, n: int) -> None:
        """Drop ``n`` bytes from the front; those outside a reported frame count as garbage."""
        garbage = min(n, max(0, self._offset + n - self._covered_until))
        self._garbage += garbage
        self.stats.bytes_garbage += garbage
        del self._buf[:n]  # O(1) for a bytearray: CPython moves its start pointer
        self._offset += n

    def _cover(self, n: int) -> None:
        """The next ``n`` bytes are accounted for by a reported frame or error, not garbage."""
        self._covered_until = max(self._covered_until, self._offset + n)

    def _emit(self, item: Any) -> None:
        self._flush_garbage()
        if isinstance(item, RemoteProtocolError):
            self._push_error(item)
        else:
            self.stats.frames += 1
            self._ready.append(item)

    def _flush_garbage(self) -> None:
        if self._garbage:
            n, self._garbage = self._garbage, 0
            self._push_error(RemoteProtocolError(DecodeErrorKind.GARBAGE, f"skipped {n} bytes", nbytes=n))

    def _push_error(self, err: RemoteProtocolError) -> None:
        self.stats.errors += 1
        self.stats.errors_by_kind[err.kind.name] += 1
        self._ready.append(err)

    def _scan(self) -> None:
        """Run the receiver algorithm until one item is ready or more bytes are needed."""
        buf = self._buf
        while not self._ready:
            start = buf.find(SYNC)
            if start < 0:
                # Keep a trailing first sync byte: its partner may come in the next chunk.
                keep = 1 if buf and buf[-1] == _SYNC0 and not self._eof else 0
                self._consume(len(buf) - keep)
                break
            if start:
                self._consume(start)
            if len(buf) < HEADER_SIZE:
                if not self._eof:
                    break
                self._truncated()
                continue
            _, version, msg_type, flags, length, seq = HEADER_STRUCT.unpack_from(buf, 0)
            if crc16_ccitt_false(memoryview(buf)[:HEADER_CRC_SPAN]) != int.from_bytes(
                buf[HEADER_CRC_SPAN:_HCRC_END], "little"
            ):
                self._consume(1)  # a false sync (noise, or a header hit by corruption)
                continue
            if length > self.max_payload_size:
                self._emit(
                    RemoteProtocolError(
                        DecodeErrorKind.OVERSIZED,
                        f"payload length {length} exceeds the maximum {self.max_payload_size}",
                        nbytes=HEADER_SIZE,
                        seq=seq,
                        msg_type=msg_type,
                        version=version,
                    )
                )
                self._cover(HEADER_SIZE)
                self._consume(HEADER_SIZE)
                continue
            total = HEADER_SIZE + length + CRC_SIZE
            if len(buf) < total:
                if not self._eof:
                    break
                self._truncated()
                continue
            body_end = total - CRC_SIZE
            self._cover(total)
            if crc32c(memoryview(buf)[:body_end]) != int.from_bytes(buf[body_end:total], "little"):
                self._emit(
                    RemoteProtocolError(
                        DecodeErrorKind.BAD_CRC,
                        f"frame CRC mismatch (type 0x{msg_type:02x}, seq {seq}, {total} bytes)",
                        nbytes=total,
                        seq=seq,
                        msg_type=msg_type,
                        version=version,
                    )
                )
                self._consume(1)  # rescan the rest: a valid frame may start inside the rejected one
                continue
            self._intact(version, msg_type, flags, seq, total)
        if self._eof and not self._ready:
            self._flush_garbage()

    def _truncated(self) -> None:
        """At end of stream, the candidate frame at the front can never complete: report it once, then
        rescan after its first byte, so that a complete frame inside the cut-off one is still found."""
        if self._offset >= self._covered_until:
            n = len(self._buf)
            self._emit(
                RemoteProtocolError(
                    DecodeErrorKind.TRUNCATED, f"stream ended inside a frame ({n} bytes)", nbytes=n
                )
            )
            self._cover(n)
        self._consume(1)

    def _intact(self, version: int, msg_type: int, flags: int, seq: int, total: int) -> None:
        """The first ``total`` buffered bytes are an intact frame (CRCs good): consume them."""
        raise NotImplementedError


class FrameSplitter(FrameScanner):
    """Raw frames out of a byte stream, without decoding payloads: ``feed`` returns the intact frames as
    they were on the wire. A frame of an unknown type or version is still a frame. Sans-IO."""

    def __init__(self, max_payload_size: int = MAX_PAYLOAD_SIZE) -> None:
        super().__init__(max_payload_size=max_payload_size)
        self._frames: list[bytes] = []
        self._frame_bytes = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:  # type: ignore[override]
        super().feed(data)
        while True:
            self._scan()
            if not self._ready:
                break
            self._ready.clear()  # errors: the splitter only counts what it discarded
        frames, self._frames = self._frames, []
        return frames

    @property
    def discarded_bytes(self) -> int:
        """Bytes that were not part of any intact frame (noise, bad frames, oversized headers)."""
        return self.stats.bytes_received - self._frame_bytes - len(self._buf)

    def _intact(self, version: int, msg_type: int, flags: int, seq: int, total: int) -> None:
        self._flush_garbage()
        self._frames.append(bytes(self._buf[:total]))
        self._frame_bytes += total
        self._consume(total)
