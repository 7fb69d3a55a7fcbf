"""Train/validation split by whole cell: neighbouring cycles of one cell are nearly identical, so a random
split by spectrum would leak the validation cells into training."""

from __future__ import annotations

import zlib
from collections import defaultdict

import numpy as np
import structlog

from ._schema import SpectrumSet

_log = structlog.get_logger(__name__)


def _pick(cells: list[str], n: int, seed: int, key: str) -> list[str]:
    # A stream keyed by the stratum keeps its draw stable when other sources or strata are added.
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    return [cells[int(i)] for i in rng.choice(len(cells), size=n, replace=False)]


def temperature_strata(spectra: SpectrumSet, source: str) -> dict[tuple[float, ...], list[str]]:
    """The cells of ``source`` grouped by the set of temperatures each was measured at."""
    of_source = spectra.filter(source=source)
    temps: dict[str, set[float]] = defaultdict(set)
    for s in of_source:
        temps[s.cell_id].add(s.temp_c)
    strata: dict[tuple[float, ...], list[str]] = defaultdict(list)
    for cell in of_source.cells():
        strata[tuple(sorted(temps[cell]))].append(cell)
    return strata


def split_by_cell(spectra: SpectrumSet, val_fraction: float, seed: int) -> tuple[SpectrumSet, SpectrumSet]:
    """(train, validation): each cell entirely on one side, stratified per source.

    Within a source, cells are further grouped by the set of temperatures they were measured at, so a lone
    cell of its kind (zhang2020 has a single 45 C cell) stays in training rather than taking its whole
    temperature out of it. Per group, round(val_fraction * n) cells go to validation, at least one and at
    most n - 1. A source whose groups are all single cells still gets one validation cell if it has two or
    more cells; a one-cell source stays in training. Deterministic for a given seed and set of cells.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    val_cells: set[str] = set()
    for source in spectra.sources():
        of_source = spectra.filter(source=source)
        strata = temperature_strata(spectra, source)
        picked: list[str] = []
        for key, cells in sorted(strata.items()):
            if len(cells) >= 2:
                n_val = min(max(1, round(val_fraction * len(cells))), len(cells) - 1)
                picked += _pick(cells, n_val, seed, f"{source}|{key}")
        all_cells = of_source.cells()
        if not picked and len(all_cells) >= 2:
            picked = _pick(all_cells, 1, seed, source)
        if not picked:
            _log.warning("split_source_without_validation_cell", source=source, cells=all_cells)
        val_cells.update(picked)
    train = spectra.filter(lambda s: s.cell_id not in val_cells)
    val = spectra.filter(lambda s: s.cell_id in val_cells)
    return train, val
