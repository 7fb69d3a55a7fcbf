"""Drive-cycle CSV profiles: the bundled ones (package data in ``scenario/drive_cycles/``) and users' files.

A profile file has comment lines starting with ``#``, then rows ``time_s,value``; time strictly increasing and
every value finite. Values are A (current) or W (power); the bundled WLTC file is in kW and converted here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._model import DriveCycle, DriveSignal

BUNDLED_DIR = Path(__file__).resolve().parent / "drive_cycles"
MAX_CSV_BYTES = 16 << 20
MAX_ROWS = 1_000_000


@dataclass(frozen=True)
class _Bundled:
    file: str
    signal: DriveSignal
    to_si: float
    """Factor from the file's unit to A or W."""


BUNDLED: dict[str, _Bundled] = {
    # PyBaMM 23.9 profiles for a ~5 Ah cell (peak 8.1 A); WLTC is a vehicle power trace in kW.
    "US06": _Bundled("US06.csv", "current", 1.0),
    "UDDS": _Bundled("UDDS.csv", "current", 1.0),
    "WLTC": _Bundled("WLTC.csv", "power", 1000.0),
}


class DriveCycleError(Exception):
    def __init__(self, file: Path, line: int | None, message: str) -> None:
        super().__init__(message)
        self.file = file
        self.line = line
        self.message = message


def load_drive_cycle(path: Path, name: str, signal: DriveSignal, to_si: float = 1.0) -> DriveCycle:
    """Read and check one profile; DriveCycleError names the file and line of the first problem."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CSV_BYTES + 1)
    except FileNotFoundError:
        raise DriveCycleError(path, None, f"drive cycle file not found: {path}") from None
    except OSError as exc:
        raise DriveCycleError(path, None, f"cannot read drive cycle file {path}: {exc.strerror}") from None
    if len(raw) > MAX_CSV_BYTES:
        raise DriveCycleError(path, None, f"drive cycle file larger than {MAX_CSV_BYTES} bytes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DriveCycleError(path, None, "drive cycle file is not UTF-8 text") from None
    times: list[float] = []
    values: list[float] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = [f.strip() for f in stripped.split(",")]
        if len(fields) != 2:
            raise DriveCycleError(path, lineno, f"expected 2 columns (time_s,value), got {len(fields)}")
        try:
            t, v = float(fields[0]), float(fields[1])
        except ValueError:
            raise DriveCycleError(path, lineno, f"expected two numbers, got {stripped[:40]!r}") from None
        if not (math.isfinite(t) and math.isfinite(v)):
            raise DriveCycleError(path, lineno, "time and value must be finite")
        if times and t <= times[-1]:
            raise DriveCycleError(path, lineno, f"time must increase strictly ({t:g} after {times[-1]:g})")
        if t < 0:
            raise DriveCycleError(path, lineno, f"time must be >= 0, got {t:g}")
        times.append(t)
        values.append(v * to_si)
        if len(times) > MAX_ROWS:
            raise DriveCycleError(path, lineno, f"more than {MAX_ROWS} rows")
    if len(times) < 2:
        raise DriveCycleError(path, None, "a drive cycle needs at least 2 rows")
    time_s = np.asarray(times, dtype=np.float64)
    value = np.asarray(values, dtype=np.float64)
    time_s.setflags(write=False)
    value.setflags(write=False)
    return DriveCycle(name=name, source=path, signal=signal, time_s=time_s, value=value)
