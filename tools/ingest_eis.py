#!/usr/bin/env python3
"""Read every EIS source, print the data report, optionally write the compact training set (.npz).

    python tools/ingest_eis.py                              # report only
    python tools/ingest_eis.py --out data/eis_train.npz     # also write the training set
    python tools/ingest_eis.py my_lab.csv --data-dir /path  # add generic CSV files, other data directory

The data directory is --data-dir, else $EIS_HIL_DATA, else <repo>/../shared/data. The training set holds
the spectra without quality flags (add --keep-flagged to write everything read).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import structlog

from hil_server.eis_data import DataNotFoundError, EisDataError, collect, format_report, save_npz

_log = structlog.get_logger("ingest_eis")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("csv", nargs="*", type=Path, help="extra spectra in the generic CSV format")
    parser.add_argument("--data-dir", type=Path, default=None, help="data directory (holding eis/)")
    parser.add_argument("--out", type=Path, default=None, help="write the training set to this .npz file")
    parser.add_argument("--keep-flagged", action="store_true", help="write flagged spectra too")
    parser.add_argument(
        "--labelled-only",
        action="store_true",
        help="do not read zhang2020 states without SOC (faster report)",
    )
    args = parser.parse_args(argv)
    # structlog prints to stdout by default; the report owns stdout, so logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    try:
        _log.info(
            "reading_sources",
            data_dir=str(args.data_dir) if args.data_dir else "default",
            extra=len(args.csv),
        )
        collection = collect(args.data_dir, args.csv, all_zhang_states=not args.labelled_only)
    except (DataNotFoundError, EisDataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_report(collection))
    if args.out is not None:
        spectra = collection.spectra if args.keep_flagged else collection.spectra.clean()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        digest = save_npz(spectra, args.out)
        size = args.out.stat().st_size
        print(f"\nwrote {args.out}: {len(spectra)} spectra, {size / 1e6:.2f} MB, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
