"""The generic CSV format for users' own measurements, reader (strict validation) and writer.

One row per frequency point. Required columns: spectrum_id, soc, temp_c, soh, freq_hz, z_re_ohm, z_im_ohm;
optional: cell_id, source. soc and soh are fractions 0..1, impedance in ohm with the standard sign
(Im > 0 inductive). Rows of one spectrum_id need not be contiguous or sorted; they must agree on soc,
temp_c, soh, cell_id and source. Other columns are ignored (with a log warning).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog

from ._schema import EisDataError, Spectrum, SpectrumSet
from .textfile import TextFileError, not_a_file, read_text

REQUIRED_COLUMNS = ("spectrum_id", "soc", "temp_c", "soh", "freq_hz", "z_re_ohm", "z_im_ohm")
OPTIONAL_COLUMNS = ("cell_id", "source")
GENERIC_CSV_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
"""The generic EIS CSV schema; other writers (eis-hil run) use it so their output stays readable here."""
WRITE_COLUMNS = (
    "spectrum_id",
    "cell_id",
    "source",
    "soc",
    "temp_c",
    "soh",
    "freq_hz",
    "z_re_ohm",
    "z_im_ohm",
)
# Anything hotter than this in Celsius is almost certainly a Kelvin value.
_MAX_TEMP_C = 150.0
_MIN_TEMP_C = -100.0

_log = structlog.get_logger(__name__)


@dataclass
class _Pending:
    first_line: int
    labels: dict[str, float | str]
    freq: list[float] = field(default_factory=list)
    z: list[complex] = field(default_factory=list)
    lines: dict[float, int] = field(default_factory=dict)


def _number(value: str, path: str, line: int, column: str) -> float:
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        raise EisDataError(f"expected a number, got {value!r}", path=path, line=line, column=column) from None
    if not math.isfinite(number):
        raise EisDataError(f"expected a finite number, got {value!r}", path=path, line=line, column=column)
    return number


def _fraction(value: str, path: str, line: int, column: str) -> float:
    number = _number(value, path, line, column)
    if not 0.0 <= number <= 1.0:
        hint = " (percent? give a fraction, e.g. 0.5 for 50 %)" if 1.0 < number <= 100.0 else ""
        raise EisDataError(
            f"expected a fraction in 0..1, got {value!r}{hint}", path=path, line=line, column=column
        )
    return number


def read_generic_csv(
    path: str | os.PathLike[str], *, source: str | None = None, profile: str | None = None
) -> SpectrumSet:
    """Spectra of one generic CSV file, in order of first appearance. Raises EisDataError on any bad input.

    source: default the `source` column, else "generic". profile: default the source.
    cell_id: the `cell_id` column, else the spectrum_id; always prefixed with "<source>/".
    """
    file = Path(path)
    where = str(file)
    problem = not_a_file(file)
    if problem:
        raise EisDataError(problem, path=where)
    pending: dict[str, _Pending] = {}
    try:
        text = read_text(file)
    except TextFileError as exc:
        raise EisDataError(exc.message, path=where, line=exc.line) from None
    with io.StringIO(text, newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise EisDataError("empty file: expected a header line", path=where, line=1)
        if len(header) == 1 and ";" in header[0]:
            raise EisDataError(
                f"the header is separated by ';', not ',' (found {header[0][:60]!r}): save the file as CSV "
                "with commas and a decimal point",
                path=where,
                line=1,
            )
        for name in REQUIRED_COLUMNS:
            if name not in header:
                raise EisDataError(
                    f"missing column; the header must contain {', '.join(REQUIRED_COLUMNS)}",
                    path=where,
                    line=1,
                    column=name,
                )
        seen: set[str] = set()
        for name in header:
            if name in seen:
                raise EisDataError("column appears twice in the header", path=where, line=1, column=name)
            seen.add(name)
        extra = [h for h in header if h not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
        if extra:
            _log.warning("generic_csv_ignored_columns", path=where, columns=extra)
        col = {name: i for i, name in enumerate(header)}
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise EisDataError(f"expected {len(header)} fields, got {len(row)}", path=where, line=line)
            sid = row[col["spectrum_id"]].strip()
            if not sid:
                raise EisDataError("expected a non-empty id", path=where, line=line, column="spectrum_id")
            temp = _number(row[col["temp_c"]], where, line, "temp_c")
            if not _MIN_TEMP_C <= temp <= _MAX_TEMP_C:
                raise EisDataError(
                    f"expected degrees Celsius in {_MIN_TEMP_C:g}..{_MAX_TEMP_C:g}, got {temp:g} (Kelvin?)",
                    path=where,
                    line=line,
                    column="temp_c",
                )
            labels: dict[str, float | str] = {
                "soc": _fraction(row[col["soc"]], where, line, "soc"),
                "temp_c": temp,
                "soh": _fraction(row[col["soh"]], where, line, "soh"),
            }
            for name in OPTIONAL_COLUMNS:
                if name in col:
                    labels[name] = row[col[name]].strip()
            freq = _number(row[col["freq_hz"]], where, line, "freq_hz")
            if freq <= 0:
                raise EisDataError(
                    f"expected a frequency > 0, got {freq:g}", path=where, line=line, column="freq_hz"
                )
            z_re = _number(row[col["z_re_ohm"]], where, line, "z_re_ohm")
            z_im = _number(row[col["z_im_ohm"]], where, line, "z_im_ohm")
            spec = pending.setdefault(sid, _Pending(first_line=line, labels=labels))
            for name, value in labels.items():
                if spec.labels.get(name) != value:
                    raise EisDataError(
                        f"spectrum_id {sid!r} has {name}={spec.labels.get(name)!r} on line {spec.first_line} "
                        f"but {value!r} here; all rows of one spectrum must agree",
                        path=where,
                        line=line,
                        column=name,
                    )
            if freq in spec.lines:
                raise EisDataError(
                    f"duplicate frequency {freq:g} Hz in spectrum_id {sid!r} "
                    f"(first on line {spec.lines[freq]})",
                    path=where,
                    line=line,
                    column="freq_hz",
                )
            spec.lines[freq] = line
            spec.freq.append(freq)
            spec.z.append(complex(z_re, z_im))
    if not pending:
        raise EisDataError("no data rows after the header", path=where, line=2)
    spectra: list[Spectrum] = []
    for sid, spec in pending.items():
        src = source or str(spec.labels.get("source") or "generic")
        cell = str(spec.labels.get("cell_id") or sid)
        freq_arr = np.array(spec.freq, dtype=np.float64)
        order = np.argsort(-freq_arr, kind="stable")
        spectra.append(
            Spectrum(
                source=src,
                cell_id=f"{src}/{cell}",
                profile=profile or src,
                soc=float(spec.labels["soc"]),
                temp_c=float(spec.labels["temp_c"]),
                soh=float(spec.labels["soh"]),
                freq_hz=freq_arr[order],
                z=np.array(spec.z, dtype=np.complex128)[order],
                origin=f"{file.name}#spectrum_id={sid}",
            )
        )
    return SpectrumSet(tuple(spectra))


def write_generic_csv(spectra: Iterable[Spectrum], path: str | os.PathLike[str]) -> None:
    """Write spectra in the generic format (all columns, repr floats so a read-back is exact).

    cell_id is written without its "<source>/" prefix, which the reader adds back. cycle, state, flags and
    profile are not part of the format and are not written.
    """
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(WRITE_COLUMNS)
        for i, s in enumerate(spectra):
            if s.flags:
                _log.warning("generic_csv_writing_flagged_spectrum", cell_id=s.cell_id, flags=s.flags)
            if math.isnan(s.soc) or math.isnan(s.soh):
                raise EisDataError(
                    f"{s.cell_id} ({s.origin}): cannot write a spectrum without soc/soh labels"
                )
            prefix = f"{s.source}/"
            cell = s.cell_id[len(prefix) :] if s.cell_id.startswith(prefix) else s.cell_id
            for f, z in zip(s.freq_hz.tolist(), s.z.tolist(), strict=True):
                writer.writerow(
                    [
                        str(i),
                        cell,
                        s.source,
                        repr(s.soc),
                        repr(s.temp_c),
                        repr(s.soh),
                        repr(f),
                        repr(z.real),
                        repr(z.imag),
                    ]
                )
