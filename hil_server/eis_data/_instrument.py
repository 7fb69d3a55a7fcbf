"""Native potentiostat files in: Gamry .DTA, BioLogic EC-Lab .mpt, Autolab, CH Instruments, Parstat,
PowerSuite, VersaStudio .par, ZPlot .z, impedance.py's plain CSV, and our generic CSV.

The format is detected from the file's first lines (content first; the extension only decides when the
content says nothing). Parsing is impedance.py's ``preprocessing`` readers (MIT, package ``impedance``, extra
``lab``): the maintained readers of the field, which also put every vendor's data in the standard sign
(BioLogic's ``-Im(Z)`` column is negated there). Around them this module adds what they do not check: an
aborted Gamry sweep (refused: a partial spectrum), a BioLogic file without the frequency column, empty or
non-finite data, duplicate frequencies; each as one ``file[:line]: message``.
Frequencies are returned descending.

An instrument file carries one spectrum and no operating point: SOC, temperature and SOH come from the
caller (``OperatingPoint``, e.g. command-line options) or from a sidecar ``<file>.yaml`` beside it
(``soc: 0.5``, ``temp_c: 25``, ``soh: 0.98``, optional ``cell_id``); options win over the sidecar.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import structlog

from ._generic import read_generic_csv
from ._schema import EisDataError, Spectrum, SpectrumSet
from .textfile import not_a_file

_log = structlog.get_logger(__name__)

VENDORS = {
    "gamry": "Gamry .DTA",
    "biologic": "BioLogic EC-Lab .mpt",
    "autolab": "Autolab",
    "chinstruments": "CH Instruments",
    "parstat": "Parstat",
    "powersuite": "PowerSuite",
    "versastudio": "VersaStudio .par",
    "zplot": "ZPlot .z",
    "csv": "impedance.py CSV (freq, Re, Im)",
}
"""impedance.py instrument names (``csv``: its plain CSV) -> what the messages call them."""
GENERIC = "generic"
_EXTENSIONS = {".dta": "gamry", ".mpt": "biologic", ".par": "versastudio", ".z": "zplot"}
_HEAD_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """Labels for a file that has none; None: not given."""

    soc: float | None = None
    temp_c: float | None = None
    soh: float | None = None
    cell_id: str | None = None

    def over(self, other: OperatingPoint) -> OperatingPoint:
        """This point with its missing fields taken from ``other``."""
        return OperatingPoint(
            *(
                getattr(self, f.name) if getattr(self, f.name) is not None else getattr(other, f.name)
                for f in dataclasses.fields(self)
            )
        )


@dataclasses.dataclass(frozen=True)
class InstrumentSpectrum:
    """One spectrum as the instrument measured it: standard sign, frequencies descending."""

    path: Path
    vendor: str
    freq_hz: npt.NDArray[np.float64]
    z: npt.NDArray[np.complex128]


def detect_format(path: str | os.PathLike[str]) -> str:
    """``generic`` or an impedance.py instrument name (``csv`` for its plain CSV), from the file's content,
    else its extension; EisDataError when neither says."""
    file = Path(path)
    try:
        with file.open("rb") as fh:
            head = fh.read(_HEAD_BYTES).decode("latin-1")
    except OSError as exc:
        raise EisDataError(f"cannot read: {exc.strerror or exc}", path=str(file)) from None
    lines = [line.strip().lstrip("\ufeff").lstrip("ï»¿") for line in head.splitlines()]
    first = lines[0] if lines else ""
    if first == "EXPLAIN" and "ZCURVE" in head:
        return "gamry"
    if first.startswith("EC-Lab ASCII FILE"):
        return "biologic"
    if first == "<Application>" and "Name=VersaStudio" in head:
        return "versastudio"
    if first.startswith(("ZPLOT2 ASCII", '"ZPlotW Data File')):
        return "zplot"
    if first.startswith('"Z60W Data File'):
        return "autolab"
    if "A.C. Impedance" in lines[:3] and any(line.startswith("Freq/Hz") for line in lines):
        return "chinstruments"
    header = [h.strip() for h in first.split("\t")]
    if header[:6] == [
        "Potential (V)",
        "Current (A)",
        "Elapsed Time (s)",
        "Frequency (Hz)",
        "Zre (ohms)",
        "Zim (ohms)",
    ]:
        return "parstat"
    if header == ["Frequency", "Zre", "Zimg"]:
        return "powersuite"
    if "spectrum_id" in {h.strip() for h in first.replace(";", ",").split(",")}:
        return GENERIC  # separated by ';' (European Excel): the generic reader says so
    if first.startswith("#") or _three_numbers(first):
        return "csv"
    by_extension = _EXTENSIONS.get(file.suffix.lower())
    if by_extension is not None:
        return by_extension
    raise EisDataError(
        "not a spectrum file eis-hil recognises: expected our generic CSV (a spectrum_id column) or a "
        f"file from {', '.join(VENDORS.values())}",
        path=str(file),
        line=1,
    )


def _three_numbers(line: str) -> bool:
    parts = line.split(",")
    if len(parts) != 3:
        return False
    try:
        [float(part) for part in parts]
    except ValueError:
        return False
    return True


def read_instrument_file(path: str | os.PathLike[str], vendor: str | None = None) -> InstrumentSpectrum:
    """The one spectrum of an instrument file (format detected unless ``vendor`` is given)."""
    file = Path(path)
    where = str(file)
    problem = not_a_file(file)
    if problem:
        raise EisDataError(problem, path=where)
    vendor = vendor or detect_format(file)
    if vendor == GENERIC:
        raise EisDataError("this is a generic eis-hil CSV, not an instrument file", path=where)
    try:
        from impedance import preprocessing
    except ImportError:
        raise EisDataError(
            f"reading {VENDORS[vendor]} files needs impedance.py: pip install 'eis-hil[lab]'", path=where
        ) from None
    _precheck(file, vendor)
    try:
        freq, z = preprocessing.readFile(where, None if vendor == "csv" else vendor)
    except (AssertionError, ValueError, IndexError, UnboundLocalError, UnicodeDecodeError) as exc:
        detail = str(exc).strip() or type(exc).__name__
        raise EisDataError(f"not a readable {VENDORS[vendor]} file ({detail})", path=where) from None
    freq = np.atleast_1d(np.asarray(freq, dtype=np.float64))
    z = np.atleast_1d(np.asarray(z, dtype=np.complex128))
    if freq.size == 0:
        raise EisDataError(f"no data points in this {VENDORS[vendor]} file", path=where)
    bad = ~(np.isfinite(freq) & np.isfinite(z) & (freq > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise EisDataError(
            f"point {i + 1} of {freq.size}: frequency {freq[i]:g} Hz, Z = {z[i]:g}: expected a finite "
            "impedance at a frequency > 0",
            path=where,
        )
    order = np.argsort(-freq, kind="stable")
    freq, z = freq[order], z[order]
    dup = np.flatnonzero(np.diff(freq) == 0)
    if dup.size:
        raise EisDataError(f"frequency {freq[dup[0]]:g} Hz measured twice: one spectrum expected", path=where)
    return InstrumentSpectrum(file, vendor, freq, z)


def _precheck(file: Path, vendor: str) -> None:
    """What impedance.py reads silently or answers with an assertion: said here with the line."""
    where = str(file)
    if vendor == "gamry":
        lines = file.read_text(encoding="latin-1").splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("ZCURVE")), None)
        if start is None:
            raise EisDataError("Gamry file without a ZCURVE table: not an EIS measurement", path=where)
        for i, line in enumerate(lines):
            if line.startswith("EXPERIMENTABORTED"):
                points = max(0, i - start - 3)
                planned = _gamry_planned(lines)
                raise EisDataError(
                    f"the sweep was aborted (EXPERIMENTABORTED) after {points} points{planned}: a partial "
                    "spectrum is refused; measure it again",
                    path=where,
                    line=i + 1,
                )
    elif vendor == "biologic":
        lines = file.read_text(encoding="latin-1").splitlines()
        try:
            n_header = int(lines[1].split(":")[1])
        except (IndexError, ValueError):
            raise EisDataError(
                "expected 'Nb header lines : N' on line 2 of an EC-Lab file", path=where, line=2
            ) from None
        if not 1 <= n_header <= len(lines):
            raise EisDataError(f"header of {n_header} lines in a file of {len(lines)}", path=where, line=2)
        columns = lines[n_header - 1].split("\t")
        for needed in ("freq/Hz", "Re(Z)/Ohm", "-Im(Z)/Ohm"):
            if needed not in columns:
                found = [c for c in columns if c.strip()]
                shown = ", ".join(found[:4]) + (f", ... ({len(found)} columns)" if len(found) > 4 else "")
                raise EisDataError(
                    f"no '{needed}' column (found {shown}): export the EIS data from EC-Lab with "
                    "freq/Hz, Re(Z)/Ohm and -Im(Z)/Ohm",
                    path=where,
                    line=n_header,
                )


def _gamry_planned(lines: list[str]) -> str:
    values: dict[str, float] = {}
    for line in lines[:200]:
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0] in ("FREQINIT", "FREQFINAL", "PTSPERDEC"):
            try:
                values[parts[0]] = float(parts[2].replace(",", "."))
            except ValueError:
                continue
    if len(values) < 3 or min(values.values()) <= 0:
        return ""
    decades = abs(math.log10(values["FREQINIT"] / values["FREQFINAL"]))
    planned = round(decades * values["PTSPERDEC"]) + 1
    return f" of about {planned} planned ({values['FREQINIT']:g} Hz to {values['FREQFINAL']:g} Hz)"


# -- operating point ---------------------------------------------------------------------------------------


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    file = Path(path)
    return file.with_name(file.name + ".yaml")


SIDECAR_BYTES = 64 * 1024
_SIDECAR_BOUNDS = {"soc": (0.0, 1.0), "temp_c": (-100.0, 150.0), "soh": (0.0, 1.0)}


def read_sidecar(path: str | os.PathLike[str]) -> OperatingPoint:
    """The operating point in ``<file>.yaml`` beside an instrument file (empty if there is none): a flat
    mapping of ``soc``, ``temp_c``, ``soh`` (numbers) and ``cell_id``. Composed, not loaded (no alias
    expansion), size-bounded; EisDataError naming the sidecar, the line and the key."""
    side = sidecar_path(path)
    if not side.is_file():
        return OperatingPoint()
    import yaml

    where = str(side)
    try:
        with side.open("rb") as fh:
            data = fh.read(SIDECAR_BYTES + 1)
        if len(data) > SIDECAR_BYTES:
            raise EisDataError(f"larger than {SIDECAR_BYTES} bytes: not an operating point", path=where)
        loader = yaml.SafeLoader(data.decode("utf-8-sig"))
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except (OSError, UnicodeDecodeError, RecursionError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        raise EisDataError(f"cannot read the operating point: {exc}", path=where, line=line) from None
    if root is None:
        return OperatingPoint()
    if not isinstance(root, yaml.MappingNode):
        raise EisDataError(
            "expected a mapping (soc: 0.5, temp_c: 25, soh: 1.0)", path=where, line=root.start_mark.line + 1
        )
    numbers: dict[str, float] = {}
    cell: str | None = None
    for key_node, node in root.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
        line = node.start_mark.line + 1
        scalar = isinstance(node, yaml.ScalarNode)
        value = loader.construct_object(node) if scalar else None
        if key == "cell_id":
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise EisDataError("cell_id: expected a string", path=where, line=line)
            cell = str(value)
        elif key in _SIDECAR_BOUNDS:
            lo, hi = _SIDECAR_BOUNDS[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
                got = f", got {node.value}" if scalar else ""
                raise EisDataError(
                    f"{key}: expected a number in [{lo:g}, {hi:g}]{got}", path=where, line=line
                )
            numbers[key] = float(value)
        else:
            raise EisDataError(
                f"unknown key {key!r}: expected soc, temp_c, soh, cell_id", path=where, line=line
            )
    return OperatingPoint(numbers.get("soc"), numbers.get("temp_c"), numbers.get("soh"), cell)


def label(
    spectrum: InstrumentSpectrum,
    point: OperatingPoint,
    *,
    source: str | None = None,
    profile: str | None = None,
) -> Spectrum:
    """A labelled Spectrum; EisDataError naming every missing label and where it can come from."""
    missing = [name for name in ("soc", "temp_c", "soh") if getattr(point, name) is None]
    where = str(spectrum.path)
    if missing:
        raise EisDataError(
            f"{VENDORS[spectrum.vendor]} files carry no operating point: {', '.join(missing)} missing; give "
            f"{' '.join('--' + n.replace('_', '-') for n in missing)} or write {sidecar_path(where).name} "
            "beside it (soc: 0.5, temp_c: 25, soh: 1.0)",
            path=where,
        )
    assert point.soc is not None
    assert point.temp_c is not None
    assert point.soh is not None
    src = source or GENERIC
    cell = point.cell_id or spectrum.path.stem
    return Spectrum(
        source=src,
        cell_id=f"{src}/{cell}",
        profile=profile or src,
        soc=point.soc,
        temp_c=point.temp_c,
        soh=point.soh,
        freq_hz=spectrum.freq_hz,
        z=spectrum.z,
        origin=f"{spectrum.path.name} ({VENDORS[spectrum.vendor]})",
    )


def read_spectra_file(
    path: str | os.PathLike[str],
    *,
    point: OperatingPoint | None = None,
    source: str | None = None,
    profile: str | None = None,
) -> SpectrumSet:
    """Spectra of any supported file: our generic CSV (its own labels) or one instrument file labelled with
    ``point`` over its sidecar. Raises EisDataError (one line, with file and line where known)."""
    file = Path(path)
    problem = not_a_file(file)
    if problem:
        raise EisDataError(problem, path=str(file))
    fmt = detect_format(file)
    if fmt == GENERIC:
        return read_generic_csv(file, source=source, profile=profile)
    spectrum = read_instrument_file(file, fmt)
    labels = (point or OperatingPoint()).over(read_sidecar(file))
    _log.debug("instrument file", path=str(file), format=fmt, points=int(spectrum.freq_hz.size))
    return SpectrumSet((label(spectrum, labels, source=source, profile=profile),))
