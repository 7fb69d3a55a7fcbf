"""The one schema every source lands in: `Spectrum` (one measured spectrum) and `SpectrumSet`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
ComplexArray = NDArray[np.complex128]

# Flag names are stable strings: they end up in the npz file and in the data report.
FLAG_SOC_UNLABELLED = "soc_unlabelled"
FLAG_NO_CAPACITY = "no_capacity"
FLAG_DUPLICATE = "duplicate_spectrum"
FLAG_SOC20_LIKE_SOC5 = "soc20_like_soc5"

FLAG_DESCRIPTIONS: dict[str, str] = {
    FLAG_SOC_UNLABELLED: "zhang2020 state II-IV/VI-VIII: the files give no SOC for these states",
    FLAG_NO_CAPACITY: "zhang2020 EIS cycle without a capacity line, so no SOH label",
    FLAG_DUPLICATE: "impedance bit-identical to another spectrum with other labels (a copy; label unknown)",
    FLAG_SOC20_LIKE_SOC5: "rashid2023 20 % SOC spectrum not nearer the cell's 50 % than its 5 % spectrum",
}


class EisDataError(ValueError):
    """Bad input data. `path`, `line` and `column` locate it when known (line is 1-based, as in editors)."""

    def __init__(
        self, message: str, *, path: str | None = None, line: int | None = None, column: str | None = None
    ):
        where = ""
        if path is not None:
            where = path if line is None else f"{path}:{line}"
        if column is not None:
            where = f"{where}: column '{column}'" if where else f"column '{column}'"
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.line = line
        self.column = column


class DataNotFoundError(FileNotFoundError):
    """The data directory or one of its files is missing; the message names the path that was tried."""


def _frozen_float(values: object) -> FloatArray:
    arr = np.array(values, dtype=np.float64, copy=True)
    arr.setflags(write=False)
    return arr


def _frozen_complex(values: object) -> ComplexArray:
    arr = np.array(values, dtype=np.complex128, copy=True)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Spectrum:
    """One impedance spectrum with its labels.

    `z` uses the standard sign convention (Im(Z) > 0 is inductive) whatever the source file used;
    `freq_hz` is strictly descending. `soc` and `soh` are fractions; they may be NaN only on a flagged
    spectrum (a label the source does not provide), so unflagged spectra are always fully labelled.
    """

    source: str
    cell_id: str
    profile: str
    soc: float
    temp_c: float
    soh: float
    freq_hz: FloatArray
    z: ComplexArray
    cycle: int | None = None
    state: str | None = None
    flags: tuple[str, ...] = ()
    origin: str = ""

    def __post_init__(self) -> None:
        freq = _frozen_float(self.freq_hz)
        z = _frozen_complex(self.z)
        object.__setattr__(self, "freq_hz", freq)
        object.__setattr__(self, "z", z)
        object.__setattr__(self, "flags", tuple(sorted(set(self.flags))))
        label = f"{self.cell_id} ({self.origin or self.source})"
        if freq.ndim != 1 or freq.shape != z.shape or freq.size == 0:
            raise EisDataError(f"{label}: freq_hz and z must be 1-D of equal non-zero length")
        if not (np.all(np.isfinite(freq)) and np.all(freq > 0)):
            raise EisDataError(f"{label}: frequencies must be finite and > 0")
        if freq.size > 1 and not np.all(np.diff(freq) < 0):
            raise EisDataError(f"{label}: frequencies must be strictly descending")
        if not np.all(np.isfinite(z)):
            raise EisDataError(f"{label}: impedance has NaN or infinite values")
        if not math.isfinite(self.temp_c):
            raise EisDataError(f"{label}: temp_c must be finite")
        for name in ("soc", "soh"):
            value = float(getattr(self, name))
            if math.isnan(value):
                if not self.flags:
                    raise EisDataError(f"{label}: {name} is NaN on an unflagged spectrum")
            elif not 0.0 <= value <= 1.0:
                raise EisDataError(f"{label}: {name}={value} outside 0..1")

    @property
    def n_points(self) -> int:
        return int(self.freq_hz.size)

    @property
    def ok(self) -> bool:
        """True when no quality flag is set: the spectrum is fit for training."""
        return not self.flags


@dataclass(frozen=True)
class SpectrumSet(Sequence[Spectrum]):
    """An immutable, ordered collection of spectra with bulk (numpy) views of the labels."""

    spectra: tuple[Spectrum, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, spectra: Iterable[Spectrum]) -> SpectrumSet:
        return cls(tuple(spectra))

    def __len__(self) -> int:
        return len(self.spectra)

    def __iter__(self) -> Iterator[Spectrum]:
        return iter(self.spectra)

    @overload
    def __getitem__(self, index: int) -> Spectrum: ...
    @overload
    def __getitem__(self, index: slice) -> SpectrumSet: ...
    def __getitem__(self, index: int | slice) -> Spectrum | SpectrumSet:
        if isinstance(index, slice):
            return SpectrumSet(self.spectra[index])
        return self.spectra[index]

    def __add__(self, other: SpectrumSet) -> SpectrumSet:
        return SpectrumSet(self.spectra + other.spectra)

    def filter(
        self,
        predicate: Callable[[Spectrum], bool] | None = None,
        *,
        source: str | None = None,
        profile: str | None = None,
        cells: Iterable[str] | None = None,
        include_flagged: bool = True,
    ) -> SpectrumSet:
        wanted = None if cells is None else set(cells)
        return SpectrumSet(
            tuple(
                s
                for s in self.spectra
                if (source is None or s.source == source)
                and (profile is None or s.profile == profile)
                and (wanted is None or s.cell_id in wanted)
                and (include_flagged or s.ok)
                and (predicate is None or predicate(s))
            )
        )

    def clean(self) -> SpectrumSet:
        """The spectra without any quality flag (the default training material)."""
        return self.filter(include_flagged=False)

    def flagged(self) -> SpectrumSet:
        return self.filter(lambda s: not s.ok)

    def cells(self) -> list[str]:
        return sorted({s.cell_id for s in self.spectra})

    def sources(self) -> list[str]:
        return sorted({s.source for s in self.spectra})

    def profiles(self) -> list[str]:
        return sorted({s.profile for s in self.spectra})

    @property
    def soc(self) -> FloatArray:
        return np.array([s.soc for s in self.spectra], dtype=np.float64)

    @property
    def temp_c(self) -> FloatArray:
        return np.array([s.temp_c for s in self.spectra], dtype=np.float64)

    @property
    def soh(self) -> FloatArray:
        return np.array([s.soh for s in self.spectra], dtype=np.float64)

    def labels(self) -> FloatArray:
        """Operating points as an (n, 3) array: columns soc, temp_c, soh."""
        return np.column_stack([self.soc, self.temp_c, self.soh]).reshape(len(self), 3)

    def stacked(self) -> tuple[FloatArray, ComplexArray]:
        """(freq_hz (m,), z (n, m)) when every spectrum shares one frequency grid, e.g. one source.

        Raises EisDataError when the grids differ: filter by source first.
        """
        if not self.spectra:
            raise EisDataError("stacked() of an empty SpectrumSet")
        freq = self.spectra[0].freq_hz
        for s in self.spectra:
            if s.freq_hz.shape != freq.shape or not np.array_equal(s.freq_hz, freq):
                raise EisDataError(
                    f"stacked(): {s.cell_id} has another frequency grid than {self.spectra[0].cell_id}; "
                    "filter by source first"
                )
        return freq.copy(), np.stack([s.z for s in self.spectra])
