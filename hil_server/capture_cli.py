"""``eis-hil record`` (a client that writes every frame it receives to a capture) and ``eis-hil export``.

The recorder is ``HilClient`` with two taps: its decoder's ``feed()`` also hands each received chunk to a
``FrameSplitter``, which cuts the byte stream into the raw frames (SPEC.md section 5, steps 1-4: both CRCs
valid) exactly as they were on the wire; its writer's ``write()`` does the same for what it sends. So the
capture holds the received bytes themselves, not a re-encoding of decoded messages (``protocol.Frame`` does
not keep its bytes, and re-encoding would zero reserved bytes and drop fields a newer server appended).
Each frame is stamped with the time its chunk was read from the socket.

Module-level imports stay light: the parser is built on every ``eis-hil`` invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import structlog

import protocol as p

from ._cli_util import StatusLine, cell_index, read_secret
from .capture import DIR_RX, DIR_TX, CaptureError, CaptureWriter, hello_meta

if TYPE_CHECKING:
    from .client import HilClient

log = structlog.get_logger(__name__)

_HEADER_CRC_END = 12
_SYNC0 = p.SYNC[0]


class FrameSplitter:
    """Raw frames out of a byte stream: the framing steps of SPEC.md section 5 (hunt, header CRC, length
    bound, frame CRC, resync one byte after a bad frame), without decoding payloads. A frame of an unknown
    type or version is still a frame: it is returned, as it was on the wire. Sans-IO."""

    def __init__(self, max_payload_size: int = p.MAX_PAYLOAD_SIZE) -> None:
        self.max_payload_size = max_payload_size
        self.discarded_bytes = 0
        """Bytes that were not part of any intact frame (noise, bad frames, oversized headers)."""
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        while True:
            start = buf.find(p.SYNC)
            if start < 0:
                keep = 1 if buf and buf[-1] == _SYNC0 else 0
                self._discard(len(buf) - keep)
                break
            self._discard(start)
            if len(buf) < p.HEADER_SIZE:
                break
            if p.crc16_ccitt_false(memoryview(buf)[:_HEADER_CRC_END]) != int.from_bytes(buf[12:14], "little"):
                self._discard(1)
                continue
            length = int.from_bytes(buf[6:8], "little")
            if length > self.max_payload_size:
                self._discard(p.HEADER_SIZE)
                continue
            total = p.HEADER_SIZE + length + p.CRC_SIZE
            if len(buf) < total:
                break
            if p.crc32c(memoryview(buf)[: total - p.CRC_SIZE]) != int.from_bytes(
                buf[total - p.CRC_SIZE : total], "little"
            ):
                self._discard(1)
                continue
            frames.append(bytes(buf[:total]))
            del buf[:total]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _discard(self, n: int) -> None:
        if n:
            self.discarded_bytes += n
            del self._buf[:n]


class RecordTap:
    """Receives raw bytes in both directions and writes the frames in them to a capture.

    Until ``attach()`` (the capture's metadata needs the SERVER_HELLO) records wait in memory with their
    times. ``limit``: received frames to record at most; ``done`` is set when it is reached or a write
    fails (``error``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.t0 = clock()
        self.t0_unix_us = time.time_ns() // 1000
        self.rx_split = FrameSplitter()
        self.tx_split = FrameSplitter()
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


def _recording_client_class() -> type[HilClient]:
    from .client import HilClient

    class RecordingClient(HilClient):
        """HilClient whose received and sent bytes also go to ``self.tap``."""

        def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
            super().__init__(reader, writer, name)
            self.tap = RecordTap()
            self.decoder = _TapDecoder(self.tap)
            self.writer = cast(asyncio.StreamWriter, _TapWriter(writer, self.tap))

    return RecordingClient


class Progress:
    """Frames, bytes and rate on stderr: a live line on a terminal, a log line every ``every_s`` else."""

    def __init__(self, label: str, unit: str, every_s: float = 10.0) -> None:
        self._line = StatusLine(every_s)
        self._label = label
        self._unit = unit
        self._start = time.monotonic()

    def update(self, count: int, nbytes: int) -> None:
        rate = count / max(time.monotonic() - self._start, 1e-9)
        text = f"{self._label}: {count} {self._unit}s, {nbytes / 1e6:.2f} MB, {rate:.0f} {self._unit}s/s"
        if not self._line.show(text):
            log.info(self._label, frames=count, bytes=nbytes, frames_per_s=round(rate, 1))

    def close(self) -> None:
        self._line.close()


async def _record(args: argparse.Namespace) -> int:
    from .client import ClientError

    out = Path(args.out)
    if out.exists() and not args.force:
        log.error("record", error=f"{out} exists; give --force to overwrite it")
        return 2
    secret = read_secret(args)
    client_class = _recording_client_class()
    client = await client_class.connect(args.host, args.port, name=args.name, secret=secret)
    tap: RecordTap = client.tap  # type: ignore[attr-defined]
    assert client.hello is not None
    cells = tuple(args.cells or ())
    meta = hello_meta(
        client.hello,
        start_unix_us=tap.t0_unix_us,
        recorder="eis-hil record",
        server=f"{args.host}:{args.port}",
        client_name=args.name,
        subscription={"cells": list(cells), "divider": args.divider, "mask": int(p.SubscribeMask.ALL)},
    )
    try:
        writer = CaptureWriter(out, meta, sync_interval_s=1.0, overwrite=args.force)
    except CaptureError:
        await client.close()
        raise
    tap.limit = args.count
    tap.attach(writer)
    reason = "?"
    started = time.monotonic()
    progress = Progress("recording", "frame")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            signals.append(sig)

    async def drain() -> str:
        """Consume decoded frames (the client queues them) until the stream ends."""
        while True:
            try:
                await client.next_frame()
            except ClientError:
                return "server bye" if client.bye is not None else "connection lost"
            progress.update(tap.rx_frames, writer.bytes_written)

    try:
        await client.subscribe(cells=cells, divider=args.divider)
        drain_task = asyncio.create_task(drain())
        waiters = {drain_task, asyncio.create_task(stop.wait()), asyncio.create_task(tap.done.wait())}
        done, pending = await asyncio.wait(waiters, timeout=args.seconds, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if tap.error is not None:
            reason = "write error"
        elif tap.done.is_set():
            reason = f"{args.count} frames recorded"
        elif stop.is_set():
            reason = "signal"
        elif drain_task in done:
            reason = drain_task.result()
        else:
            reason = f"{args.seconds:g} s elapsed"
    except KeyboardInterrupt:  # pragma: no cover - only without signal handlers
        reason = "signal"
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        progress.close()
        with contextlib.suppress(ClientError, OSError):
            await client.close()  # its BYE is recorded too
        tap.detach()
        try:
            writer.close()
        except CaptureError as exc:
            tap.error = tap.error or exc
    elapsed = time.monotonic() - started
    total = tap.rx_frames
    sys.stdout.write(
        f"recorded {total} frames received and {tap.tx_frames} sent, {writer.bytes_written} bytes in "
        f"{elapsed:.1f} s ({total / max(elapsed, 1e-9):.0f} frames/s) to {out}; stopped: {reason}; "
        f"{len(client.errors)} bad input runs, {client.gaps} sequence gaps\n"
    )
    if tap.error is not None:
        log.error("recording failed", error=str(tap.error))
        return 1
    if reason == "connection lost":
        log.error("record", error="the server closed the connection without BYE; what arrived is recorded")
        return 1
    bye = client.bye
    if bye is not None and bye.reason not in (p.ErrorCode.NONE, p.ErrorCode.SHUTDOWN):
        # cut off (too slow, silent, ...): the capture is incomplete, and a CI job must not pass on it
        log.error("record", error=f"the server ended the session: {bye.message}", reason=bye.reason)
        return 1
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    from .client import ClientError

    try:
        return asyncio.run(_record(args))
    except (ClientError, OSError, TimeoutError, ValueError, CaptureError) as exc:
        log.error("record", error=str(exc) or type(exc).__name__)
        return 2
    except KeyboardInterrupt:
        return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .capture_export import export_capture
    from .capture_formats_cli import run as run_bench_formats

    done = run_bench_formats(args)  # --pcap, --format mf4
    if done is not None:
        return done
    try:
        result = export_capture(
            Path(args.file),
            Path(args.out),
            csv_only=args.csv_only,
            cells=tuple(args.cells) if args.cells else None,
            plot_cells=args.plot_cells,
        )
    except (CaptureError, OSError) as exc:
        log.error("export", error=str(exc))
        return 2
    sys.stdout.write(result.summary() + "\n")
    return 0


def register(subparsers: Any) -> None:
    rec = subparsers.add_parser(
        "record", help="connect to a server and record every frame it sends into a capture file"
    )
    rec.add_argument("host")
    rec.add_argument("port", type=int)
    rec.add_argument("--out", required=True, help="capture file to create (format: hil_server/CAPTURE.md)")
    rec.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    rec.add_argument("--seconds", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    rec.add_argument("--count", type=int, help="stop after this many frames received")
    rec.add_argument("--cells", type=cell_index, nargs="*", help="cells to subscribe (default all)")
    rec.add_argument("--divider", type=int, default=1, help="every n-th cell-state step")
    rec.add_argument("--name", default="eis-hil-record", help="client name sent to the server")
    secret = rec.add_mutually_exclusive_group()
    secret.add_argument("--secret-file", help="shared secret for authentication, in this file")
    secret.add_argument("--secret-env", help="... or in this environment variable")
    rec.set_defaults(func=cmd_record)

    exp = subparsers.add_parser(
        "export", help="a capture as CSV (spectra for impedance.py, states, faults) and PNG plots"
    )
    exp.add_argument("file", help="capture file")
    exp.add_argument("--out", help="output directory (created), or the .mf4 file with --format mf4")
    exp.add_argument("--csv-only", action="store_true", help="no plots")
    exp.add_argument("--cells", type=cell_index, nargs="*", help="export only these cells (default all)")
    exp.add_argument(
        "--plot-cells",
        type=int,
        default=8,
        help="plot Nyquist/Bode and timeline lines for at most this many cells (default 8); CSV has all",
    )
    from .capture_formats_cli import add_arguments as add_bench_formats

    add_bench_formats(exp)
    exp.set_defaults(func=cmd_export)
