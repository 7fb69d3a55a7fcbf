"""Lin-KK validity test (Schoenleber et al., Electrochim. Acta 131 (2014) 20-27), implemented here because
impedance.py 1.7.1's ``linKK`` breaks under numpy 2 and, as it defaults, rejects every real battery spectrum.

The spectrum is fitted by a linear least-squares model that is Kramers-Kronig consistent by construction:
R_ohm + j w L + 1/(j w C) + sum_k R_k / (1 + j w tau_k), with tau_k log-spaced from 1/w_max to 1/w_min.
M (the number of RC elements) grows from 1 until mu = 1 - sum(|R_k<0|) / sum(R_k>=0) <= c (over-fitting
shows as negative R_k), at most max_m. Residuals are relative to |Z|; a spectrum passes when the largest
residual is under a threshold. Points with Im(Z) > 0 (inductive) are dropped first, as the product's
validity criterion specifies, so cable inductance does not decide the verdict.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

DEFAULT_C = 0.85
DEFAULT_MAX_M = 50
DEFAULT_THRESHOLD = 0.02


@dataclasses.dataclass(frozen=True)
class LinKKResult:
    m: int
    mu: float
    max_residual: float
    """Largest |residual| (real or imaginary part) relative to |Z|."""
    res_re: npt.NDArray[np.float64]
    res_im: npt.NDArray[np.float64]
    n_points: int

    def passed(self, threshold: float = DEFAULT_THRESHOLD) -> bool:
        return bool(np.isfinite(self.max_residual) and self.max_residual < threshold)


def lin_kk(
    freq_hz: npt.ArrayLike,
    z: npt.ArrayLike,
    *,
    c: float = DEFAULT_C,
    max_m: int = DEFAULT_MAX_M,
    drop_inductive: bool = True,
    capacitive: bool = True,
    fixed_m: int | None = None,
    extend_decades: float = 0.0,
) -> LinKKResult:
    """The Lin-KK verdict as specified (``fixed_m`` None). With ``fixed_m`` the mu criterion is skipped and
    exactly that many RC elements are fitted: a diagnostic of consistency itself, since the mu criterion
    can stop early, at a poor fit, on spectra that are consistent (time constants outside the window)."""
    f = np.asarray(freq_hz, dtype=np.float64)
    zz = np.asarray(z, dtype=np.complex128)
    if drop_inductive:
        keep = zz.imag <= 0
        f, zz = f[keep], zz[keep]
    if f.size < 3 or not np.all(np.isfinite(zz)):
        return LinKKResult(0, float("nan"), float("inf"), np.array([]), np.array([]), int(f.size))
    w = 2 * np.pi * f
    weight = 1 / np.abs(zz)
    # extend_decades widens the time constants beyond the band (0 = as Schoenleber specifies).
    tau_lo, tau_hi = 10**-extend_decades / w.max(), 10**extend_decades / w.min()
    best: LinKKResult | None = None
    for m in range(fixed_m or 1, (fixed_m or max_m) + 1):
        taus = np.array([tau_lo]) if m == 1 else np.geomspace(tau_lo, tau_hi, m)
        rc = 1 / (1 + 1j * w[:, None] * taus[None, :])
        columns = [np.ones_like(w) + 0j, 1j * w, *([1 / (1j * w)] if capacitive else []), *rc.T]
        basis = np.column_stack(columns)
        a = np.vstack([basis.real * weight[:, None], basis.imag * weight[:, None]])
        b = np.concatenate([zz.real * weight, zz.imag * weight])
        coef, *_ = np.linalg.lstsq(a, b, rcond=None)
        r_k = coef[-m:]
        positive = r_k[r_k >= 0].sum()
        mu = 1 - np.abs(r_k[r_k < 0]).sum() / positive if positive > 0 else 0.0
        fit = basis @ coef
        res_re = (zz.real - fit.real) / np.abs(zz)
        res_im = (zz.imag - fit.imag) / np.abs(zz)
        best = LinKKResult(
            m, float(mu), float(max(np.abs(res_re).max(), np.abs(res_im).max())), res_re, res_im, int(f.size)
        )
        if mu <= c and fixed_m is None:
            break
    assert best is not None
    return best


FRAME_M = 30
FRAME_EXTEND_DECADES = 1.0
"""The per-frame validity figure fits 30 RC elements with time constants one decade beyond the band on each
side. Over the bundled model's extrapolation grid (SOC 0..1, -30..60 C, SOH 0.5..1, both profiles) a
consistent spectrum stays at or below 0.03 %, while 1 % noise gives 1.3 % or more: a 40x margin. Within the
band only (Schoenleber's choice) rashid2023's strong inductive rise alone costs 1.5 %. One least-squares
solve, about 0.35 ms for 61 points."""


def kk_residual(freq_hz: npt.ArrayLike, z: npt.ArrayLike, m: int = FRAME_M) -> float:
    """The validity figure of EIS_SPECTRUM: the largest residual, relative to |Z|, of a Lin-KK fit with a
    fixed ``m`` RC elements (plus R, L and C) over all points, time constants extended as above. NaN if the
    spectrum has fewer than ``m + 3`` finite points."""
    f = np.asarray(freq_hz, dtype=np.float64)
    zz = np.asarray(z, dtype=np.complex128)
    ok = np.isfinite(zz) & (f > 0)
    if ok.sum() < m + 3:
        return float("nan")
    result = lin_kk(f[ok], zz[ok], fixed_m=m, drop_inductive=False, extend_decades=FRAME_EXTEND_DECADES)
    return result.max_residual
