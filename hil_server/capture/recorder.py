"""Recording what a client receives and sends into a capture file."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import protocol as p
from hil_server.capture.format import DIR_RX, DIR_TX, CaptureError
from hil_server.capture.writer import CaptureWriter

if TYPE_CHECKING:
    from hil_server.client.client import HilClient


class RecordTap:
    """Receives raw bytes in both directions and writes the frames in them to a capture.

    Until ``attach()`` (the capture's metadata needs the SERVER_HELLO) records wait in memory with their
    times. ``limit``: received frames to record at most; ``done`` is set when it is reached or a write
    fails (``error``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.t0 = clock()
        self.t0_unix_us = time.time_ns() // 1000
        self.rx_split = p.FrameSplitter()
        self.tx_split = p.FrameSplitter()
        self.rx_frames = 0
        self.tx_frames = 0
        self.limit: int | None = None
        self.error: CaptureError | None = None
        self.done = asyncio.Event()
        self._writer: CaptureWriter | None = None
        self._pending: list[tuple[bytes, int, int]] = []

    def attach(self, writer: CaptureWriter) -> None:
        self._writer = writer
        pending, self._pending = self._pending, []
        for frame, direction, t_us in pending:
            self._write(frame, direction, t_us)

    def detach(self) -> None:
        self._writer = None

    def received(self, data: bytes | bytearray | memoryview) -> None:
        t_us = self._now_us()
        for frame in self.rx_split.feed(data):
            if self.limit is not None and self.rx_frames >= self.limit:
                break
            self.rx_frames += 1
            self._add(frame, DIR_RX, t_us)
            if self.limit is not None and self.rx_frames >= self.limit:
                self.done.set()

    def sent(self, data: bytes | bytearray | memoryview) -> None:
        t_us = self._now_us()
        for frame in self.tx_split.feed(data):
            self.tx_frames += 1
            self._add(frame, DIR_TX, t_us)

    def _now_us(self) -> int:
        return round((self.clock() - self.t0) * 1e6)

    def _add(self, frame: bytes, direction: int, t_us: int) -> None:
        if self.error is not None:
            return
        if self._writer is None:
            self._pending.append((frame, direction, t_us))
        else:
            self._write(frame, direction, t_us)

    def _write(self, frame: bytes, direction: int, t_us: int) -> None:
        assert self._writer is not None
        try:
            self._writer.write(frame, direction=direction, t_us=t_us)
        except CaptureError as exc:
            self.error = exc
            self.done.set()


class _TapDecoder(p.FrameDecoder):
    """The client's decoder, which also shows every received chunk to the tap before decoding it."""

    def __init__(self, tap: RecordTap) -> None:
        super().__init__()
        self._tap = tap

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._tap.received(data)
        super().feed(data)


class _TapWriter:
    """Wraps the client's StreamWriter: every write is shown to the tap; the rest is delegated."""

    def __init__(self, inner: asyncio.StreamWriter, tap: RecordTap) -> None:
        self._inner = inner
        self._tap = tap

    def write(self, data: bytes) -> None:
        self._tap.sent(data)
        self._inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def recording_client_class() -> type[HilClient]:
    from hil_server.client.client import HilClient

    class RecordingClient(HilClient):
        """HilClient whose received and sent bytes also go to ``self.tap``."""

        def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
            super().__init__(reader, writer, name)
            self.tap = RecordTap()
            self.decoder = _TapDecoder(self.tap)
            self.writer = cast(asyncio.StreamWriter, _TapWriter(writer, self.tap))

    return RecordingClient
