"""Wire constants and the numeric enums of protocol version 1 (normative text: SPEC.md)."""

from __future__ import annotations

import enum

SYNC = b"\xe1\x5a"
"""The two sync bytes that open every frame (as a little-endian u16: 0x5AE1)."""

PROTOCOL_VERSION = 1
"""Major version written in the header of every frame this implementation sends."""
PROTOCOL_MINOR = 0
"""Minor version: additions that old receivers ignore (fields appended at the end of a payload)."""

HEADER_SIZE = 14
CRC_SIZE = 4
MAX_PAYLOAD_SIZE = 4096
"""Largest payload a conforming receiver must accept; a larger length field is rejected without buffering."""
MAX_FRAME_SIZE = HEADER_SIZE + MAX_PAYLOAD_SIZE + CRC_SIZE

MAX_STRING_BYTES = 255
HELLO_PAYLOAD_MAX = 512
"""Largest SERVER_HELLO payload a server sends (SPEC.md section 4): the first frame of a connection comes
before the client can say anything, so it must fit a small receive buffer. A longer hello goes out with its
frequency grid empty and, if still too long, its strings shortened (``bounded_hello``)."""
AUTH_CHALLENGE_SIZE = 16
AUTH_RESPONSE_SIZE = 32
HASH_SIZE = 32
AUTH_CONTEXT = b"EIS-HIL-AUTH-V1"
"""Domain-separation prefix of the challenge-response MAC (see SPEC.md, Authentication)."""

ALL_CELLS = 0xFFFF
"""Cell index meaning "every cell" in a CONTROL frame."""
UNPARSED_COMMAND = 0xFF
"""NAK ``command`` of a CONTROL whose bytes could not be used (bad CRC, malformed, unsupported version): not a
command code, and not the 0 of a NAK to a SUBSCRIBE."""


class MsgType(enum.IntEnum):
    SERVER_HELLO = 0x01
    CLIENT_HELLO = 0x02
    SUBSCRIBE = 0x03
    HEARTBEAT = 0x04
    BYE = 0x05
    ERROR = 0x06
    CELL_STATES = 0x10
    EIS_SPECTRUM = 0x11
    EIS_POINT = 0x12
    FAULT_EVENT = 0x13
    CONTROL = 0x20
    ACK = 0x21
    NAK = 0x22


class FrameFlags(enum.IntFlag):
    """Header flags (u16). Receivers ignore bits they do not know; senders set unknown bits to zero."""

    NONE = 0
    REPLAY = 0x0001
    """The payload comes from a recording being replayed, not from a live simulation."""
    MEASURED = 0x0002
    """The payload carries measured data (real-measurement replay), not model output."""


class CellFlags(enum.IntFlag):
    """Per-cell status bits (u16) in CELL_STATES records and EIS frames."""

    NONE = 0
    FAULT_ACTIVE = 0x0001
    MEASUREMENT_FAULT = 0x0002
    VOLTAGE_LOW_LIMIT = 0x0004
    VOLTAGE_HIGH_LIMIT = 0x0008
    CURRENT_LIMIT = 0x0010
    TEMPERATURE_LIMIT = 0x0020
    EXTRAPOLATED = 0x0040
    """The operating point lies outside the range the model was trained on."""


class SubscribeMask(enum.IntFlag):
    """Which streamed message types a client wants (u32 in SUBSCRIBE)."""

    NONE = 0
    CELL_STATES = 0x01
    EIS_SPECTRUM = 0x02
    EIS_POINT = 0x04
    FAULT_EVENT = 0x08
    HEARTBEAT = 0x10
    ALL = 0x1F


class EisMode(enum.IntEnum):
    SCENARIO_DEFAULT = 0
    INSTANT = 1
    SWEEP = 2


class SimState(enum.IntEnum):
    IDLE = 0
    RUNNING = 1
    PAUSED = 2
    STOPPED = 3
    FINISHED = 4


class ControlCommand(enum.IntEnum):
    """CONTROL ``command`` codes; the meaning of ``cell``, ``value``, ``aux`` per command is in SPEC.md."""

    START = 1
    PAUSE = 2
    RESUME = 3
    STOP = 4
    SEEK = 5
    SET_LOAD_CURRENT = 6
    SET_AMBIENT_TEMPERATURE = 7
    INJECT_FAULT = 8
    CLEAR_FAULT = 9
    REQUEST_SPECTRUM = 10
    SET_SPEED = 11


class FaultPhase(enum.IntEnum):
    START = 1
    END = 2


class FaultKind(enum.IntEnum):
    """Fault kinds (u8). 0x01-0x1F physics, 0x20-0x3F measurement, 0x40-0x5F spectrum and transport.

    An open set: a receiver must accept a kind it does not know and may show it as a number.
    """

    CONTACT_RESISTANCE = 0x01
    CAPACITY_FADE = 0x02
    INTERNAL_SHORT = 0x03
    ACCELERATED_HEATING = 0x04
    LITHIUM_PLATING = 0x05
    NOISE = 0x20
    OUTLIERS = 0x21
    GAIN = 0x22
    OFFSET = 0x23
    DRIFT = 0x24
    QUANTISATION = 0x25
    FROZEN = 0x26
    DROPPED_POINTS = 0x27
    NAN = 0x28
    SPECTRUM_DRIFT = 0x40
    DROP_FRAMES = 0x41
    DELAY_FRAMES = 0x42
    DUPLICATE_FRAMES = 0x43
    REORDER_FRAMES = 0x44
    CORRUPT_CRC = 0x45
    STRAY_BYTES = 0x46
    DISCONNECT = 0x47


class ErrorCode(enum.IntEnum):
    """Codes (u16) carried by ERROR, NAK and BYE. An open set, like FaultKind."""

    NONE = 0
    BAD_CRC = 1
    OVERSIZED = 2
    UNKNOWN_MESSAGE_TYPE = 3
    UNSUPPORTED_VERSION = 4
    MALFORMED_PAYLOAD = 5
    GARBAGE = 6
    TRUNCATED = 7
    BAD_HEADER_CRC = 8
    AUTH_REQUIRED = 16
    AUTH_FAILED = 17
    NOT_ALLOWED_IN_STATE = 18
    OUT_OF_RANGE = 19
    UNKNOWN_COMMAND = 20
    UNKNOWN_CELL = 21
    RATE_LIMITED = 22
    SLOW_CONSUMER = 23
    HEARTBEAT_TIMEOUT = 24
    TOO_MANY_CLIENTS = 25
    SHUTDOWN = 26
    INTERNAL = 27
