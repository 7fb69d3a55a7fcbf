"""``eis-hil decode``: a byte capture as frames and errors."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import structlog

import protocol as p
from hil_server.cli._common import write
from hil_server.client.text import describe

log = structlog.get_logger(__name__)


def _read_capture(source: str, as_hex: bool) -> bytes:
    raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    if not as_hex:
        return raw
    text = raw.decode("ascii", errors="replace")
    digits = "".join(ch for ch in text if ch in "0123456789abcdefABCDEF")
    if len(digits) % 2:
        raise ValueError(f"{source}: odd number of hex digits ({len(digits)})")
    return bytes.fromhex(digits)


def _capture_frames(path: str) -> tuple[bytes, int]:
    """The frames of the records of an eis-hil capture file, back to back, and its damaged spans (logged
    as they are met): what ``decode`` reads when it is given a capture rather than raw bytes."""
    from hil_server.capture.format import iter_records, open_capture

    capture = open_capture(path)
    frames = b"".join(record.frame for record in iter_records(capture))
    return frames, len(capture.damage)


def run(args: argparse.Namespace) -> int:
    from hil_server.capture.format import MAGIC, CaptureError

    damage = 0
    try:
        data = _read_capture(args.file, args.hex)
        if data.startswith(MAGIC) and args.file != "-":  # not raw bytes: its header is not garbage
            try:
                data, damage = _capture_frames(args.file)
                log.info("an eis-hil capture file: decoding the frames of its records", file=args.file)
            except CaptureError as exc:  # its header is damaged: the raw bytes still hold the frames
                log.warning("decoding the capture as raw bytes", file=args.file, error=str(exc))
    except (OSError, ValueError, CaptureError) as exc:
        log.error("cannot read capture", file=args.file, error=str(exc))
        return 2
    decoder = p.FrameDecoder()
    decoder.feed(data)
    decoder.feed_eof()
    for item in decoder.events():
        if args.json and isinstance(item, p.Frame):
            write(
                json.dumps(
                    {
                        "seq": item.seq,
                        "type": p.MsgType(item.message.MSG_TYPE).name,
                        "flags": item.flags,
                        "fields": item.message.to_dict(),
                    }
                )
                + "\n"
            )
        else:
            write(describe(item) + "\n")
    stats = decoder.stats
    write(f"{len(data)} bytes: {stats.frames} frames, {stats.errors} errors {dict(stats.errors_by_kind)}\n")
    return 0 if stats.errors == 0 and not damage else 1


def add_arguments(decode: argparse.ArgumentParser) -> None:
    decode.add_argument(
        "file",
        help="raw bytes as received, or - for stdin; an eis-hil capture (.eiscap): its records' frames",
    )
    decode.add_argument("--hex", action="store_true", help="the capture is hex text (whitespace ignored)")
    decode.add_argument("--json", action="store_true", help="frames as JSON lines")
