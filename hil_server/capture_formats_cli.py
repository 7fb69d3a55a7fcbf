"""The bench-tool outputs of ``eis-hil export``: ``--pcap FILE.pcapng`` (Wireshark) and ``--format mf4``
(ASAM MDF4, for CANape, INCA, asammdf). ``capture_cli`` adds these options and hands over to ``run``; the
CSV/PNG export stays where it is.

    eis-hil export session.eiscap --pcap session.pcapng
    eis-hil export session.eiscap --format mf4 --out session.mf4
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import structlog

from .capture import CaptureError

log = structlog.get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=("csv", "mf4"),
        default="csv",
        help="csv: a directory of CSV files and plots (default); mf4: one ASAM MDF 4 file (--out FILE.mf4)",
    )
    parser.add_argument(
        "--pcap",
        metavar="FILE.pcapng",
        help="also (or only) write the frames as a pcapng of a loopback TCP session, for Wireshark with "
        "tools/wireshark/eis_hil.lua",
    )


def _check_writable(path: Path, what: str) -> str | None:
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        return f"{what} {path}: is a directory, expected a file name"
    if not parent.is_dir():
        return f"{what} {path}: directory {parent} does not exist"
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"{what} {path}: not writable"
    return None


def check(args: argparse.Namespace) -> str | None:
    """The option errors ``export`` refuses before reading anything, or None."""
    if args.format == "mf4" and args.out is None:
        return "--format mf4 needs --out FILE.mf4"
    if args.out is None and args.pcap is None:
        return "export needs --out (a directory, or a .mf4 file with --format mf4) or --pcap FILE.pcapng"
    if args.format == "mf4":
        if args.cells or args.csv_only:
            return "--cells and --csv-only apply to the CSV export, not to --format mf4"
        problem = _check_writable(Path(args.out), "--out")
        if problem:
            return problem
    if args.pcap is not None:
        return _check_writable(Path(args.pcap), "--pcap")
    return None


def run(args: argparse.Namespace) -> int | None:
    """Write --pcap and the mf4 export; None when the CSV export (``--out`` directory) is still to be done."""
    problem = check(args)
    if problem:
        log.error("export", error=problem)
        return 2
    try:
        if args.pcap is not None:
            from .capture_pcap import export_pcap

            result = export_pcap(Path(args.file), Path(args.pcap))
            sys.stdout.write(result.summary() + "\n")
        if args.format == "mf4":
            from .capture_mdf import export_mdf

            mdf = export_mdf(Path(args.file), Path(args.out))
            sys.stdout.write(mdf.summary() + "\n")
            return 0
    except (CaptureError, OSError) as exc:
        log.error("export", error=str(exc))
        return 2
    except ImportError as exc:
        log.error("export", error=f"{exc}: --format mf4 needs asammdf: pip install 'eis-hil[mdf]'")
        return 2
    return 0 if args.out is None else None
