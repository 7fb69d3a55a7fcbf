"""Sans-IO stream decoding: bytes in, frames and errors out. No sockets, no asyncio, no clocks.

Usage (the transport only moves bytes)::

    decoder = FrameDecoder()
    decoder.feed(chunk)                      # any size, any split
    for item in decoder.events():            # until the buffered bytes hold no complete frame
        if isinstance(item, Frame): handle(item.message)
        else: count_and_log(item)            # a RemoteProtocolError; decoding continues after it
    decoder.feed_eof()                       # at end of stream: reports a truncated frame, if any

Receiver algorithm (SPEC.md section 5, normative; the C client implements the same steps):

1. HUNT: discard bytes until the two sync bytes E1 5A.
2. HEADER: wait for 14 bytes. Header CRC wrong: the sync was false; discard one byte, back to 1.
3. payload_len > max: error OVERSIZED (the header is intact, so seq and type are reported); discard the
   14 header bytes, back to 1. Nothing of the announced payload is buffered or awaited.
4. Wait for payload and frame CRC. Frame CRC wrong: error BAD_CRC; discard one byte, back to 1: the bytes
   of the rejected frame are scanned again, so a valid frame that was inside it is not lost.
5. Version not accepted: UNSUPPORTED_VERSION; type unknown: UNKNOWN_MESSAGE_TYPE; payload shorter than its
   layout or a bad string: MALFORMED_PAYLOAD. Each discards the frame (its framing is sound). Else: FRAME.
6. End of stream: a candidate that can never complete is TRUNCATED; discard one byte, back to 1.

Garbage cases recovered from: noise before, between and after frames; false sync words in noise or in
payloads; corrupted header (length, type or CRC); corrupted payload; truncated frame followed by a new
frame; oversized length; frames of another protocol version.

Discarded bytes are reported as one GARBAGE error per run, just before the next frame or error (or at end
of stream), not counting bytes inside a span already reported (a BAD_CRC frame, an OVERSIZED header, a
TRUNCATED tail). So the sequence of frames and errors depends only on the byte stream, never on how it was
split into chunks.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator

from ._codec import CODECS, MalformedPayloadError
from ._constants import (
    CRC_SIZE,
    HEADER_SIZE,
    MAX_PAYLOAD_SIZE,
    PROTOCOL_VERSION,
)
from ._errors import DecodeErrorKind, RemoteProtocolError
from ._framing import FrameScanner
from ._messages import Message


class NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA = NeedData.NEED_DATA
"""Returned by ``next_frame`` when the buffered bytes hold no complete frame."""


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame: its message and the header fields a receiver acts on."""

    message: Message
    seq: int
    flags: int = 0
    version: int = PROTOCOL_VERSION


class FrameDecoder(FrameScanner):
    """Push decoder: ``feed()`` bytes, then ``next_frame()`` / ``events()``.

    Memory: after ``events()`` is drained, at most one incomplete frame (< 14 + max_payload_size + 4
    bytes) stays buffered. ``next_frame`` only ever raises ``RemoteProtocolError``.
    """

    def __init__(
        self,
        *,
        max_payload_size: int = MAX_PAYLOAD_SIZE,
        accepted_versions: frozenset[int] = frozenset({PROTOCOL_VERSION}),
    ) -> None:
        super().__init__(max_payload_size=max_payload_size)
        self.accepted_versions = accepted_versions

    def next_frame(self) -> Frame | NeedData:
        """The next frame, or NEED_DATA. Raises RemoteProtocolError for bad input, after skipping it."""
        if not self._ready:
            self._scan()
        if not self._ready:
            return NEED_DATA
        item: Frame | RemoteProtocolError = self._ready.popleft()
        if isinstance(item, RemoteProtocolError):
            raise item
        return item

    def events(self) -> Iterator[Frame | RemoteProtocolError]:
        """Frames and errors (as values) until the buffer holds no complete frame."""
        while True:
            try:
                item = self.next_frame()
            except RemoteProtocolError as exc:
                yield exc
                continue
            if item is NEED_DATA:
                return
            yield item

    # -- internals -----------------------------------------------------------------------------------

    def _intact(self, version: int, msg_type: int, flags: int, seq: int, total: int) -> None:
        payload = bytes(self._buf[HEADER_SIZE : total - CRC_SIZE])
        self._consume(total)
        self._emit(self._frame_or_error(version, msg_type, flags, seq, payload))

    def _frame_or_error(
        self, version: int, msg_type: int, flags: int, seq: int, payload: bytes
    ) -> Frame | RemoteProtocolError:
        def error(kind: DecodeErrorKind, detail: str) -> RemoteProtocolError:
            return RemoteProtocolError(
                kind,
                detail,
                nbytes=len(payload) + HEADER_SIZE + CRC_SIZE,
                seq=seq,
                msg_type=msg_type,
                version=version,
            )

        if version not in self.accepted_versions:
            return error(
                DecodeErrorKind.UNSUPPORTED_VERSION,
                f"protocol version {version} (accepted: {sorted(self.accepted_versions)})",
            )
        codec = CODECS.get(msg_type)
        if codec is None:
            return error(DecodeErrorKind.UNKNOWN_MESSAGE_TYPE, f"message type 0x{msg_type:02x}")
        try:
            message = codec.decode(payload)
        except MalformedPayloadError as exc:
            return error(DecodeErrorKind.MALFORMED_PAYLOAD, str(exc))
        return Frame(message, seq, flags, version)
