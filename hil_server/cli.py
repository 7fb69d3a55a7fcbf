"""The ``eis-hil`` command. Subcommands are added here as their issues land.

Command output goes to stdout; logs (structlog) go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import structlog

import protocol as p

from . import __version__
from ._logging import configure_logging
from .frame_text import describe
from .protocol_demo import run_demo

log = structlog.get_logger(__name__)


def _write(text: str) -> None:
    sys.stdout.write(text)


def cmd_demo(args: argparse.Namespace) -> int:
    result = run_demo(_write, seconds=args.seconds, cells=args.cells)
    return 0 if result.intact_frames_lost == 0 else 1


def _read_capture(source: str, as_hex: bool) -> bytes:
    raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    if not as_hex:
        return raw
    text = raw.decode("ascii", errors="replace")
    digits = "".join(ch for ch in text if ch in "0123456789abcdefABCDEF")
    if len(digits) % 2:
        raise ValueError(f"{source}: odd number of hex digits ({len(digits)})")
    return bytes.fromhex(digits)


def cmd_decode(args: argparse.Namespace) -> int:
    try:
        data = _read_capture(args.file, args.hex)
    except (OSError, ValueError) as exc:
        log.error("cannot read capture", file=args.file, error=str(exc))
        return 2
    decoder = p.FrameDecoder()
    decoder.feed(data)
    decoder.feed_eof()
    for item in decoder.events():
        if args.json and isinstance(item, p.Frame):
            _write(
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
            _write(describe(item) + "\n")
    stats = decoder.stats
    _write(f"{len(data)} bytes: {stats.frames} frames, {stats.errors} errors {dict(stats.errors_by_kind)}\n")
    return 0 if stats.errors == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eis-hil", description="EIS hardware-in-the-loop server for BMS development"
    )
    parser.add_argument("--version", action="version", version=f"eis-hil {__version__}")
    parser.add_argument(
        "--log-json", action="store_true", help="logs as JSON lines (default: human-readable)"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="protocol loopback demo: a damaged byte stream decoded frame by frame")
    demo.add_argument("--seconds", type=int, default=20, help="simulated seconds (default 20)")
    demo.add_argument("--cells", type=int, default=4, help="cells in the pack (default 4)")
    demo.set_defaults(func=cmd_demo)

    decode = sub.add_parser("decode", help="decode a byte capture (file or -) and list its frames and errors")
    decode.add_argument("file", help="capture file, or - for stdin")
    decode.add_argument("--hex", action="store_true", help="the capture is hex text (whitespace ignored)")
    decode.add_argument("--json", action="store_true", help="frames as JSON lines")
    decode.set_defaults(func=cmd_decode)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(json=args.log_json, level=args.log_level)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
