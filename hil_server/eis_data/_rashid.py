"""Reader for rashid2023 (Faraji-Niri et al., J. Energy Storage 58, 106295, 2023): second-life cells.

Standard sign already (Im > 0 inductive). soc = soc_pct/100, soh = soh_actual_pct/100 (the nominal SOH group
is wrong for some cells). Two defects of the published table are detected and flagged here:

* `duplicate_spectrum`: a spectrum bit-identical to another one with different labels (cell, temperature or
  SOC). A copy means at least one label is wrong and the table does not say which, so every member of the
  group is flagged.
* `soc20_like_soc5`: known defect, several cells' 20 % SOC spectra look like 5 % SOC. Rule, per cell and
  temperature: with d(a, b) = sqrt(mean |Za - Zb|^2) over the common frequency grid, a 20 % spectrum is
  flagged when d(Z20, Z5) <= d(Z20, Z50), i.e. it is not closer to the same cell's 50 % spectrum than to its
  5 % spectrum. On sound cells the 20 % spectrum sits near the 50 % one (d(Z20, Z5) / d(Z20, Z50) is
  3.2-7.7); flagged ones sit near the 5 % one (0.10-0.12 at 15 C, about 0.4 at 25 C). A tie only happens
  when the cell's 5 % and 50 % spectra are copies of each other: the rule then cannot vouch for the label,
  so the spectrum is flagged too.
"""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ._paths import data_root, require_file
from ._schema import FLAG_DUPLICATE, FLAG_SOC20_LIKE_SOC5, EisDataError, Spectrum, SpectrumSet

SOURCE = "rashid2023"
FILE_NAME = "rashid_eis_long_train_cells.csv"
_COLUMNS = (
    "spectrum_id",
    "cell",
    "soh_nominal_pct",
    "soh_actual_pct",
    "temp_C",
    "soc_pct",
    "freq_Hz",
    "re_Z_ohm",
    "im_Z_ohm",
)


@dataclass(frozen=True)
class RashidDefect:
    """One flagged spectrum and the evidence, for the data report."""

    cell_id: str
    temp_c: float
    soc: float
    flag: str
    detail: str


def _float(value: str, path: Path, line: int, column: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise EisDataError(
            f"expected a number, got {value!r}", path=str(path), line=line, column=column
        ) from None


def _read_rows(path: Path) -> list[Spectrum]:
    grouped: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    labels: dict[str, tuple[str, float, float, float]] = {}
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        if tuple(header) != _COLUMNS:
            raise EisDataError(
                f"expected header {','.join(_COLUMNS)}, got {','.join(header)}", path=str(path), line=1
            )
        for row in reader:
            line = reader.line_num
            if len(row) != len(_COLUMNS):
                raise EisDataError(
                    f"expected {len(_COLUMNS)} fields, got {len(row)}", path=str(path), line=line
                )
            sid, cell = row[0], row[1]
            label = (
                cell,
                _float(row[4], path, line, "temp_C"),
                _float(row[5], path, line, "soc_pct") / 100.0,
                _float(row[3], path, line, "soh_actual_pct") / 100.0,
            )
            if labels.setdefault(sid, label) != label:
                raise EisDataError(f"spectrum {sid} changes its labels", path=str(path), line=line)
            grouped[sid].append(
                (
                    _float(row[6], path, line, "freq_Hz"),
                    _float(row[7], path, line, "re_Z_ohm"),
                    _float(row[8], path, line, "im_Z_ohm"),
                )
            )
    spectra: list[Spectrum] = []
    for sid, points in grouped.items():
        cell, temp_c, soc, soh = labels[sid]
        arr = np.array(points, dtype=np.float64)
        order = np.argsort(-arr[:, 0], kind="stable")
        arr = arr[order]
        spectra.append(
            Spectrum(
                source=SOURCE,
                cell_id=f"{SOURCE}/cell{int(cell):02d}",
                profile=SOURCE,
                soc=soc,
                temp_c=temp_c,
                soh=soh,
                freq_hz=arr[:, 0],
                z=arr[:, 1] + 1j * arr[:, 2],
                origin=f"{FILE_NAME}#spectrum_id={sid}",
            )
        )
    return spectra


def _rms(a: Spectrum, b: Spectrum) -> float:
    if not np.array_equal(a.freq_hz, b.freq_hz):
        raise EisDataError(f"{a.origin} and {b.origin} have different frequency grids")
    return float(np.sqrt(np.mean(np.abs(a.z - b.z) ** 2)))


def find_defects(spectra: list[Spectrum]) -> list[RashidDefect]:
    """The defects described in the module docstring, in a stable order."""
    defects: list[RashidDefect] = []
    by_content: dict[bytes, list[Spectrum]] = defaultdict(list)
    for s in spectra:
        by_content[hashlib.sha256(s.freq_hz.tobytes() + s.z.tobytes()).digest()].append(s)
    for group in by_content.values():
        if len({(s.cell_id, s.temp_c, s.soc, s.soh) for s in group}) > 1:
            for s in group:
                twins = ", ".join(f"{o.cell_id} {o.temp_c:g} C {o.soc:.0%}" for o in group if o is not s)
                defects.append(
                    RashidDefect(s.cell_id, s.temp_c, s.soc, FLAG_DUPLICATE, f"identical to {twins}")
                )
    index = {(s.cell_id, s.temp_c, round(s.soc, 6)): s for s in spectra}
    for (cell_id, temp_c, soc), s20 in sorted(index.items()):
        if soc != 0.2:
            continue
        s5 = index.get((cell_id, temp_c, 0.05))
        s50 = index.get((cell_id, temp_c, 0.5))
        if s5 is None or s50 is None:
            continue
        d5, d50 = _rms(s20, s5), _rms(s20, s50)
        if d5 <= d50:
            ratio = "tie: 5 % and 50 % spectra identical" if d5 == d50 else f"d5/d50 = {d5 / d50:.3f}"
            defects.append(RashidDefect(cell_id, temp_c, 0.2, FLAG_SOC20_LIKE_SOC5, ratio))
    defects.sort(key=lambda d: (d.flag, d.temp_c, d.cell_id, d.soc))
    return defects


def read_rashid2023(
    root: str | Path | None = None,
    *,
    include_flagged: bool = False,
    defects: list[RashidDefect] | None = None,
) -> SpectrumSet:
    """All rashid2023 spectra, sorted by cell, temperature, SOC; flagged ones only if include_flagged.

    If `defects` is a list, the detected defects are appended to it (for the data report).
    """
    path = require_file(data_root(root) / "eis" / SOURCE / FILE_NAME)
    spectra = _read_rows(path)
    if not spectra:
        raise EisDataError("no spectra", path=str(path))
    found = find_defects(spectra)
    if defects is not None:
        defects.extend(found)
    flags: dict[tuple[str, float, float], set[str]] = defaultdict(set)
    for d in found:
        flags[(d.cell_id, d.temp_c, d.soc)].add(d.flag)
    out: list[Spectrum] = []
    for s in spectra:
        f = flags.get((s.cell_id, s.temp_c, s.soc))
        if f and not include_flagged:
            continue
        out.append(replace(s, flags=tuple(f)) if f else s)
    out.sort(key=lambda s: (s.cell_id, s.temp_c, s.soc))
    return SpectrumSet(tuple(out))
