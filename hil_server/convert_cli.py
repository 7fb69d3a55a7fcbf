"""``eis-hil convert IN OUT``: a spectra file of any supported format (Gamry .DTA, BioLogic .mpt, Autolab,
CH Instruments, Parstat, PowerSuite, VersaStudio .par, ZPlot .z, impedance.py CSV, our generic CSV) to our
generic CSV, or (``--to impedance``) to impedance.py's CSV (``freq, Re(Z), Im(Z)``, one spectrum).

Also the operating-point options that ``train --extra`` and ``calibrate --spectra`` share for instrument
files, which carry no SOC, temperature or SOH.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from .eis_data import OperatingPoint, SpectrumSet

log = structlog.get_logger(__name__)


def add_point_arguments(parser: argparse.ArgumentParser) -> None:
    """--soc, --temp-c, --soh, --cell-id: labels of instrument files (over their sidecar <file>.yaml)."""
    group = parser.add_argument_group(
        "operating point of instrument files (over a sidecar <file>.yaml; our generic CSV has its own)"
    )
    group.add_argument("--soc", type=_fraction, help="state of charge, 0..1")
    group.add_argument("--temp-c", type=_celsius, help="cell temperature in degC")
    group.add_argument("--soh", type=_fraction, help="state of health, 0..1")
    group.add_argument("--cell-id", help="cell name (default: the file name)")


def point_from_args(args: argparse.Namespace) -> OperatingPoint:
    from .eis_data import OperatingPoint

    return OperatingPoint(
        getattr(args, "soc", None),
        getattr(args, "temp_c", None),
        getattr(args, "soh", None),
        getattr(args, "cell_id", None),
    )


def read_spectra_arg(path: str, args: argparse.Namespace) -> SpectrumSet:
    """A spectra file named on the command line (generic CSV or an instrument file labelled by the options
    of ``add_point_arguments``): what ``train --extra`` and ``calibrate --spectra`` read."""
    from .eis_data import read_spectra_file

    return read_spectra_file(path, point=point_from_args(args))


def _celsius(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not -100.0 <= value <= 150.0:
        raise argparse.ArgumentTypeError(f"{text}: expected degrees Celsius in -100..150 (Kelvin?)")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        hint = " (percent? give a fraction, e.g. 0.5 for 50 %)" if 1.0 < value <= 100.0 else ""
        raise argparse.ArgumentTypeError(f"{text}: expected a fraction in 0..1{hint}")
    return value


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
    from .eis_data import EisDataError

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

    from .eis_data import EisDataError, read_spectra_file, write_generic_csv
    from .eis_data._instrument import GENERIC, detect_format, read_instrument_file

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
