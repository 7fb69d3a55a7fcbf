"""The wire format of protocol version 1, declared once with ``construct``. No other module imports construct.

Frame (little-endian; SPEC.md section 2 is the normative table)::

    offset  size  field
    0       2     sync          0xE1 0x5A
    2       1     version       protocol major version (1)
    3       1     msg_type      MsgType
    4       2     flags         FrameFlags
    6       2     payload_len   0 .. MAX_PAYLOAD_SIZE (4096)
    8       4     seq           per-sender frame counter, wraps at 2**32
    12      2     header_crc    CRC-16/CCITT-FALSE of bytes 0..11
    14      N     payload       layout chosen by msg_type (PAYLOADS below)
    14+N    4     frame_crc     CRC-32C of bytes 0..13+N

Payloads use a deliberately small vocabulary so that a fast codec can be derived from these declarations
mechanically (``_codec.py``) and checked against construct's own parse/build (the tests do):
fixed-width integers and floats, ``Bytes(n)`` of fixed length, ``Reserved(n)`` zero bytes, ``Utf8`` strings
(u8 length prefix), ``CountOf`` length fields and ``NumpyArray`` element arrays. Arrays decode to numpy
(``np.frombuffer``) instead of construct's per-element ``Array``, which costs ~1 us per element.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np
from construct import (
    Bytes,
    Checksum,
    Const,
    Construct,
    FixedSized,
    Float32l,
    FormatField,
    Int8ul,
    Int16ul,
    Int32sl,
    Int32ul,
    Int64sl,
    Int64ul,
    Padded,
    Pass,
    Rebuild,
    SizeofError,
    StringError,
    Struct,
    Switch,
    len_,
    stream_read,
    stream_write,
    this,
)

from ._constants import (
    AUTH_CHALLENGE_SIZE,
    AUTH_RESPONSE_SIZE,
    HASH_SIZE,
    MAX_STRING_BYTES,
    SYNC,
    MsgType,
)
from ._crc import crc16_ccitt_false, crc32c


class NumpyArray(Construct):  # type: ignore[misc]
    """``count`` elements of ``element`` (a FormatField or a Struct of FormatFields), as a numpy array.

    ``count_field`` names the earlier field that holds the element count.
    """

    def __init__(self, count_field: str, element: Any) -> None:
        super().__init__()
        self.count_field = count_field
        self.element = element
        self.dtype = element_dtype(element)

    def _parse(self, stream: Any, context: Any, path: str) -> Any:
        count = int(context[self.count_field])
        data = stream_read(stream, count * self.dtype.itemsize, path)
        return np.frombuffer(data, dtype=self.dtype)

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        data = np.ascontiguousarray(obj, dtype=self.dtype).tobytes()
        stream_write(stream, data, len(data), path)
        return obj

    def _sizeof(self, context: Any, path: str) -> int:
        raise SizeofError("variable-length array", path=path)


class Utf8(Construct):  # type: ignore[misc]
    """A UTF-8 string of at most 255 bytes, after a u8 byte count. No terminator."""

    def _parse(self, stream: Any, context: Any, path: str) -> str:
        (length,) = stream_read(stream, 1, path)
        raw = stream_read(stream, length, path)
        try:
            return str(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise StringError(f"invalid UTF-8: {exc}", path=path) from exc

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        raw = str(obj).encode("utf-8")
        if len(raw) > MAX_STRING_BYTES:
            raise StringError(f"string of {len(raw)} bytes exceeds {MAX_STRING_BYTES}", path=path)
        stream_write(stream, bytes([len(raw)]) + raw, len(raw) + 1, path)
        return obj

    def _sizeof(self, context: Any, path: str) -> int:
        raise SizeofError("variable-length string", path=path)


class CountOf(Rebuild):  # type: ignore[misc]
    """An element-count field, rebuilt from the length of the array field ``array_name``."""

    def __init__(self, subcon: Any, array_name: str) -> None:
        super().__init__(subcon, len_(getattr(this, array_name)))
        self.array_name = array_name


def Reserved(size: int) -> Any:  # noqa: N802 - reads like the other construct declarations
    """Reserved bytes: sent as zero, ignored on receipt."""
    return Padded(size, Pass)


def _numpy_format(fmtstr: str) -> str:
    """numpy type string of a struct format: numpy reads ``<l`` as a C long (8 bytes on Linux), struct as
    4 bytes, so go through the standard size rather than the letter."""
    code = fmtstr[-1]
    kind = "f" if code in "efd" else ("i" if code.islower() else "u")
    return f"<{kind}{struct.calcsize(fmtstr)}"


def element_dtype(element: Any) -> np.dtype[Any]:
    """numpy dtype of a FormatField or of a Struct made only of named FormatFields."""
    if isinstance(element, FormatField):
        return np.dtype(_numpy_format(element.fmtstr))
    names: list[str] = []
    formats: list[str] = []
    for sub in element.subcons:
        if not isinstance(sub.subcon, FormatField):
            raise TypeError(f"array element field {sub.name!r} is not a fixed-width number")
        names.append(sub.name)
        formats.append(_numpy_format(sub.subcon.fmtstr))
    return np.dtype({"names": names, "formats": formats})


# -- records -------------------------------------------------------------------------------------------

CELL_STATE_RECORD = Struct(
    "cell" / Int16ul,
    "flags" / Int16ul,
    "voltage_uV" / Int32sl,
    "current_uA" / Int32sl,
    "temperature_mdegC" / Int32sl,
    "soc_ppm" / Int32ul,
    "soh_ppm" / Int32ul,
)

# -- payloads, one per MsgType -----------------------------------------------------------------------

SERVER_HELLO = Struct(
    "proto_max_major" / Int8ul,
    "proto_min_major" / Int8ul,
    "proto_minor" / Int8ul,
    "auth_required" / Int8ul,
    "seed" / Int64ul,
    "cell_count" / Int16ul,
    "n_freq" / CountOf(Int16ul, "freq_hz"),
    "step_period_us" / Int32ul,
    "auth_challenge" / Bytes(AUTH_CHALLENGE_SIZE),
    "model_hash" / Bytes(HASH_SIZE),
    "scenario_hash" / Bytes(HASH_SIZE),
    "server_version" / Utf8(),
    "model_id" / Utf8(),
    "scenario_id" / Utf8(),
    "freq_hz" / NumpyArray("n_freq", Float32l),
)

CLIENT_HELLO = Struct(
    "proto_min_major" / Int8ul,
    "proto_max_major" / Int8ul,
    "_reserved" / Reserved(2),
    "auth_response" / Bytes(AUTH_RESPONSE_SIZE),
    "client_name" / Utf8(),
)

SUBSCRIBE = Struct(
    "msg_mask" / Int32ul,
    "state_divider" / Int16ul,
    "eis_mode" / Int8ul,
    "_reserved" / Reserved(1),
    "n_cells" / CountOf(Int16ul, "cells"),
    "cells" / NumpyArray("n_cells", Int16ul),
)

HEARTBEAT = Struct(
    "t_sim_us" / Int64ul,
    "t_wall_us" / Int64ul,
    "frames_sent" / Int64ul,
    "frames_dropped" / Int64ul,
    "rx_bad_frames" / Int32ul,
    "lateness_p50_us" / Int32ul,
    "lateness_p99_us" / Int32ul,
    "lateness_max_us" / Int32ul,
    "queue_depth" / Int16ul,
    "sim_state" / Int8ul,
    "_reserved" / Reserved(1),
)

BYE = Struct(
    "reason" / Int16ul,
    "message" / Utf8(),
)

ERROR = Struct(
    "code" / Int16ul,
    "_reserved" / Reserved(2),
    "ref_seq" / Int32ul,
    "message" / Utf8(),
)

CELL_STATES = Struct(
    "t_sim_us" / Int64ul,
    "t_wall_us" / Int64ul,
    "step" / Int32ul,
    "n_cells" / CountOf(Int16ul, "records"),
    "_reserved" / Reserved(2),
    "records" / NumpyArray("n_cells", CELL_STATE_RECORD),
)

EIS_SPECTRUM = Struct(
    "t_sim_us" / Int64ul,
    "spectrum_id" / Int32ul,
    "sweep_duration_ms" / Int32ul,
    "cell" / Int16ul,
    "n_points" / CountOf(Int16ul, "freq_hz"),
    "cell_flags" / Int16ul,
    "_reserved" / Reserved(2),
    "soc_ppm" / Int32ul,
    "soh_ppm" / Int32ul,
    "temperature_mdegC" / Int32sl,
    "current_uA" / Int32sl,
    "kk_residual" / Float32l,
    "freq_hz" / NumpyArray("n_points", Float32l),
    "z_re_ohm" / NumpyArray("n_points", Float32l),
    "z_im_ohm" / NumpyArray("n_points", Float32l),
)

EIS_POINT = Struct(
    "t_sim_us" / Int64ul,
    "spectrum_id" / Int32ul,
    "cell" / Int16ul,
    "point_index" / Int16ul,
    "n_points" / Int16ul,
    "cell_flags" / Int16ul,
    "freq_hz" / Float32l,
    "z_re_ohm" / Float32l,
    "z_im_ohm" / Float32l,
)

FAULT_EVENT = Struct(
    "t_sim_us" / Int64ul,
    "fault_id" / Int32ul,
    "severity_ppm" / Int32ul,
    "kind" / Int8ul,
    "phase" / Int8ul,
    "n_cells" / CountOf(Int16ul, "cells"),
    "cells" / NumpyArray("n_cells", Int16ul),
)

CONTROL = Struct(
    "command" / Int8ul,
    "fault_kind" / Int8ul,
    "cell" / Int16ul,
    "aux" / Int32ul,
    "value" / Int64sl,
)

ACK = Struct(
    "ack_seq" / Int32ul,
    "command" / Int8ul,
    "_reserved" / Reserved(3),
    "result" / Int64sl,
)

NAK = Struct(
    "ack_seq" / Int32ul,
    "command" / Int8ul,
    "_reserved" / Reserved(1),
    "code" / Int16ul,
    "message" / Utf8(),
)

PAYLOADS: dict[MsgType, Any] = {
    MsgType.SERVER_HELLO: SERVER_HELLO,
    MsgType.CLIENT_HELLO: CLIENT_HELLO,
    MsgType.SUBSCRIBE: SUBSCRIBE,
    MsgType.HEARTBEAT: HEARTBEAT,
    MsgType.BYE: BYE,
    MsgType.ERROR: ERROR,
    MsgType.CELL_STATES: CELL_STATES,
    MsgType.EIS_SPECTRUM: EIS_SPECTRUM,
    MsgType.EIS_POINT: EIS_POINT,
    MsgType.FAULT_EVENT: FAULT_EVENT,
    MsgType.CONTROL: CONTROL,
    MsgType.ACK: ACK,
    MsgType.NAK: NAK,
}

# -- the frame -------------------------------------------------------------------------------------------

HEADER = Struct(
    "sync" / Const(SYNC),
    "version" / Int8ul,
    "msg_type" / Int8ul,
    "flags" / Int16ul,
    "payload_len" / Int16ul,
    "seq" / Int32ul,
)


def _checksum_of(lo: int, hi: Callable[[Any], int]) -> Callable[[Any], bytes]:
    def get(ctx: Any) -> bytes:
        data: bytes = ctx._io.getvalue()
        return data[lo : hi(ctx)]

    return get


FRAME = Struct(
    "header" / HEADER,
    "header_crc" / Checksum(Int16ul, crc16_ccitt_false, _checksum_of(0, lambda ctx: 12)),
    "payload" / FixedSized(this.header.payload_len, Switch(this.header.msg_type, PAYLOADS)),
    "frame_crc" / Checksum(Int32ul, crc32c, _checksum_of(0, lambda ctx: 14 + ctx.header.payload_len)),
)
"""The whole frame in construct, for reference and tests: slow, and it raises on the first bad byte.
Stream decoding with resync is ``FrameDecoder``'s job."""
