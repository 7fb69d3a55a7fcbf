"""One error hierarchy for the protocol, split by whose fault it is (after h11's ``_util.py``).

``LocalProtocolError``: we were asked to send something the protocol cannot carry (a bug on our side).
``RemoteProtocolError``: the bytes we received are not a valid frame. The decoder has already skipped the
offending bytes when it reports one, so the caller counts it, logs it and keeps reading.
"""

from __future__ import annotations

import enum

from ._constants import ErrorCode


class ProtocolError(Exception):
    """Base class of every error this package raises."""


class LocalProtocolError(ProtocolError):
    """A frame could not be encoded: a value out of its wire range, a payload over the maximum, ..."""


class DecodeErrorKind(enum.Enum):
    """What was wrong with received bytes. ``code`` is the wire ErrorCode to report it with."""

    GARBAGE = ErrorCode.GARBAGE
    OVERSIZED = ErrorCode.OVERSIZED
    BAD_CRC = ErrorCode.BAD_CRC
    UNSUPPORTED_VERSION = ErrorCode.UNSUPPORTED_VERSION
    UNKNOWN_MESSAGE_TYPE = ErrorCode.UNKNOWN_MESSAGE_TYPE
    MALFORMED_PAYLOAD = ErrorCode.MALFORMED_PAYLOAD
    TRUNCATED = ErrorCode.TRUNCATED

    @property
    def code(self) -> ErrorCode:
        return ErrorCode(self.value)


class RemoteProtocolError(ProtocolError):
    """Received bytes that are not a valid frame.

    ``nbytes`` is how many stream bytes this error accounts for (skipped garbage, or the span of a rejected
    frame); ``seq`` and ``msg_type`` are set when the frame header was intact (its header CRC matched), so
    a server can answer the frame with a NAK or ERROR that echoes the sequence number.
    """

    def __init__(
        self,
        kind: DecodeErrorKind,
        detail: str,
        *,
        nbytes: int = 0,
        seq: int | None = None,
        msg_type: int | None = None,
        version: int | None = None,
    ) -> None:
        super().__init__(f"{kind.name.lower()}: {detail}")
        self.kind = kind
        self.detail = detail
        self.nbytes = nbytes
        self.seq = seq
        self.msg_type = msg_type
        self.version = version

    def __repr__(self) -> str:
        return (
            f"RemoteProtocolError({self.kind.name}, {self.detail!r}, nbytes={self.nbytes}, "
            f"seq={self.seq}, msg_type={self.msg_type})"
        )
