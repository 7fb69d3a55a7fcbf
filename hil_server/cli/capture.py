"""``eis-hil capture check FILE [--repair OUT]``: the damage in a capture, and a copy without it.

    eis-hil capture check session.eiscap                          # every damaged span: offset, bytes, records
    eis-hil capture check session.eiscap --repair fixed.eiscap    # ... and a copy of every intact record

Exit status: 0 the capture is intact, 1 damage was found (the repaired copy, if asked for, is written),
2 the file is not a readable capture or OUT cannot be written.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import structlog

from hil_server.capture.format import CaptureError, lost_count, open_capture, scan_records
from hil_server.cli._common import write

log = structlog.get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="capture_command", required=True, metavar="ACTION")
    check = sub.add_parser(
        "check",
        help="list the damaged spans of a capture; --repair writes a clean copy",
        description="List every damaged span of a capture (offset, bytes, records lost; CAPTURE.md 6.1). "
        "Exit status: 0 intact, 1 damage found (the --repair copy is written), 2 not a readable capture.",
    )
    check.add_argument("file", help="capture file (eis-hil record, or serve --record)")
    check.add_argument(
        "--repair",
        metavar="OUT",
        help="write a copy with the same header and every intact record (refuses an existing file)",
    )


def _repair(path: Path, data_offset: int, out: Path) -> int:
    """Copy the header and every valid record of ``path`` into the new file ``out``: the records copied.
    Written beside ``out`` and renamed when complete, so an interrupted repair leaves no half copy."""
    from hil_server.capture.writer import _fsync_dir

    capture = open_capture(path)
    copied = 0
    partial = out.with_name(f".{out.name}.partial")
    with path.open("rb") as src:
        head = src.read(data_offset)
    try:
        with partial.open("wb") as dst:  # ours: a stale one from a killed run is replaced
            dst.write(head)
            for record in scan_records(capture):
                dst.write(record.to_bytes())
                copied += 1
            dst.flush()
            os.fsync(dst.fileno())
        if out.exists():
            raise CaptureError(f"{out}: appeared while repairing; refusing to overwrite it")
        partial.rename(out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _fsync_dir(out)
    return copied


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        capture = open_capture(path)
        records = sum(1 for _ in scan_records(capture))
    except CaptureError as exc:
        log.error("capture check", error=str(exc))
        return 2
    size = path.stat().st_size
    damage = capture.damage
    state = f"{len(damage)} damaged span(s), {lost_count(damage)} record(s) lost" if damage else "intact"
    write(f"{path}: {size} bytes, {records} intact records; {state}\n")
    for span in damage:
        write(f"  {span.describe()}\n")
    if args.repair:
        try:
            copied = _repair(path, capture.data_offset, Path(args.repair))
        except (CaptureError, OSError) as exc:
            log.error("capture check", error=f"--repair {args.repair}: {exc}")
            return 2
        write(f"repaired copy {args.repair}: {copied} records\n")
    return 1 if damage else 0
