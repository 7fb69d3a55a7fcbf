"""Writing a session capture (``CAPTURE.md``): ``CaptureWriter`` appends whole protocol frames to a new file.

Split from ``format.py`` (the format's constants and its reader), whose standard-library-only rule it keeps:
no numpy, no protocol package, so a writer in a small subprocess starts fast.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from .format import (
    _U32,
    DIR_RX,
    DIR_TX,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    FRAME_OVERHEAD,
    HEADER,
    KIND_FRAME,
    MAGIC,
    MAX_META_BYTES,
    PROTOCOL_SYNC,
    RECORD_HEADER,
    CaptureError,
    _crc,
)

log = structlog.get_logger(__name__)


def _header_bytes(meta: Mapping[str, Any], path: Path) -> bytes:
    try:
        meta_json = json.dumps(dict(meta), ensure_ascii=False, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CaptureError(f"{path}: metadata is not a JSON object: {exc}") from exc
    meta_bytes = meta_json.encode("utf-8")
    if len(meta_bytes) > MAX_META_BYTES:
        raise CaptureError(f"{path}: metadata is {len(meta_bytes)} bytes, at most {MAX_META_BYTES} allowed")
    head = HEADER.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, 0, len(meta_bytes))
    return head + _U32.pack(_crc(head)) + meta_bytes + _U32.pack(_crc(meta_bytes))


def _fsync_dir(path: Path) -> None:
    """Make the new file's name durable too (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CaptureWriter:
    """Appends frames to a new capture file. Not thread-safe: one writer per file, one thread.

    ``clock`` (seconds, monotonic) gives the default ``t_us`` of a record, relative to the moment the
    writer was created, and paces ``sync_interval_s``. ``sync_interval_s``: fsync at the first write at
    least that long after the previous fsync (None: only on ``flush()`` and ``close()``). An existing file
    is refused unless ``overwrite``.

    After an OS error (disk full, EIO) the file is cut back to its last complete record, the writer is
    closed and every later call raises ``CaptureError``: what was written before stays readable.
    """

    def __init__(
        self,
        path: str | Path,
        meta: Mapping[str, Any],
        *,
        clock: Callable[[], float] = time.monotonic,
        sync_interval_s: float | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.records = 0
        """Records written (and handed to the OS) so far."""
        self.bytes_written = 0
        """Size of the file so far: header, metadata and every complete record."""
        self._clock = clock
        self._t0 = clock()
        self._sync_interval_s = sync_interval_s
        self._last_sync = self._t0
        self._failed: str | None = None
        header = _header_bytes(meta, self.path)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            self._fd: int | None = os.open(self.path, flags | getattr(os, "O_BINARY", 0), 0o644)
        except FileExistsError:
            raise CaptureError(f"{self.path}: file exists; refusing to overwrite a capture") from None
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot create capture: {exc.strerror} ({exc})") from exc
        try:
            self._append(header, what="the header")
            os.fsync(self._fd)
        except (CaptureError, OSError) as exc:
            # Nothing recorded yet: leave no file that every reader would reject.
            self._abandon()
            self.path.unlink(missing_ok=True)
            if isinstance(exc, CaptureError):
                raise
            raise CaptureError(f"{self.path}: cannot write the header: {exc}") from exc
        _fsync_dir(self.path)

    # -- public API ----------------------------------------------------------------------------------

    def write(
        self, frame: bytes | bytearray | memoryview, *, direction: int = DIR_RX, t_us: int | None = None
    ) -> None:
        """Append one protocol frame. On return the record is in the OS: a process crash cannot lose it."""
        fd = self._check_open()
        data = bytes(frame)
        self._check_frame(data)
        if direction not in (DIR_RX, DIR_TX):
            raise ValueError(f"direction must be DIR_RX (0) or DIR_TX (1), got {direction}")
        now = self._clock()
        if t_us is None:
            t_us = round((now - self._t0) * 1e6)
        if not 0 <= t_us < 1 << 64:
            raise ValueError(f"t_us must be in 0..2**64-1 (microseconds since the capture start), got {t_us}")
        head = RECORD_HEADER.pack(len(data), KIND_FRAME, direction, 0, t_us)
        crc = _crc(data, _crc(head))
        self._append(head + data + _U32.pack(crc), what=f"record {self.records}")
        self.records += 1
        if self._sync_interval_s is not None and now - self._last_sync >= self._sync_interval_s:
            self._sync(fd, now)

    def flush(self) -> None:
        """Make every record written so far durable (fsync): it survives an OS crash or power loss."""
        self._sync(self._check_open(), self._clock())

    def close(self) -> None:
        """fsync and close; idempotent. Raises CaptureError if the final fsync fails (records stay)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        except OSError as exc:
            raise CaptureError(f"{self.path}: fsync at close failed: {exc}") from exc
        finally:
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------------

    def _check_open(self) -> int:
        if self._fd is None:
            reason = f" after an error: {self._failed}" if self._failed else ""
            raise CaptureError(f"{self.path}: capture writer is closed{reason}")
        return self._fd

    def _check_frame(self, data: bytes) -> None:
        if len(data) < FRAME_OVERHEAD or data[:2] != PROTOCOL_SYNC:
            raise ValueError(
                f"not a protocol frame: {len(data)} bytes starting {data[:2].hex()} "
                f"(expected at least {FRAME_OVERHEAD} bytes starting e15a)"
            )
        payload_len = int.from_bytes(data[6:8], "little")
        if len(data) != FRAME_OVERHEAD + payload_len:
            raise ValueError(
                f"not one whole protocol frame: {len(data)} bytes, but its header announces "
                f"{FRAME_OVERHEAD + payload_len} ({payload_len} payload bytes)"
            )

    def _append(self, data: bytes, *, what: str) -> None:
        """One record (or the header) in as few ``os.write`` calls as the OS allows. On an error the file is
        cut back to the last complete record, so a reader never even sees a torn tail from it."""
        fd = self._check_open()
        view = memoryview(data)
        start = self.bytes_written
        try:
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError as exc:
            detail = f"{exc.strerror or exc} (errno {errno.errorcode.get(exc.errno or 0, exc.errno)})"
            message = f"{self.path}: cannot write {what} at offset {start}: {detail}"
            try:
                os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
            except OSError as trunc_exc:
                message += f"; cutting the torn record off failed too ({trunc_exc}): readers will skip it"
            self._failed = message
            self._abandon()
            log.error("capture write failed", path=str(self.path), offset=start, error=detail)
            raise CaptureError(message + f"; the {self.records} records written before are intact") from exc
        self.bytes_written = start + len(data)

    def _sync(self, fd: int, now: float) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            self._failed = f"fsync failed: {exc}"
            self._abandon()
            raise CaptureError(f"{self.path}: fsync failed: {exc}") from exc
        self._last_sync = now

    def _abandon(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)


__all__ = ["CaptureWriter"]
