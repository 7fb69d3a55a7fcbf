"""Stateful encoder: numbers the frames one sender sends."""

from __future__ import annotations

from ._codec import encode_frame, frame_payload
from ._constants import PROTOCOL_VERSION
from ._messages import Message


class FrameEncoder:
    """Encodes messages into frames with consecutive sequence numbers (u32, wrapping).

    ``version`` is the header version to write: the negotiated major version once the hello exchange is
    done (SPEC.md section 6).
    """

    def __init__(self, *, first_seq: int = 0, version: int = PROTOCOL_VERSION) -> None:
        self.next_seq = first_seq & 0xFFFFFFFF
        self.version = version

    def encode(self, message: Message, flags: int = 0) -> bytes:
        frame = encode_frame(message, self.next_seq, flags, self.version)
        self.next_seq = (self.next_seq + 1) & 0xFFFFFFFF
        return frame

    def frame(self, msg_type: int, payload: bytes, flags: int = 0) -> bytes:
        """An already encoded payload framed with the next sequence number: a server encodes a message once
        and frames it for each client."""
        frame = frame_payload(msg_type, payload, self.next_seq, flags, self.version)
        self.next_seq = (self.next_seq + 1) & 0xFFFFFFFF
        return frame
