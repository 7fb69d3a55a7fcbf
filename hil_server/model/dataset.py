"""Spectra as padded numpy arrays for training and evaluation (no TensorFlow here)."""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from ..eis_data import SpectrumSet


@dataclasses.dataclass(frozen=True)
class Arrays:
    profile: npt.NDArray[np.int32]
    cell: npt.NDArray[np.int32]
    """Index into the model's cell table; 0 = the profile's typical cell (cells the model never saw)."""
    op: npt.NDArray[np.float32]
    """(n, 3): soc, temp_c, soh."""
    freq_hz: npt.NDArray[np.float32]
    z_re: npt.NDArray[np.float32]
    z_im: npt.NDArray[np.float32]
    mask: npt.NDArray[np.float32]
    """1 where a spectrum has a point; spectra shorter than the widest are padded (freq 1 Hz, mask 0)."""
    source: tuple[str, ...]
    cell_id: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.profile.shape[0])

    def take(self, index: npt.NDArray[np.int64]) -> Arrays:
        return Arrays(
            self.profile[index],
            self.cell[index],
            self.op[index],
            self.freq_hz[index],
            self.z_re[index],
            self.z_im[index],
            self.mask[index],
            tuple(self.source[i] for i in index),
            tuple(self.cell_id[i] for i in index),
        )


def every_nth_cycle(spectra: SpectrumSet, n: int) -> SpectrumSet:
    """Every n-th spectrum of each cell in cycle order, per state of charge; cells without cycle numbers
    whole. zhang2020 measured every second cycle of a cell, so neighbours are near copies."""
    if n <= 1:
        return spectra
    keep: set[int] = set()
    for cell in spectra.cells():
        of_cell = list(spectra.filter(cells=[cell]))
        if any(s.cycle is None for s in of_cell):
            keep.update(id(s) for s in of_cell)
            continue
        for soc in sorted({s.soc for s in of_cell}):
            ordered = sorted((s for s in of_cell if s.soc == soc), key=lambda s: s.cycle or 0)
            keep.update(id(s) for s in ordered[::n])
    return spectra.filter(lambda s: id(s) in keep)


def to_arrays(spectra: SpectrumSet, profiles: list[str], cells: dict[str, int]) -> Arrays:
    n = len(spectra)
    width = max((s.n_points for s in spectra), default=0)
    freq = np.ones((n, width), np.float32)
    z_re = np.zeros((n, width), np.float32)
    z_im = np.zeros((n, width), np.float32)
    mask = np.zeros((n, width), np.float32)
    for i, s in enumerate(spectra):
        k = s.n_points
        freq[i, :k] = s.freq_hz
        z_re[i, :k] = s.z.real
        z_im[i, :k] = s.z.imag
        mask[i, :k] = 1
    return Arrays(
        profile=np.array([profiles.index(s.profile) for s in spectra], np.int32),
        cell=np.array([cells.get(s.cell_id, 0) for s in spectra], np.int32),
        op=np.array([[s.soc, s.temp_c, s.soh] for s in spectra], np.float32).reshape(n, 3),
        freq_hz=freq,
        z_re=z_re,
        z_im=z_im,
        mask=mask,
        source=tuple(s.source for s in spectra),
        cell_id=tuple(s.cell_id for s in spectra),
    )


def nrmse(pred_re: npt.ArrayLike, pred_im: npt.ArrayLike, data: Arrays) -> npt.NDArray[np.float64]:
    """Per spectrum: sqrt(mean |Zpred - Zmeas|^2) / mean |Zmeas|, over its own points."""
    pr, pi = np.asarray(pred_re, np.float64), np.asarray(pred_im, np.float64)
    err2 = ((pr - data.z_re) ** 2 + (pi - data.z_im) ** 2) * data.mask
    n = data.mask.sum(axis=1)
    mag = np.hypot(data.z_re, data.z_im) * data.mask
    return np.sqrt(err2.sum(axis=1) / n) / (mag.sum(axis=1) / n)  # type: ignore[no-any-return]
