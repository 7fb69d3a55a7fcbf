"""``eis-hil export``: a capture as CSV and PNG plots."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from hil_server.capture.format import CaptureError
from hil_server.cli._common import Progress, cell_index

if TYPE_CHECKING:
    pass

log = structlog.get_logger(__name__)


def run(args: argparse.Namespace) -> int:
    from hil_server.capture.export import export_capture

    try:
        result = export_capture(
            Path(args.file),
            Path(args.out),
            csv_only=args.csv_only,
            cells=tuple(args.cells) if args.cells else None,
            plot_cells=args.plot_cells,
            progress=Progress("exporting", "record"),
        )
    except (CaptureError, OSError) as exc:
        log.error("export", error=str(exc))
        return 2
    sys.stdout.write(result.summary() + "\n")
    return 0


def add_arguments(exp: argparse.ArgumentParser) -> None:
    exp.add_argument("file", help="capture file")
    exp.add_argument("--out", required=True, help="output directory (created)")
    exp.add_argument("--csv-only", action="store_true", help="no plots")
    exp.add_argument("--cells", type=cell_index, nargs="*", help="export only these cells (default all)")
    exp.add_argument(
        "--plot-cells",
        type=int,
        default=8,
        help="plot Nyquist/Bode and timeline lines for at most this many cells (default 8); CSV has all",
    )
