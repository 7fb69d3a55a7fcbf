"""All sources at once, and the text of the data report (the ingest tool prints it)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from ._generic import read_generic_csv
from ._paths import DEFAULT_DATA_ROOT, ENV_VAR
from ._rashid import RashidDefect, read_rashid2023
from ._schema import FLAG_DESCRIPTIONS, SpectrumSet
from ._shipped import TRAINING_SET_PATH, load_training_set
from ._simulated import SIMULATED_SOURCE, read_pybamm_chen2020
from ._zhang import (
    ALL_STATES,
    LABELLED_STATES,
    PairingCheck,
    ZhangReadReport,
    read_zhang2020,
    verify_zhang_pairing,
)

_log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Collection:
    """Every spectrum read (flagged ones included) plus what the readers found on the way."""

    spectra: SpectrumSet
    zhang: ZhangReadReport
    rashid_defects: tuple[RashidDefect, ...]
    pairing: PairingCheck | None


def measured_data_available(root: str | os.PathLike[str] | None = None) -> bool:
    """False only when nothing names a data directory (no parameter, no $EIS_HIL_DATA) and the default
    <repo>/../shared/data does not exist: the one case where the shipped training set stands in."""
    return root is not None or bool(os.environ.get(ENV_VAR)) or DEFAULT_DATA_ROOT.is_dir()


def load_all(
    root: str | os.PathLike[str] | None = None,
    extra_csvs: Iterable[str | os.PathLike[str]] = (),
    *,
    include_flagged: bool = False,
    simulated: bool = False,
) -> SpectrumSet:
    """zhang2020 (labelled states), rashid2023, with ``simulated`` the PyBaMM source, and generic CSV files;
    flagged spectra left out by default.

    Without a data directory (see `measured_data_available`) the measured spectra come from the shipped
    training set instead (the same clean spectra, in the same order, so the same content hash); it holds no
    flagged spectra, so ``include_flagged`` cannot add any then.
    """
    if not measured_data_available(root):
        _log.warning(
            "measured data directory absent, using the shipped training set",
            tried=str(DEFAULT_DATA_ROOT),
            training_set=str(TRAINING_SET_PATH),
        )
        if include_flagged:
            _log.warning("the shipped training set holds no flagged spectra; include_flagged adds none")
        spectra = load_training_set()
        if not simulated:
            spectra = spectra.filter(lambda s: s.source != SIMULATED_SOURCE)
    else:
        root_arg = None if root is None else Path(root)
        spectra = read_zhang2020(root_arg, include_flagged=include_flagged) + read_rashid2023(
            root_arg, include_flagged=include_flagged
        )
        if simulated:
            spectra = spectra + read_pybamm_chen2020()
    for path in extra_csvs:
        spectra = spectra + read_generic_csv(path)
    return spectra


def collect(
    root: str | os.PathLike[str] | None = None,
    extra_csvs: Iterable[str | os.PathLike[str]] = (),
    *,
    all_zhang_states: bool = True,
    check_pairing: bool = True,
    simulated: bool = False,
) -> Collection:
    """Like load_all with include_flagged, keeping the readers' findings for the report. Needs the measured
    data directory (the report is about the raw sources)."""
    root_arg = None if root is None else Path(root)
    zhang_reports: list[ZhangReadReport] = []
    defects: list[RashidDefect] = []
    states = ALL_STATES if all_zhang_states else tuple(LABELLED_STATES)
    spectra = read_zhang2020(root_arg, states=states, include_flagged=True, report=zhang_reports)
    spectra = spectra + read_rashid2023(root_arg, include_flagged=True, defects=defects)
    if simulated:
        spectra = spectra + read_pybamm_chen2020()
    for path in extra_csvs:
        spectra = spectra + read_generic_csv(path)
    pairing = verify_zhang_pairing(root_arg) if check_pairing else None
    return Collection(spectra, zhang_reports[0], tuple(defects), pairing)


def _range(values: np.ndarray[tuple[int], np.dtype[np.float64]], fmt: str) -> str:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return "n/a"
    lo, hi = float(finite.min()), float(finite.max())
    return format(lo, fmt) if lo == hi else f"{format(lo, fmt)}..{format(hi, fmt)}"


def _levels(values: np.ndarray[tuple[int], np.dtype[np.float64]], fmt: str, limit: int = 8) -> str:
    uniq = np.unique(values[np.isfinite(values)])
    if uniq.size > limit:
        return f"{uniq.size} distinct"
    return "{" + ", ".join(format(float(v), fmt) for v in uniq) + "}"


def _group_lines(spectra: SpectrumSet) -> list[str]:
    lines: list[str] = []
    for source in spectra.sources():
        for profile in spectra.filter(source=source).profiles():
            group = spectra.filter(source=source, profile=profile)
            points = Counter(s.n_points for s in group)
            f_hi = max(float(s.freq_hz[0]) for s in group)
            f_lo = min(float(s.freq_hz[-1]) for s in group)
            zabs = np.concatenate([np.abs(s.z) for s in group])
            lines += [
                f"  {source} / profile {profile}: {len(group.cells())} cells, {len(group)} spectra",
                f"    cells:      {', '.join(c.split('/', 1)[1] for c in group.cells())}",
                f"    frequency:  {f_hi:.4g} Hz .. {f_lo:.4g} Hz, points per spectrum "
                + ", ".join(f"{n} (x{k})" for n, k in sorted(points.items())),
                f"    SOC:        {_range(group.soc, '.2f')}  levels {_levels(group.soc, '.2f')}",
                f"    temp C:     {_range(group.temp_c, 'g')}  levels {_levels(group.temp_c, 'g')}",
                f"    SOH:        {_range(group.soh, '.4f')}",
                f"    |Z| ohm:    {_range(zabs, '.4g')}",
            ]
    return lines


def format_report(collection: Collection) -> str:
    """The data report: what is used for training, per source and profile, and what is excluded and why."""
    everything = collection.spectra
    used = everything.clean()
    out = [
        "EIS data report",
        f"used for training: {len(used)} spectra, {len(used.cells())} cells, "
        f"sources {', '.join(used.sources())}",
        "",
        "Per source and profile (spectra used for training):",
        *_group_lines(used),
        "",
        f"Excluded: {len(everything) - len(used)} spectra (a spectrum may carry several flags)",
    ]
    for source in everything.sources():
        excluded = everything.filter(source=source).flagged()
        if not len(excluded):
            continue
        by_flag = Counter(flag for s in excluded for flag in s.flags)
        out.append(f"  {source}: {len(excluded)} spectra")
        for flag, count in sorted(by_flag.items()):
            cells = Counter(s.cell_id.split("/", 1)[1] for s in excluded if flag in s.flags)
            cell_text = ", ".join(f"{c} ({n})" for c, n in sorted(cells.items()))
            out.append(f"    {flag}: {count} - {FLAG_DESCRIPTIONS.get(flag, '')}")
            out.append(f"      cells: {cell_text}")
    if collection.rashid_defects:
        out.append("  rashid2023 defects in detail:")
        out += [
            f"    {d.flag}: {d.cell_id.split('/', 1)[1]} {d.temp_c:g} C SOC {d.soc:.0%} ({d.detail})"
            for d in collection.rashid_defects
        ]
    incomplete = collection.zhang.incomplete
    out.append(f"  zhang2020 incomplete spectra dropped while reading (!= 60 points): {len(incomplete)}")
    out += [f"    {name} cycle {cycle}" for name, _, cycle in incomplete]
    pairing = collection.pairing
    if pairing is not None:
        offsets = ", ".join(f"{k:+d}: {v:.3g} mAh" for k, v in sorted(pairing.offset_errors.items()))
        out += [
            "",
            f"zhang2020 capacity pairing vs mrs-sp22 ({pairing.rows} rows, "
            f"cells {', '.join(pairing.cells)}): " + ("VERIFIED" if pairing.verified else "NOT VERIFIED"),
            f"  line i <-> EIS cycle i+1 (best offset {pairing.best_offset:+d}); "
            f"max |Q error| per offset: {offsets}",
            f"  SOH = Q/Q(cycle 1): max |error| vs mrs q {pairing.max_abs_soh_error:.2g}; "
            f"spectra vs mrs Z columns: max |error| {pairing.max_abs_z_error_ohm:.2g} ohm",
        ]
    return "\n".join(out)
