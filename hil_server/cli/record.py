"""``eis-hil record``: connect to a server and record every frame into a capture file."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

import protocol as p
from hil_server.capture.format import CaptureError
from hil_server.capture.meta import hello_meta
from hil_server.capture.recorder import RecordTap, recording_client_class
from hil_server.capture.writer import CaptureWriter
from hil_server.cli._common import Progress, add_secret_args, cell_index, read_secret

if TYPE_CHECKING:
    pass

log = structlog.get_logger(__name__)


async def _record(args: argparse.Namespace) -> int:
    from hil_server.client.client import ClientError

    out = Path(args.out)
    if out.exists() and not args.force:
        log.error("record", error=f"{out} exists; give --force to overwrite it")
        return 2
    secret = read_secret(args)
    client_class = recording_client_class()
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


def run(args: argparse.Namespace) -> int:
    from hil_server.client.client import ClientError

    try:
        return asyncio.run(_record(args))
    except (ClientError, OSError, TimeoutError, ValueError, CaptureError) as exc:
        log.error("record", error=str(exc) or type(exc).__name__)
        return 2
    except KeyboardInterrupt:
        return 0


def add_arguments(rec: argparse.ArgumentParser) -> None:
    rec.add_argument("host")
    rec.add_argument("port", type=int)
    rec.add_argument("--out", required=True, help="capture file to create (format: hil_server/CAPTURE.md)")
    rec.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    rec.add_argument("--seconds", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    rec.add_argument("--count", type=int, help="stop after this many frames received")
    rec.add_argument("--cells", type=cell_index, nargs="*", help="cells to subscribe (default all)")
    rec.add_argument("--divider", type=int, default=1, help="every n-th cell-state step")
    rec.add_argument("--name", default="eis-hil-record", help="client name sent to the server")
    add_secret_args(rec)
