"""``eis-hil convert IN OUT``: a spectra file of any supported format (Gamry .DTA, BioLogic .mpt, Autolab,
CH Instruments, Parstat, PowerSuite, VersaStudio .par, ZPlot .z, impedance.py CSV, our generic CSV) to our
generic CSV, or (``--to impedance``) to impedance.py's CSV (``freq, Re(Z), Im(Z)``, one spectrum).

Instrument files carry no SOC, temperature or SOH: the options of ``_common.add_point_arguments`` (shared
with ``train --extra`` and ``calibrate --spectra``) or a sidecar ``<file>.yaml`` label them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import structlog

from hil_server.cli._common import add_point_arguments, point_from_args

log = structlog.get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="spectra file (format detected from its content)")
    parser.add_argument("output", metavar="OUT", help="CSV file to write")
    parser.add_argument(
        "--to",
        choices=("generic", "impedance"),
        default="generic",
        help="generic: eis-hil's CSV with labels (default); impedance: impedance.py's freq,Re,Im CSV",
    )
    add_point_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hil_server.eis_data import EisDataError

    out = Path(args.output)
    parent = out.parent if str(out.parent) else Path(".")
    if (
        not parent.is_dir()
        or not os.access(parent, os.W_OK)
        or (out.exists() and not os.access(out, os.W_OK))
    ):
        log.error("convert", error=f"{out}: cannot write there (no such directory or no permission)")
        return 2
    try:
        n = _convert(Path(args.input), out, args)
    except EisDataError as exc:
        log.error("convert", error=str(exc))
        return 2
    log.info("converted", input=args.input, output=str(out), to=args.to, points=n)
    return 0


def _convert(src: Path, out: Path, args: argparse.Namespace) -> int:
    import numpy as np

    from hil_server.eis_data import EisDataError, read_spectra_file, write_generic_csv
    from hil_server.eis_data._instrument import GENERIC, detect_format, read_instrument_file

    point = point_from_args(args)
    if args.to == "generic":
        spectra = read_spectra_file(src, point=point)
        _atomic(out, lambda tmp: write_generic_csv(spectra, tmp))
        return sum(s.n_points for s in spectra)
    if detect_format(src) == GENERIC:
        spectra = read_spectra_file(src)
        if len(spectra) != 1:
            raise EisDataError(
                f"{len(spectra)} spectra in this file: impedance.py's CSV holds one; split it first",
                path=str(src),
            )
        freq, z = spectra[0].freq_hz, spectra[0].z
    else:
        spectrum = read_instrument_file(src)
        freq, z = spectrum.freq_hz, spectrum.z
    try:
        from impedance.preprocessing import saveCSV
    except ImportError:
        raise EisDataError(
            "writing impedance.py CSV needs impedance.py: pip install 'eis-hil[lab]'"
        ) from None
    _atomic(out, lambda tmp: saveCSV(str(tmp), np.asarray(freq), np.asarray(z)))
    return int(freq.size)


def _atomic(out: Path, writer: Callable[[Path], None]) -> None:
    """Write through a temporary file beside ``out`` and rename: no half-written OUT on an error."""
    fd, name = tempfile.mkstemp(
        prefix=f".{out.name}.", suffix=".csv", dir=out.parent if str(out.parent) else "."
    )
    os.close(fd)
    tmp = Path(name)
    try:
        writer(tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
