"""Reader for zhang2020 (Zhang et al., Nat. Commun. 11, 1706, 2020): coin cells, SOH x temperature x state.

Labels: state V is SOC 1.0, states I and IX are SOC 0.0; the other states carry no SOC in the files and are
only read on request (flagged `soc_unlabelled`). SOH = Q/Q0 with Q the discharge capacity of the battery
cycle paired with the EIS cycle (capacity line i <-> EIS cycle number i+1) and Q0 the first capacity line of
that cell (cycle 1). Both the pairing and the Q0 definition are checked against the independent mrs-sp22
table by `verify_zhang_pairing`.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from ._paths import data_root, require_file
from ._schema import (
    FLAG_NO_CAPACITY,
    FLAG_SOC_UNLABELLED,
    EisDataError,
    FloatArray,
    Spectrum,
    SpectrumSet,
)

SOURCE = "zhang2020"
POINTS_PER_SPECTRUM = 60
LABELLED_STATES: dict[str, float] = {"I": 0.0, "V": 1.0, "IX": 0.0}
ALL_STATES = ("I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX")
# The original archive names one state-VI file of cell 25C04 "25C42".
CELL_NAME_TYPOS = {"25C42": "25C04"}
_FILE_RE = re.compile(r"^EIS_state_(?P<state>[IVX]+)_(?P<cell>\d{2}C\d{2})\.txt$")
_N_COLUMNS = 7
# mrs-sp22 `seriesIdx` 1..8 are cells 25C01..25C08.
_MRS_SERIES = {i: f"25C{i:02d}" for i in range(1, 9)}

_log = structlog.get_logger(__name__)


def _eis_dir(root: Path) -> Path:
    return root / "eis" / SOURCE


def read_capacity(cell: str, root: str | Path | None = None) -> FloatArray:
    """Discharge capacity (mAh) per battery cycle of one cell; index i is battery cycle i+1."""
    path = require_file(_eis_dir(data_root(root)) / "capacity" / f"Capacity_data_{cell}.txt")
    values = np.array(path.read_text().split(), dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)) or not np.all(values > 0):
        raise EisDataError("capacities must be finite and > 0", path=str(path))
    return values


def soh_from_capacity(capacity: FloatArray, cycle: int) -> float:
    """Q/Q0 for an EIS cycle number (1-based); NaN when the capacity file has no line for it."""
    index = cycle - 1
    if not 0 <= index < capacity.size:
        return float("nan")
    return float(capacity[index] / capacity[0])


@dataclass(frozen=True)
class _Block:
    cycle: int
    freq_hz: FloatArray
    data: FloatArray  # rows of the file, in file order


def _is_numeric_row(line: str) -> bool:
    fields = line.split()
    try:
        [float(f) for f in fields]
    except ValueError:
        return False
    return len(fields) == _N_COLUMNS


def _parse_eis_file(path: Path) -> tuple[list[_Block], list[int]]:
    """Complete spectra of one file, and the cycle numbers of incomplete (dropped) ones."""
    text = path.read_text()
    header, _, body = text.partition("\n")
    if "-Im(Z)" not in header:
        # The 45C01 files have no header line at all: their first line is already data (same columns).
        if not _is_numeric_row(header):
            raise EisDataError(
                f"unexpected header {header.strip()!r} (the fifth column must be -Im(Z))",
                path=str(path),
                line=1,
            )
        body = text
    try:
        values = np.array(body.split(), dtype=np.float64)
    except ValueError as exc:
        raise EisDataError(f"non-numeric value: {exc}", path=str(path)) from exc
    if values.size % _N_COLUMNS:
        raise EisDataError(
            f"{values.size} values is not a whole number of {_N_COLUMNS}-column rows", path=str(path)
        )
    rows = values.reshape(-1, _N_COLUMNS)
    cycles = rows[:, 1]
    # Group by runs of the cycle-number column rather than by fixed 60-row chunks: one file has a
    # 59-row spectrum at the start, which would shift every later chunk.
    starts = np.flatnonzero(np.r_[True, cycles[1:] != cycles[:-1]])
    ends = np.r_[starts[1:], cycles.size]
    blocks: list[_Block] = []
    dropped: list[int] = []
    for start, end in zip(starts, ends, strict=True):
        cycle = round(cycles[start])
        block = rows[start:end]
        freq = block[:, 2]
        if end - start != POINTS_PER_SPECTRUM or np.unique(freq).size != POINTS_PER_SPECTRUM:
            dropped.append(cycle)
            continue
        blocks.append(_Block(cycle=cycle, freq_hz=freq, data=block))
    return blocks, dropped


@dataclass(frozen=True)
class ZhangReadReport:
    """What the reader dropped before building spectra (for the data report)."""

    incomplete: tuple[tuple[str, str, int], ...]  # (file name, cell, cycle) of spectra with != 60 points


def read_zhang2020(
    root: str | Path | None = None,
    *,
    states: tuple[str, ...] = tuple(LABELLED_STATES),
    include_flagged: bool = False,
    report: list[ZhangReadReport] | None = None,
) -> SpectrumSet:
    """All zhang2020 spectra of the given states as one SpectrumSet, sorted by cell, state, cycle.

    Flagged spectra (no capacity for the cycle, unlabelled state) are left out unless include_flagged.
    If `report` is a list, a ZhangReadReport is appended to it.
    """
    unknown = set(states) - set(ALL_STATES)
    if unknown:
        raise ValueError(f"unknown zhang2020 states {sorted(unknown)}; known: {ALL_STATES}")
    eis_dir = data_root(root) / "eis" / SOURCE / "EIS"
    if not eis_dir.is_dir():
        raise EisDataError(f"zhang2020 EIS directory not found: {eis_dir}")
    capacities: dict[str, FloatArray] = {}
    spectra: list[Spectrum] = []
    incomplete: list[tuple[str, str, int]] = []
    files_read = 0
    for path in sorted(eis_dir.glob("EIS_state_*.txt")):
        match = _FILE_RE.match(path.name)
        if match is None:
            _log.warning("zhang2020_unrecognised_file", path=str(path))
            continue
        state = match["state"]
        if state not in states:
            continue
        cell = CELL_NAME_TYPOS.get(match["cell"], match["cell"])
        if cell not in capacities:
            capacities[cell] = read_capacity(cell, root)
        temp_c = float(cell.split("C")[0])
        blocks, dropped = _parse_eis_file(path)
        files_read += 1
        incomplete.extend((path.name, cell, c) for c in dropped)
        for block in blocks:
            flags: list[str] = []
            soc = LABELLED_STATES.get(state, float("nan"))
            if state not in LABELLED_STATES:
                flags.append(FLAG_SOC_UNLABELLED)
            soh = soh_from_capacity(capacities[cell], block.cycle)
            if np.isnan(soh):
                flags.append(FLAG_NO_CAPACITY)
            if flags and not include_flagged:
                continue
            order = np.argsort(-block.freq_hz, kind="stable")
            # Column 5 is -Im(Z): negate to the standard convention (Im > 0 inductive).
            z = block.data[order, 3] - 1j * block.data[order, 4]
            spectra.append(
                Spectrum(
                    source=SOURCE,
                    cell_id=f"{SOURCE}/{cell}",
                    profile=SOURCE,
                    soc=soc,
                    temp_c=temp_c,
                    soh=soh,
                    freq_hz=block.freq_hz[order],
                    z=z,
                    cycle=block.cycle,
                    state=state,
                    flags=tuple(flags),
                    origin=f"{path.name}#cycle{block.cycle}",
                )
            )
    if files_read == 0:
        raise EisDataError(f"no zhang2020 EIS files of states {list(states)} found in {eis_dir}")
    state_rank = {s: i for i, s in enumerate(ALL_STATES)}
    spectra.sort(key=lambda s: (s.cell_id, state_rank[s.state or "I"], s.cycle or 0))
    if incomplete:
        _log.info("zhang2020_dropped_incomplete", count=len(incomplete), spectra=incomplete)
    if report is not None:
        report.append(ZhangReadReport(incomplete=tuple(incomplete)))
    return SpectrumSet(tuple(spectra))


@dataclass(frozen=True)
class PairingCheck:
    """Result of checking zhang2020 labels against the mrs-sp22 table (25 C cells, state V)."""

    rows: int  # mrs-sp22 rows compared
    cells: tuple[str, ...]
    max_abs_q_error_mah: float  # |capacity line (cycle-1) - mrs Q|, max over rows
    max_abs_soh_error: float  # |Q/Q0 (Q0 = first capacity line) - mrs q|, max over rows
    max_abs_z_error_ohm: float  # spectrum of EIS cycle `cycle` vs the mrs ZReal/ZImag columns
    best_offset: int  # capacity index - cycle that matches best (-1 means line i <-> cycle i+1)
    offset_errors: dict[int, float]  # max |Q error| for each offset tried (rows with a line at that offset)

    @property
    def verified(self) -> bool:
        # The capacity files round to 1e-5 mAh; the mrs table keeps full precision.
        return (
            self.best_offset == -1
            and self.max_abs_q_error_mah < 1e-4
            and self.max_abs_soh_error < 1e-5
            and self.max_abs_z_error_ohm == 0.0
        )


def verify_zhang_pairing(root: str | Path | None = None) -> PairingCheck:
    """Check `capacity line i <-> EIS cycle i+1` and `q = Q / Q(cycle 1)` against mrs-sp22.

    The mrs-sp22 table pairs each state-V spectrum (by cycle) with a capacity Q and q = Q/Q0. This
    compares its Q with our capacity line for several index offsets, its q with our SOH definition, and its
    impedance columns with the spectrum we read for that cycle (its ZImag holds -Im(Z), like the txt files).
    """
    base = data_root(root)
    path = require_file(base / "eis" / SOURCE / "capacity_mrs_sp22" / "data_eis_zhang2020_train_cells.csv")
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        table = np.array([[float(v) for v in row] for row in reader], dtype=np.float64)
    col = {name: i for i, name in enumerate(header)}
    re_cols = [i for i, name in enumerate(header) if name.startswith("ZReal_")]
    im_cols = [i for i, name in enumerate(header) if name.startswith("ZImag_")]
    spectra = {
        (s.cell_id.split("/")[1], s.cycle): s
        for s in read_zhang2020(root, states=("V",), include_flagged=True)
    }
    capacities: dict[str, FloatArray] = {}
    offsets = (-2, -1, 0, 1)
    offset_err = dict.fromkeys(offsets, 0.0)
    q_err = soh_err = z_err = 0.0
    cells: set[str] = set()
    for row in table:
        cell = _MRS_SERIES[int(row[col["seriesIdx"]])]
        cells.add(cell)
        cycle = int(row[col["cycle"]])
        capacity = capacities.get(cell)
        if capacity is None:
            capacity = capacities[cell] = read_capacity(cell, root)
        for off in offsets:
            idx = cycle + off
            if 0 <= idx < capacity.size:
                offset_err[off] = max(offset_err[off], abs(capacity[idx] - row[col["Q"]]))
        soh = soh_from_capacity(capacity, cycle)
        soh_err = max(soh_err, abs(soh - row[col["q"]]))
        q_err = max(q_err, abs(capacity[cycle - 1] - row[col["Q"]]))
        spectrum = spectra.get((cell, cycle))
        if spectrum is None:
            z_err = float("inf")
            continue
        # mrs columns run 20 kHz -> 20 mHz like our descending grid.
        z_err = max(
            z_err,
            float(np.max(np.abs(spectrum.z.real - row[re_cols]))),
            float(np.max(np.abs(-spectrum.z.imag - row[im_cols]))),
        )
    best = min(offset_err, key=lambda k: offset_err[k])
    return PairingCheck(
        rows=int(table.shape[0]),
        cells=tuple(sorted(cells)),
        max_abs_q_error_mah=float(q_err),
        max_abs_soh_error=float(soh_err),
        max_abs_z_error_ohm=float(z_err),
        best_offset=best,
        offset_errors={k: float(v) for k, v in offset_err.items()},
    )
