"""Fast payload codec derived mechanically from the construct declarations in ``_schema.py``.

construct parses a 60-point spectrum payload in ~20 us (and ~80 us with per-element ``Array``); this codec
walks each declaration once at import, merges runs of fixed-width fields into one ``struct.Struct`` and maps
arrays to ``np.frombuffer``, so a payload costs a few microseconds. It accepts only the small vocabulary the
schema uses and fails at import on anything else, and the tests check it byte for byte against construct.
"""

from __future__ import annotations

import binascii
import dataclasses
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
from construct import Bytes, FormatField, Padded, Pass
from crc32c import crc32c as _crc32c_fast

from ._constants import (
    HEADER_SIZE,
    MAX_PAYLOAD_SIZE,
    PROTOCOL_VERSION,
    MsgType,
)
from ._crc import CRC16_INIT
from ._errors import LocalProtocolError
from ._messages import CELL_STATE_DTYPE, MESSAGE_CLASSES, Message
from ._schema import PAYLOADS, CountOf, NumpyArray, Utf8

HEADER_STRUCT = struct.Struct("<2sBBHHI")
"""sync, version, msg_type, flags, payload_len, seq: the 12 bytes the header CRC covers."""
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class MalformedPayloadError(Exception):
    """Raised by ``decode_payload``; the decoder turns it into a RemoteProtocolError."""


@dataclasses.dataclass(frozen=True)
class _Fixed:
    st: struct.Struct
    names: tuple[str, ...]
    """Value names in unpack order (reserved bytes are pad bytes and yield no value)."""
    counts: tuple[tuple[int, str], ...]
    """(index into names, array field) for element-count fields, rebuilt on encode."""


@dataclasses.dataclass(frozen=True)
class _String:
    name: str


@dataclasses.dataclass(frozen=True)
class _Array:
    names: tuple[str, ...]
    """Consecutive arrays that share a count and a dtype are read with one ``np.frombuffer``."""
    count_name: str
    dtype: np.dtype[Any]


_Step = _Fixed | _String | _Array


@dataclasses.dataclass(frozen=True)
class PayloadCodec:
    msg_type: MsgType
    cls: type[Message]
    steps: tuple[_Step, ...]
    fields: tuple[str, ...]
    """The message class's constructor arguments, in order."""
    min_size: int
    encode: Callable[[Message], bytes] = dataclasses.field(repr=False)
    decode: Callable[[bytes | memoryview], Message] = dataclasses.field(repr=False)


def _fixed_format(subcon: Any) -> str | None:
    if isinstance(subcon, FormatField):
        return str(subcon.fmtstr[1:])
    if isinstance(subcon, Bytes) and isinstance(subcon.length, int):
        return f"{subcon.length}s"
    if isinstance(subcon, Padded) and subcon.subcon is Pass and isinstance(subcon.length, int):
        return f"{subcon.length}x"
    return None


def _plan(declaration: Any) -> tuple[tuple[_Step, ...], tuple[str, ...], int]:
    steps: list[_Step] = []
    fields: list[str] = []
    fmt = "<"
    names: list[str] = []
    counts: list[tuple[int, str]] = []
    min_size = 0

    def flush() -> None:
        nonlocal fmt, names, counts, min_size
        if fmt != "<":
            st = struct.Struct(fmt)
            steps.append(_Fixed(st, tuple(names), tuple(counts)))
            min_size += st.size
        fmt, names, counts = "<", [], []

    for sub in declaration.subcons:
        name, subcon = sub.name, sub.subcon
        if isinstance(subcon, CountOf):
            piece = _fixed_format(subcon.subcon)
            if piece is None:
                raise TypeError(f"count field {name!r} must be a fixed-width integer")
            counts.append((len(names), subcon.array_name))
            names.append(name)
            fmt += piece
            continue
        piece = _fixed_format(subcon)
        if piece is not None:
            fmt += piece
            if not piece.endswith("x"):
                names.append(name)
                fields.append(name)
            continue
        flush()
        if isinstance(subcon, Utf8):
            steps.append(_String(name))
            min_size += 1
        elif isinstance(subcon, NumpyArray):
            prev = steps[-1] if steps else None
            if isinstance(prev, _Array) and (prev.count_name, prev.dtype) == (
                subcon.count_field,
                subcon.dtype,
            ):
                steps[-1] = _Array((*prev.names, name), prev.count_name, prev.dtype)
            else:
                steps.append(_Array((name,), subcon.count_field, subcon.dtype))
        else:
            raise TypeError(f"field {name!r}: {type(subcon).__name__} is outside the codec's vocabulary")
        fields.append(name)
    flush()
    return tuple(steps), tuple(fields), min_size


def _make_codec(msg_type: MsgType, declaration: Any) -> PayloadCodec:
    cls = MESSAGE_CLASSES[msg_type]
    steps, fields, min_size = _plan(declaration)
    class_fields = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    if class_fields != fields:
        raise TypeError(f"{cls.__name__} fields {class_fields} do not match the schema {fields}")

    new = object.__new__
    setters = tuple((name, getattr(cls, name).__set__) for name in fields)

    def encode(msg: Message) -> bytes:
        parts: list[bytes] = []
        for step in steps:
            if isinstance(step, _Fixed):
                values: list[Any] = [None] * len(step.names)
                for i, name in enumerate(step.names):
                    values[i] = getattr(msg, name, None)
                for i, array_name in step.counts:
                    values[i] = len(getattr(msg, array_name))
                try:
                    parts.append(step.st.pack(*values))
                except struct.error as exc:
                    raise LocalProtocolError(
                        f"{cls.__name__}: a field is out of its wire range ({exc}): "
                        + ", ".join(f"{n}={v!r}" for n, v in zip(step.names, values, strict=True))
                    ) from exc
            elif isinstance(step, _String):
                raw = getattr(msg, step.name).encode("utf-8")
                if len(raw) > 255:
                    raise LocalProtocolError(f"{cls.__name__}.{step.name}: {len(raw)} bytes exceeds 255")
                parts.append(bytes((len(raw),)))
                parts.append(raw)
            else:
                for name in step.names:
                    parts.append(np.ascontiguousarray(getattr(msg, name), dtype=step.dtype).tobytes())
        return b"".join(parts)

    def decode(buf: bytes | memoryview) -> Message:
        values: dict[str, Any] = {}
        off = 0
        end = len(buf)
        for step in steps:
            if isinstance(step, _Fixed):
                if off + step.st.size > end:
                    raise MalformedPayloadError(f"{cls.__name__}: payload of {end} bytes is too short")
                values.update(zip(step.names, step.st.unpack_from(buf, off), strict=True))
                off += step.st.size
            elif isinstance(step, _String):
                if off >= end or off + 1 + buf[off] > end:
                    raise MalformedPayloadError(f"{cls.__name__}.{step.name}: string runs past the payload")
                n = buf[off]
                try:
                    values[step.name] = bytes(buf[off + 1 : off + 1 + n]).decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise MalformedPayloadError(f"{cls.__name__}.{step.name}: invalid UTF-8") from exc
                off += 1 + n
            else:
                count = values[step.count_name]
                n_arrays = len(step.names)
                nbytes = count * step.dtype.itemsize * n_arrays
                if off + nbytes > end:
                    raise MalformedPayloadError(
                        f"{cls.__name__}.{step.names[0]}: {count} elements run past the payload"
                    )
                block = np.frombuffer(buf, dtype=step.dtype, count=count * n_arrays, offset=off)
                if n_arrays == 1:
                    values[step.names[0]] = block
                else:
                    for i, name in enumerate(step.names):
                        values[name] = block[i * count : (i + 1) * count]
                off += nbytes
        # Bytes after the known fields belong to a newer minor version and are ignored (SPEC.md 3.3).
        # Decoded values already have their wire types and read-only arrays (np.frombuffer over bytes),
        # so the object is filled in directly instead of re-validating through __init__.
        msg = new(cls)
        for name, setter in setters:
            setter(msg, values[name])
        return msg

    return PayloadCodec(msg_type, cls, steps, fields, min_size, encode, decode)


CODECS: dict[int, PayloadCodec] = {int(t): _make_codec(t, d) for t, d in PAYLOADS.items()}

if PAYLOADS[MsgType.CELL_STATES].subcons[-1].subcon.dtype != CELL_STATE_DTYPE:
    raise TypeError("CELL_STATE_DTYPE differs from the CELL_STATE_RECORD declaration")


def fixed_payload_size(msg_type: int) -> int:
    """Bytes of a payload with its arrays empty and its strings zero-length (SPEC.md section 4): what a frame
    of this type costs before its variable part."""
    return CODECS[MsgType(msg_type)].min_size


def encode_payload(msg: Message) -> bytes:
    return CODECS[msg.MSG_TYPE].encode(msg)


def decode_payload(msg_type: int, payload: bytes | memoryview) -> Message:
    """Decode one payload; raises ``MalformedPayloadError`` (or KeyError for an unknown type)."""
    return CODECS[msg_type].decode(payload)


def encode_frame(msg: Message, seq: int, flags: int = 0, version: int = PROTOCOL_VERSION) -> bytes:
    """One complete frame: header, header CRC, payload, frame CRC."""
    return frame_payload(msg.MSG_TYPE, encode_payload(msg), seq, flags, version)


def frame_payload(
    msg_type: int, payload: bytes, seq: int, flags: int = 0, version: int = PROTOCOL_VERSION
) -> bytes:
    """Frame an already encoded payload: a server encodes a message once and frames it per client (each
    client has its own sequence numbers)."""
    if len(payload) > MAX_PAYLOAD_SIZE:
        raise LocalProtocolError(
            f"type 0x{msg_type:02x} payload of {len(payload)} bytes exceeds the maximum {MAX_PAYLOAD_SIZE}"
        )
    try:
        head = HEADER_STRUCT.pack(b"\xe1\x5a", version, msg_type, flags, len(payload), seq)
    except struct.error as exc:
        raise LocalProtocolError(f"header field out of range: seq={seq} flags={flags} ({exc})") from exc
    # the CRC functions of _crc.py, called directly: this runs once per frame per client
    body = head + _U16.pack(binascii.crc_hqx(head, CRC16_INIT)) + payload
    return body + _U32.pack(_crc32c_fast(body))


assert HEADER_STRUCT.size + 2 == HEADER_SIZE
