#!/usr/bin/env python3
"""Read every EIS source, print the data report, optionally write the compact training set (.npz).

    python tools/ingest_eis.py                                            # report only
    python tools/ingest_eis.py --out hil_server/eis_data/training_set.npz # the shipped training set
    python tools/ingest_eis.py my_lab.csv --data-dir /path                # add generic CSV files

Sources: zhang2020 and rashid2023 from the data directory (--data-dir, else $EIS_HIL_DATA, else
<repo>/../shared/data), the shipped PyBaMM-simulated source pybamm_chen2020 (--no-simulated leaves it out),
and generic CSV files. The training set holds the spectra without quality flags (--keep-flagged writes
everything read); beside it, <name>.provenance.json cites every source with its licence, counts spectra and
cells per source and profile, and records the sha256 of the file and of its content.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import structlog

from hil_server.eis_data import (
    DataNotFoundError,
    EisDataError,
    collect,
    format_report,
    provenance_path,
    write_training_set,
)

_log = structlog.get_logger("ingest_eis")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("csv", nargs="*", type=Path, help="extra spectra in the generic CSV format")
    parser.add_argument("--data-dir", type=Path, default=None, help="data directory (holding eis/)")
    parser.add_argument("--out", type=Path, default=None, help="write the training set to this .npz file")
    parser.add_argument("--keep-flagged", action="store_true", help="write flagged spectra too")
    parser.add_argument("--no-simulated", action="store_true", help="leave out the PyBaMM-simulated source")
    parser.add_argument(
        "--labelled-only",
        action="store_true",
        help="do not read zhang2020 states without SOC (faster report)",
    )
    args = parser.parse_args(argv)
    # structlog prints to stdout by default; the report owns stdout, so logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    out = sys.stdout.write
    try:
        _log.info(
            "reading_sources",
            data_dir=str(args.data_dir) if args.data_dir else "default",
            extra=len(args.csv),
            simulated=not args.no_simulated,
        )
        collection = collect(
            args.data_dir,
            args.csv,
            all_zhang_states=not args.labelled_only,
            simulated=not args.no_simulated,
        )
    except (DataNotFoundError, EisDataError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    out(format_report(collection) + "\n")
    if args.out is not None:
        spectra = collection.spectra if args.keep_flagged else collection.spectra.clean()
        excluded = Counter() if args.keep_flagged else Counter(s.source for s in collection.spectra.flagged())
        given = sys.argv[1:] if argv is None else argv
        record = write_training_set(
            spectra,
            args.out,
            generator=" ".join(["python tools/ingest_eis.py", *given]),
            excluded=dict(sorted(excluded.items())),
            extra_files=[p.name for p in args.csv],
        )
        out(
            f"\nwrote {args.out}: {record['spectra']} spectra, {record['file_bytes'] / 1e6:.2f} MB, "
            f"sha256 {record['file_sha256']} (content {record['content_sha256']})\n"
            f"provenance: {provenance_path(args.out)}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
