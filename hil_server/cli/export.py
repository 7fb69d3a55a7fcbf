"""``eis-hil export``: a capture as CSV and PNG plots, as ASAM MDF4 (``--format mf4``), or as a pcapng for
Wireshark (``--pcap``).

    eis-hil export session.eiscap --out session/                  # CSV + PNG directory
    eis-hil export session.eiscap --format mf4 --out session.mf4  # CANape, INCA, asammdf
    eis-hil export session.eiscap --pcap session.pcapng           # Wireshark, tools/wireshark/eis_hil.lua
"""

from __future__ import annotations

import argparse
from pathlib import Path

import structlog

from hil_server.capture.format import CaptureError, DamagedSpan, lost_count, open_capture
from hil_server.cli._checks import DIRECTORY, FILE, check_output
from hil_server.cli._common import Progress, cell_index, write

log = structlog.get_logger(__name__)


def check(args: argparse.Namespace) -> str | None:
    """The option errors ``export`` refuses before reading anything, or None."""
    if args.format == "mf4" and args.out is None:
        return "--format mf4 needs --out FILE.mf4"
    if args.out is None and args.pcap is None:
        return "export needs --out (a directory, or a .mf4 file with --format mf4) or --pcap FILE.pcapng"
    if args.format == "mf4" and (args.cells or args.csv_only):
        return "--cells and --csv-only apply to the CSV export, not to --format mf4"
    if args.out is not None:  # --pcap is in OUTPUTS; --out is a file or a directory, by --format
        problem = check_output(Path(args.out), FILE if args.format == "mf4" else DIRECTORY)
        if problem:
            return f"--out {problem}"
        if args.format != "mf4" and (Path(args.out) / "spectra_index.csv").exists():
            # its spectra/ files of another capture would stay beside the new ones, unlisted
            return f"--out {args.out}: holds an export already (spectra_index.csv); give a new directory"
    return _check_cells(args)


def _check_cells(args: argparse.Namespace) -> str | None:
    """--cells beyond the capture's cell count (its metadata, from SERVER_HELLO) would export nothing."""
    if not args.cells:
        return None
    try:
        count = open_capture(args.file).meta.get("cell_count")
    except CaptureError:
        return None  # the export says what is wrong with the file
    if not isinstance(count, int):
        return None
    beyond = [cell for cell in args.cells if cell >= count]
    if beyond:
        return f"--cells {' '.join(map(str, beyond))}: the capture has {count} cell(s), 0..{count - 1}"
    return None


def _export(args: argparse.Namespace) -> list[DamagedSpan]:
    """Write what the options ask for; the damaged spans skipped in the capture."""
    capture = Path(args.file)
    damage: list[DamagedSpan] = []
    if args.pcap is not None:
        from hil_server.capture.pcap import export_pcap

        pcap = export_pcap(capture, Path(args.pcap))
        write(pcap.summary() + "\n")
        damage = pcap.damage
    if args.out is None:
        return damage
    if args.format == "mf4":
        from hil_server.capture.mdf import export_mdf

        mdf = export_mdf(capture, Path(args.out))
        write(mdf.summary() + "\n")
        return mdf.damage
    from hil_server.capture.export import export_capture

    result = export_capture(
        capture,
        Path(args.out),
        csv_only=args.csv_only,
        cells=tuple(args.cells) if args.cells else None,
        plot_cells=args.plot_cells,
        progress=Progress("exporting", "record"),
    )
    write(result.summary() + "\n")
    return result.damage


def damage_error(command: str, file: str, damage: list[DamagedSpan]) -> str:
    """The one line of a command that met damage in a capture and was not told ``--salvage``."""
    lost = lost_count(damage)
    return (
        f"{file}: capture damaged: {lost} record(s) lost in {len(damage)} span(s), the first at offset "
        f"{damage[0].offset} ({damage[0].reason}); {command} used every intact record; "
        f"`eis-hil capture check {file}` lists the spans, --salvage accepts the loss (exit 0)"
    )


def run(args: argparse.Namespace) -> int:
    problem = check(args)
    if problem:
        log.error("export", error=problem)
        return 2
    try:
        damage = _export(args)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (main exits 130 or 143)
        kept = args.out if args.format == "csv" and args.out else None
        log.warning(
            "export interrupted",
            kept=f"the CSV files in {kept} hold every record read so far (closed, valid); no plots"
            if kept
            else "the output file is incomplete: export again",
        )
        raise
    except (CaptureError, OSError) as exc:
        log.error("export", error=str(exc))
        return 2
    except ImportError as exc:
        log.error("export", error=f"{exc}: --format mf4 needs asammdf: pip install 'eis-hil[mdf]'")
        return 2
    if damage and not args.salvage:
        log.error("export", error=damage_error("export", args.file, damage))
        return 1
    return 0


def add_arguments(exp: argparse.ArgumentParser) -> None:
    exp.add_argument("file", help="capture file")
    exp.add_argument("--out", help="output directory (created), or the .mf4 file with --format mf4")
    exp.add_argument(
        "--format",
        choices=("csv", "mf4"),
        default="csv",
        help="csv: a directory of CSV files and plots (default); mf4: one ASAM MDF 4 file (--out FILE.mf4)",
    )
    exp.add_argument(
        "--pcap",
        metavar="FILE.pcapng",
        help="also (or only) write the frames as a pcapng of a loopback TCP session, for Wireshark with "
        "tools/wireshark/eis_hil.lua",
    )
    exp.add_argument("--csv-only", action="store_true", help="no plots")
    exp.add_argument("--cells", type=cell_index, nargs="*", help="export only these cells (default all)")
    exp.add_argument(
        "--plot-cells",
        type=int,
        default=8,
        help="plot Nyquist/Bode and timeline lines for at most this many cells (default 8); CSV has all",
    )
    exp.add_argument(
        "--salvage",
        action="store_true",
        help="a damaged capture (records lost in the middle, CAPTURE.md 6.1) exits 0, not 1",
    )
