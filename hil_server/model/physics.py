"""The circuit of ``circuit.py`` as a differentiable Keras layer, with real arithmetic only (TFLite-friendly).

Complex numbers are carried as (re, im) pairs of float32 tensors. The expressions mirror circuit.py term by
term; tests compare the two on random parameters across the whole range.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from .circuit import SMALL_S, P

HALF_PI = math.pi / 2


def _div(ar: Any, ai: Any, br: Any, bi: Any) -> tuple[Any, Any]:
    den = br * br + bi * bi
    return (ar * br + ai * bi) / den, (ai * br - ar * bi) / den


def _cpe(w: Any, tau: Any, alpha: Any) -> tuple[Any, Any]:
    mag = ops.exp(alpha * ops.log(w * tau))
    return mag * ops.cos(alpha * HALF_PI), mag * ops.sin(alpha * HALF_PI)


def circuit_impedance(params: Any, freq_hz: Any) -> tuple[Any, Any]:
    """(re, im) of Z for params (B, N_PARAMS) and freq_hz (B, F) or (1, F)."""

    def col(i: P) -> Any:
        return params[:, int(i) : int(i) + 1]

    w = 2 * math.pi * freq_hz
    re = col(P.R0) + 0 * w
    im = 0 * w
    # L || R_L = R_L * u^2/(1+u^2) + j R_L * u/(1+u^2), u = w tau_L
    u = w * col(P.TAU_L)
    den = 1 + u * u
    re = re + col(P.R_L) * u * u / den
    im = im + col(P.R_L) * u / den
    for r, tau, a in ((P.R1, P.TAU1, P.A1), (P.R2, P.TAU2, P.A2)):
        cr, ci = _cpe(w, col(tau), col(a))
        zr, zi = _div(col(r), 0.0, 1 + cr, ci)
        re, im = re + zr, im + zi
    # Finite-space Warburg R_W coth(s)/s, s = (j w tau_W)^phi; coth(s) = (1 + e) / (1 - e), e = exp(-2s).
    sr, si = _cpe(w, col(P.TAU_W), col(P.PHI_W))
    mag2 = sr * sr + si * si
    small = mag2 < SMALL_S * SMALL_S
    sr_safe = ops.where(small, 1.0, sr)
    si_safe = ops.where(small, 0.0, si)
    decay = ops.exp(-2 * sr_safe)
    er, ei = decay * ops.cos(2 * si_safe), -decay * ops.sin(2 * si_safe)
    cr, ci = _div(1 + er, ei, 1 - er, -ei)
    wr, wi = _div(cr, ci, sr_safe, si_safe)
    # Series for small |s|: 1/s^2 + 1/3 - s^2/45.
    s2r, s2i = sr * sr - si * si, 2 * sr * si
    inv_r, inv_i = _div(1.0, 0.0, ops.where(small, s2r, 1.0), ops.where(small, s2i, 0.0))
    wr = ops.where(small, inv_r + 1 / 3 - s2r / 45, wr)
    wi = ops.where(small, inv_i - s2i / 45, wi)
    re = re + col(P.R_W) * wr
    im = im + col(P.R_W) * wi
    return re, im


@keras.saving.register_keras_serializable(package="eis_hil")
class CircuitLayer(keras.layers.Layer):  # type: ignore[misc]
    """[params (B, N_PARAMS), freq_hz (B, F)] -> [z_re (B, F), z_im (B, F)]."""

    def call(self, inputs: list[Any]) -> list[Any]:
        params, freq_hz = inputs
        re, im = circuit_impedance(params, freq_hz)
        return [re, im]
