"""Inputs and outputs of ``eis-hil spectrum``: operating-point CSV, frequency list, result CSV."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np
import numpy.typing as npt

from hil_server.eis_data.textfile import TextFileError, read_text

POINT_COLUMNS = ("profile", "soc", "temp_c", "soh")


class InputError(ValueError):
    """A bad points or frequencies file: the message names file, line and column."""


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    profile: str
    soc: float
    temp_c: float
    soh: float


def check_point(point: OperatingPoint, where: str) -> None:
    """Every value a finite number. Their ranges are the caller's (``eis-hil spectrum`` applies those of
    the scenario keys ``cells.soc``, ``cells.temp_c``, ``cells.soh``)."""
    for name in ("soc", "temp_c", "soh"):
        value = getattr(point, name)
        if not math.isfinite(value):
            raise InputError(f"{where}: {name}={value}: expected a finite number")


def read_points(path: Path) -> list[OperatingPoint]:
    try:
        handle = io.StringIO(read_text(path), newline="")
    except TextFileError as exc:
        raise InputError(str(exc)) from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in POINT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(
                f"{path}:1: missing column(s) {', '.join(missing)} (need {','.join(POINT_COLUMNS)})"
            )
        points = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            values = {}
            for column in ("soc", "temp_c", "soh"):
                try:
                    values[column] = float(row[column])
                except (TypeError, ValueError):
                    raise InputError(
                        f"{where}: column '{column}': expected a number, got {row[column]!r}"
                    ) from None
            point = OperatingPoint((row["profile"] or "").strip(), **values)
            if not point.profile:
                raise InputError(f"{where}: column 'profile': empty")
            check_point(point, where)
            points.append(point)
    if not points:
        raise InputError(f"{path}: no operating points")
    return points


def read_freqs(path: Path) -> npt.NDArray[np.float64]:
    try:
        lines = read_text(path).splitlines()
    except TextFileError as exc:
        raise InputError(str(exc)) from None
    freqs = []
    for n, line in enumerate(lines, 1):
        text = line.split("#")[0].strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"{path}:{n}: expected a frequency in Hz, got {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{path}:{n}: frequency must be a positive number of Hz, got {value}")
        freqs.append(value)
    if not freqs:
        raise InputError(f"{path}: no frequencies")
    return np.array(freqs)


def write_spectra(
    out: TextIO,
    freq_hz: npt.NDArray[np.float64],
    z: npt.NDArray[np.complex128],
    points: Sequence[OperatingPoint] = (),
) -> None:
    """CSV ``row,profile,soc,temp_c,soh,freq_hz,z_re_ohm,z_im_ohm``; row is the 0-based index of the
    operating point, repeated with its values on each of its rows (without ``points``: ``row,freq_hz,...``).
    Numbers are written so that they read back exactly (``repr``): a row joins a user's own grid."""
    writer = csv.writer(out, lineterminator="\n")
    labels = ["profile", "soc", "temp_c", "soh"] if points else []
    writer.writerow(["row", *labels, "freq_hz", "z_re_ohm", "z_im_ohm"])
    for row in range(z.shape[0]):
        point = (
            [points[row].profile, *(repr(float(getattr(points[row], k))) for k in labels[1:])]
            if points
            else []
        )
        for f, value in zip(freq_hz, z[row], strict=True):
            writer.writerow([row, *point, repr(float(f)), repr(float(value.real)), repr(float(value.imag))])
