"""The equivalent circuit behind every spectrum, in numpy (float64), vectorised over cells and frequencies.

    Z(w) = R0 + (L || R_L) + ZARC_1 + ZARC_2 + W_fs

    L || R_L      R_L * jw tau_L / (1 + jw tau_L),            tau_L = L / R_L   (HF inductive rise of Re)
    ZARC_k        R_k / (1 + (jw tau_k)^a_k),                  a_k in (0.5, 1]   (SEI, charge transfer)
    W_fs          R_W * coth(s) / s,  s = (jw tau_W)^phi,      phi in (0.3, 0.5] (finite-space diffusion)

Each element is analytic in the right half-plane and vanishes or stays bounded at infinite frequency, so it
is Kramers-Kronig consistent, and so is their sum. Re(Z) > 0 for positive parameters. The element set was
chosen by per-spectrum least-squares fits of the training data (docs in the model README); the finite-space
Warburg with a free exponent fits rashid2023 at 0.9 % median NRMSE, against 1.2 % with phi fixed at 0.5
and 1.9 % with a transmissive (tanh) Warburg.

The Keras physics layer (``physics.py``) computes the same expressions with real arithmetic only.
"""

from __future__ import annotations

import enum

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]


class P(enum.IntEnum):
    """Column of each circuit parameter in a parameter array (..., N_PARAMS). Units: R0, R_L, R1, R2 and
    R_W in ohm, the time constants TAU_* in s; A1, A2 and PHI_W are dimensionless."""

    R0 = 0
    R_L = 1
    TAU_L = 2
    R1 = 3
    TAU1 = 4
    A1 = 5
    R2 = 6
    TAU2 = 7
    A2 = 8
    R_W = 9
    TAU_W = 10
    PHI_W = 11


N_PARAMS = len(P)
RESISTANCES = (P.R0, P.R1, P.R2, P.R_W)
"""Resistances that follow Arrhenius in temperature and grow as the cell ages."""

SMALL_S = 1e-2
"""Below this |s| the Warburg uses its series, avoiding cancellation in 1 - exp(-2s)."""


def _cpe(w: F64, tau: F64, alpha: F64) -> C128:
    """(j w tau)^alpha via its polar form, exact for w tau > 0."""
    mag = (w * tau) ** alpha
    angle = alpha * (np.pi / 2)
    out: C128 = mag * (np.cos(angle) + 1j * np.sin(angle))
    return out


def warburg_fs(w: F64, r_w: F64, tau_w: F64, phi: F64) -> C128:
    """Finite-space (reflective) Warburg R_W coth(s)/s with s = (j w tau_W)^phi."""
    s = _cpe(w, tau_w, phi)
    small = np.abs(s) < SMALL_S
    s_safe = np.where(small, 1.0, s)
    e = np.exp(-2 * s_safe)
    coth_over_s = (1 + e) / ((1 - e) * s_safe)
    series = 1 / s**2 + 1 / 3 - s**2 / 45 if np.any(small) else 0
    out: C128 = np.asarray(r_w * np.where(small, series, coth_over_s), dtype=np.complex128)
    return out


def impedance(params: npt.ArrayLike, freq_hz: npt.ArrayLike) -> C128:
    """Z for params (..., N_PARAMS) and frequencies broadcastable against params[..., :1] (e.g. (n, F))."""
    p = np.asarray(params, dtype=np.float64)
    f = np.asarray(freq_hz, dtype=np.float64)
    w = 2 * np.pi * f

    def col(i: P) -> F64:
        return p[..., i, None] if f.ndim and p.ndim else p[..., i]

    z = col(P.R0) + 0j
    jwl = 1j * w * col(P.TAU_L)
    z = z + col(P.R_L) * jwl / (1 + jwl)
    z = z + col(P.R1) / (1 + _cpe(w, col(P.TAU1), col(P.A1)))
    z = z + col(P.R2) / (1 + _cpe(w, col(P.TAU2), col(P.A2)))
    z = z + warburg_fs(w, col(P.R_W), col(P.TAU_W), col(P.PHI_W))
    out: C128 = np.asarray(z, dtype=np.complex128)
    return out
