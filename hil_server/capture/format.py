"""Session captures: an append-only, versioned file of protocol frames with their times (``CAPTURE.md``):
the format's constants and its reader here, the writer in ``writer.py``.

    with CaptureWriter("session.eiscap", meta) as cap:      # meta: JSON object, e.g. hello_meta(hello)
        cap.write(frame_bytes, direction=DIR_RX)              # one whole protocol frame, as on the wire
    capture = open_capture("session.eiscap")                 # header checked: magic, major version, CRCs
    for record in iter_records(capture):                     # streams; skips damage (capture.damage)
        ...
    capture.truncated_bytes                                  # bytes after the last complete record

Layout (little-endian; ``CAPTURE.md`` beside this file is normative)::

    file    = header meta meta_crc record*
    header  = magic[8] major:u16 minor:u16 flags:u32 meta_len:u32 header_crc:u32      (24 bytes)
    record  = length:u32 kind:u8 direction:u8 reserved:u16 t_us:u64 data[length] crc:u32

Every record carries its own CRC-32C, so a write cut short by a crash is detected, never misparsed. Each
``write()`` hands the whole record to the OS in one ``os.write`` before it returns: a killed process
(``kill -9``, a crash) loses no record whose ``write()`` returned. What an OS crash or power loss can lose is
bounded by ``sync_interval_s`` (fsync) and by ``flush()``/``close()``.

This module imports only the standard library, ``crc32c`` and structlog: no numpy, no protocol package, so a
writer in a small subprocess or a replay tool starts fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import crc32c as _crc32c
import structlog

log = structlog.get_logger(__name__)

MAGIC = b"\x89EHC\r\n\x1a\n"
"""8 bytes. 0x89 catches 7-bit transfers, CR LF catches newline translation, 0x1A stops DOS ``type``."""
FORMAT_MAJOR = 1
FORMAT_MINOR = 0
MAX_META_BYTES = 1 << 20
"""Upper bound of the JSON metadata: a corrupt length never makes a reader allocate more."""

HEADER = struct.Struct("<8sHHII")
"""magic, major, minor, flags, meta_len: the 20 bytes the header CRC covers."""
_U32 = struct.Struct("<I")
RECORD_HEADER = struct.Struct("<IBBHQ")
"""length, kind, direction, reserved, t_us: 16 bytes, then ``length`` data bytes, then the CRC-32C."""
RECORD_OVERHEAD = RECORD_HEADER.size + _U32.size

KIND_FRAME = 1
"""The only record kind of format 1.0: ``data`` is one complete protocol frame."""
DIR_RX = 0
"""Frame received by the recorder (server->client direction when a client records)."""
DIR_TX = 1
"""Frame sent by the recorder (a server recording its own stream writes DIR_TX)."""

PROTOCOL_SYNC = b"\xe1\x5a"
"""protocol.SYNC, repeated here so that this module does not import numpy (a test checks they agree)."""
FRAME_OVERHEAD = 18
"""Protocol frame header (14) + frame CRC (4)."""
MAX_RECORD_DATA = FRAME_OVERHEAD + 0xFFFF
"""The longest frame the protocol envelope can express (u16 payload_len): any protocol version fits."""


class CaptureError(Exception):
    """A capture cannot be written or read: names the file, the offset and what was wrong."""


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    t_us: int
    """Microseconds since the capture start, on the recorder's monotonic clock."""
    direction: int
    """DIR_RX or DIR_TX."""
    frame: bytes
    """One complete protocol frame (header, payload, CRC) exactly as it was on the wire."""


def _crc(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    return int(_crc32c.crc32c(data, value))


@dataclasses.dataclass(frozen=True, slots=True)
class DamagedSpan:
    """Bytes of a capture that hold no valid record: ``iter_records`` skipped them (CAPTURE.md 6.1)."""

    offset: int
    """File offset of the first byte that is not part of a valid record."""
    nbytes: int
    """Bytes skipped, up to the next valid record or the end of the file."""
    records_lost: int
    """Records the span held, counted by their intact record and frame headers; at least 1."""
    reason: str
    """Why the record at ``offset`` is not valid (CRC mismatch, impossible length, cut off)."""
    tail: bool = False
    """The span is a torn tail: the last record was cut short (a crash while writing), nothing follows."""
    exact: bool = True
    """``records_lost`` is exact: the records counted fill the span, each ending where the next begins.
    False when part of the span is unrecognisable (e.g. zeroed): it may have held more records."""

    def describe(self) -> str:
        where = "torn tail" if self.tail else "damaged span"
        return (
            f"{where} at offset {self.offset}: {self.nbytes} bytes, {lost_count([self])} record(s) lost "
            f"({self.reason})"
        )


def lost_count(spans: Sequence[DamagedSpan]) -> str:
    """The records ``spans`` lost, as text: ``3``, or ``at least 3`` when a span's count is a lower bound."""
    total = sum(span.records_lost for span in spans)
    return str(total) if all(span.exact for span in spans) else f"at least {total}"


@dataclasses.dataclass
class Capture:
    """An opened capture: header fields. ``iter_records`` fills in what it finds on the way."""

    path: Path
    version: int
    """Format major version (the only one a reader must understand)."""
    meta: dict[str, Any]
    truncated_bytes: int = 0
    """Bytes of a torn tail after the last complete record (set by ``iter_records``; 0 for a cleanly
    ended file)."""
    minor: int = 0
    data_offset: int = 0
    """Offset of the first record."""
    stop_reason: str | None = None
    """Why the last ``iter_records`` found no record at the end of the file (a torn tail; None: it read
    to the end)."""
    records_read: int = 0
    """Complete records the last ``iter_records`` returned (record kinds it skipped included)."""
    damage: list[DamagedSpan] = dataclasses.field(default_factory=list)
    """Every span of bytes the last ``iter_records`` skipped, in file order (a torn tail included)."""

    @property
    def skipped(self) -> list[DamagedSpan]:
        """The damaged spans that are not a torn tail: records lost to damage, not to a crash."""
        return [span for span in self.damage if not span.tail]

    @property
    def records_lost(self) -> int:
        return sum(span.records_lost for span in self.damage)

    def damage_summary(self) -> str:
        """One line: the damaged spans (first three and a count), or '' if there are none."""
        if not self.damage:
            return ""
        shown = "; ".join(span.describe() for span in self.damage[:3])
        more = f"; and {len(self.damage) - 3} more span(s)" if len(self.damage) > 3 else ""
        total = sum(span.nbytes for span in self.damage)
        return (
            f"{self.path}: {len(self.damage)} damaged span(s), {total} bytes, "
            f"{lost_count(self.damage)} record(s) lost: {shown}{more}"
        )


def _describe_start(head: bytes) -> str:
    if head[:2] == PROTOCOL_SYNC:
        return " (it starts with a protocol sync word: a raw byte stream? use `eis-hil decode`)"
    if not head:
        return " (the file is empty)"
    return f" (it starts with {head[:8].hex(' ')})"


def open_capture(path: str | Path) -> Capture:
    """Read and check the header. Raises CaptureError: not a capture, unknown major version, a header cut
    off or corrupt, metadata that is not a JSON object."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(HEADER.size + _U32.size)
            if len(head) < len(MAGIC) and head and MAGIC.startswith(head):
                raise CaptureError(f"{path}: capture header cut off at {len(head)} bytes (needs 24)")
            if head[: len(MAGIC)] != MAGIC:
                raise CaptureError(
                    f"{path}: not an eis-hil capture: expected magic {MAGIC.hex(' ')}{_describe_start(head)}"
                )
            if len(head) < 10:
                raise CaptureError(f"{path}: capture header cut off at {len(head)} bytes (needs 24)")
            major = int.from_bytes(head[8:10], "little")
            if major != FORMAT_MAJOR:
                raise CaptureError(
                    f"{path}: capture format version {major}.x is not supported: this eis-hil reads "
                    f"version {FORMAT_MAJOR}.x (a newer eis-hil wrote it? upgrade)"
                )
            if len(head) < HEADER.size + _U32.size:
                raise CaptureError(
                    f"{path}: capture header cut off at {len(head)} bytes (needs 24): the writer stopped "
                    f"before anything was recorded"
                )
            _, _, minor, _flags, meta_len = HEADER.unpack_from(head)
            (stored,) = _U32.unpack_from(head, HEADER.size)
            if _crc(head[: HEADER.size]) != stored:
                raise CaptureError(f"{path}: capture header corrupt (header CRC mismatch at offset 20)")
            if meta_len > MAX_META_BYTES:
                raise CaptureError(f"{path}: metadata length {meta_len} exceeds {MAX_META_BYTES}")
            meta_bytes = f.read(meta_len)
            meta_crc = f.read(_U32.size)
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read capture: {exc}") from exc
    offset = HEADER.size + _U32.size
    if len(meta_bytes) < meta_len or len(meta_crc) < _U32.size:
        raise CaptureError(
            f"{path}: capture metadata cut off at offset {offset + len(meta_bytes) + len(meta_crc)} "
            f"(needs {meta_len} bytes + CRC): the writer stopped before anything was recorded"
        )
    if _crc(meta_bytes) != _U32.unpack(meta_crc)[0]:
        raise CaptureError(f"{path}: capture metadata corrupt (CRC mismatch at offset {offset + meta_len})")
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CaptureError(f"{path}: capture metadata at offset {offset} is not UTF-8 JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise CaptureError(f"{path}: capture metadata is {type(meta).__name__}, expected a JSON object")
    return Capture(path, major, meta, 0, minor, offset + meta_len + _U32.size)


@dataclasses.dataclass(frozen=True, slots=True)
class RawRecord:
    """A valid record of any kind, as ``scan_records`` finds it: where it is and its fields."""

    offset: int
    kind: int
    direction: int
    t_us: int
    data: bytes

    @property
    def size(self) -> int:
        return RECORD_OVERHEAD + len(self.data)

    def to_bytes(self) -> bytes:
        """The record exactly as in the file (its fields and CRC are valid)."""
        head = RECORD_HEADER.pack(len(self.data), self.kind, self.direction, 0, self.t_us)
        return head + self.data + _U32.pack(_crc(self.data, _crc(head)))


def _read_at(fd: int, offset: int) -> tuple[RawRecord | None, str, bool]:
    """The record at ``offset``: (record, '', False) if it is valid, else (None, why not, whether the end of
    the file cuts it off)."""
    head = os.pread(fd, RECORD_HEADER.size, offset)
    if len(head) < RECORD_HEADER.size:
        return None, f"record header cut off ({len(head)} of {RECORD_HEADER.size} bytes): a torn write", True
    length, kind, direction, _reserved, t_us = RECORD_HEADER.unpack(head)
    if length > MAX_RECORD_DATA:
        return None, f"record length {length} exceeds {MAX_RECORD_DATA}: corrupt record header", False
    body = os.pread(fd, length + _U32.size, offset + RECORD_HEADER.size)
    if len(body) < length + _U32.size:
        got = RECORD_HEADER.size + len(body)
        return None, f"record cut off ({got} of {RECORD_OVERHEAD + length} bytes): a torn write", True
    data = body[:length]
    (stored,) = _U32.unpack_from(body, length)
    computed = _crc(data, _crc(head))
    if computed != stored:
        reason = f"record CRC mismatch (stored 0x{stored:08x}, computed 0x{computed:08x}): corrupt record"
        return None, reason, False
    return RawRecord(offset, kind, direction, t_us, data), "", False


_SCAN_CHUNK = 1 << 20


def _frame_record_starts(fd: int, start: int, end: int) -> Iterator[int]:
    """Offsets >= ``start`` at which a FRAME record could begin: 16 bytes before each protocol sync word,
    where the record header's length and kind agree with the frame header that follows. Cheap: no CRC."""
    base = start + RECORD_HEADER.size  # the frame's sync word is 16 bytes into its record
    while base < end:
        chunk = os.pread(fd, _SCAN_CHUNK, base)
        i = chunk.find(PROTOCOL_SYNC)
        while i >= 0:
            at = base + i - RECORD_HEADER.size
            head = os.pread(fd, RECORD_HEADER.size + 8, at)
            if len(head) == RECORD_HEADER.size + 8:
                (length,) = _U32.unpack_from(head)
                payload_len = int.from_bytes(head[22:24], "little")
                if head[4] == KIND_FRAME and length == FRAME_OVERHEAD + payload_len:
                    yield at
            i = chunk.find(PROTOCOL_SYNC, i + 1)
        if len(chunk) < _SCAN_CHUNK:
            return
        base += len(chunk) - 1  # a sync word may straddle two chunks: the next one starts at its first byte


def _resync(fd: int, start: int, end: int) -> RawRecord | None:
    """The first valid FRAME record at an offset >= ``start`` (CAPTURE.md 6.1), or None."""
    for at in _frame_record_starts(fd, start, end):
        record, _, _ = _read_at(fd, at)
        if record is not None:
            return record
    return None


def _ends_at(fd: int, at: int, end: int, *, tail: bool) -> bool:
    """Whether the record at ``at`` ends at ``end`` by its record length or by its frame header's payload
    length (one of the two may be the damaged field); at a torn tail, whether it runs past ``end``."""
    head = os.pread(fd, RECORD_HEADER.size + 8, at)
    ends = []
    if len(head) >= _U32.size:
        ends.append(at + RECORD_OVERHEAD + _U32.unpack_from(head)[0])
    if len(head) == RECORD_HEADER.size + 8:
        ends.append(at + RECORD_OVERHEAD + FRAME_OVERHEAD + int.from_bytes(head[22:24], "little"))
    return any(e == end or (tail and e > end) for e in ends)


def _count_lost(fd: int, start: int, stop: int, *, tail: bool) -> tuple[int, bool]:
    """Records a damaged span held: FRAME record starts whose record and frame headers agree, plus the
    record at ``start`` if its own headers were hit (a span starts where a record was expected); and
    whether that count is exact (the records counted fill the span, ``_ends_at``)."""
    starts = [at for at in _frame_record_starts(fd, start, stop) if at < stop]
    first = [] if starts and starts[0] == start else [start]
    records = [*first, *starts]
    bounds = [*records[1:], stop]
    exact = all(
        _ends_at(fd, at, end, tail=tail and end == stop) for at, end in zip(records, bounds, strict=True)
    )
    return len(records), exact


def scan_records(capture: Capture) -> Iterator[RawRecord]:
    """Every valid record in file order, whatever its kind. After a record that is not valid the reader
    resynchronises on the next valid FRAME record (CAPTURE.md section 6.1): each skipped span is appended
    to ``capture.damage`` and logged; a span that reaches the end of the file after a cut-off record is a
    torn tail (``capture.truncated_bytes``, ``capture.stop_reason``)."""
    capture.truncated_bytes = 0
    capture.stop_reason = None
    capture.records_read = 0
    capture.damage = []
    path = capture.path
    try:
        f = path.open("rb")
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read capture: {exc}") from exc
    with f:
        fd = f.fileno()
        end = os.fstat(fd).st_size
        offset = capture.data_offset
        while offset < end:
            record, reason, cut = _read_at(fd, offset)
            if record is not None:
                capture.records_read += 1
                offset += record.size
                yield record
                continue
            found = _resync(fd, offset + 1, end)
            stop = end if found is None else found.offset
            tail = found is None and cut
            lost, exact = _count_lost(fd, offset, stop, tail=tail)
            span = DamagedSpan(offset, stop - offset, lost, reason, tail=tail, exact=exact)
            capture.damage.append(span)
            if span.tail:
                capture.truncated_bytes = span.nbytes
                capture.stop_reason = f"{path}: offset {offset}: {reason}; {span.nbytes} bytes not read"
            log.warning(
                "capture ends early" if span.tail else "capture damaged: skipped to the next valid record",
                path=str(path),
                offset=offset,
                skipped_bytes=span.nbytes,
                records_lost=lost_count([span]),
                reason=reason,
            )
            if found is None:
                return
            offset = found.offset


def iter_records(capture: Capture) -> Iterator[Record]:
    """The complete FRAME records in file order (other kinds are a later minor version's: skipped). Damage
    is skipped as ``scan_records`` says; ``capture.damage`` lists it when the iteration ends."""
    for raw in scan_records(capture):
        if raw.kind == KIND_FRAME:
            yield Record(raw.t_us, raw.direction, raw.data)


__all__ = [
    "DIR_RX",
    "DIR_TX",
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "KIND_FRAME",
    "MAGIC",
    "Capture",
    "CaptureError",
    "DamagedSpan",
    "RawRecord",
    "Record",
    "iter_records",
    "lost_count",
    "open_capture",
    "scan_records",
]
