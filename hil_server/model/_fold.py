"""The runtime's arithmetic helpers and the weights folded ahead of time (see ``runtime.py``'s docstring)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from .circuit import N_PARAMS
from .constants import ARRHENIUS, GAPS
from .weights import Weights


def softplus(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|), no overflow (np.logaddexp is ~10x slower: not SIMD)."""
    out: npt.NDArray[Any] = np.log1p(np.exp(-np.abs(x)))
    out += np.maximum(x, 0.0)
    return out


BLAS_SERIAL_MNK: Final = 65536 * 4
"""OpenBLAS splits a GEMM over threads above m * n * k = 65536 * GEMM_MULTITHREAD_THRESHOLD (4 by default).
On a loaded 2-core machine its threads wait for a core: a 1024 x 64 x 64 product measured 0.1 ms alone and
5-30 ms while other processes ran. ``matmul`` keeps every GEMM under that size (one call on a stack of
row blocks), so the runtime never starts BLAS threads."""


def matmul(x: npt.NDArray[Any], w: npt.NDArray[Any]) -> npt.NDArray[Any]:
    n, k = x.shape
    m = w.shape[1]
    rows = max(1, BLAS_SERIAL_MNK // (k * m))
    if n <= rows:
        small: npt.NDArray[Any] = x @ w
        return small
    out = np.empty((n, m), np.result_type(x, w))
    bulk = n - n % rows
    np.matmul(x[:bulk].reshape(-1, rows, k), w, out=out[:bulk].reshape(-1, rows, m))
    if bulk < n:
        np.matmul(x[bulk:], w, out=out[bulk:])
    return out


def softplus1(x: float) -> float:
    return x + math.log1p(math.exp(-x)) if x > 0.0 else math.log1p(math.exp(x))


@dataclasses.dataclass(frozen=True)
class Folded:
    """Weights rearranged for batches (see the module docstring), in the runtime's dtype."""

    w1_op: npt.NDArray[Any]
    """(3, H): rows for soc, temp_c, soh in the order of ``op``; the temperature row already divided by 20."""
    base1: npt.NDArray[Any]
    """(n_profiles, H): one-hot row + first bias - 25/20 * temperature row."""
    offsets: npt.NDArray[Any]
    """(n_cells + 1, N_PARAMS): each cell's log-offsets, added to the network's output."""
    w2: npt.NDArray[Any]
    b2: npt.NDArray[Any]
    w3: npt.NDArray[Any]
    base3: npt.NDArray[Any]
    """(n_profiles, N_PARAMS): output bias + profile bias."""
    temp_coef: npt.NDArray[Any]
    """(n_profiles, N_PARAMS) float64: what multiplies 1/T - 1/T_ref, per column: Ea/R_gas (K) in the
    Arrhenius columns, 1000 gap_temp in the two gap columns (disjoint sets, so one row serves both)."""


@dataclasses.dataclass(frozen=True)
class PointWeights:
    """The same weights for the single-point path, float64, with the biases as an extra input row: layer k
    is one ``np.dot`` of ``[x, 1]``. Each hidden matrix has one extra output column, set to 1 after the
    tanh, which feeds the next layer's bias row."""

    w1: list[npt.NDArray[np.float64]]
    """Per profile (4, H + 1): rows soc, temp_c, soh, then base1[profile]."""
    w2: npt.NDArray[np.float64]
    """(H + 1, H + 1): h2 kernel, then its bias row."""
    w3: list[npt.NDArray[np.float64]]
    """Per profile (H + 1, N_PARAMS): output kernel, then base3[profile]."""
    offsets: list[list[float]]
    temp_coef: list[list[float]]


def fold(w: Weights, dtype: type[np.floating[Any]]) -> tuple[Folded, PointWeights]:
    n_profiles = w["profile_bias"].shape[0]
    k1 = w["h1_kernel"].astype(np.float64)
    soc_row, soh_row, t_row = k1[n_profiles], k1[n_profiles + 1], k1[n_profiles + 2]
    temp_coef = np.zeros((n_profiles, N_PARAMS))
    # rounded to float32 like the Keras graph's 1000 * softplus(activation_raw)
    temp_coef[:, list(ARRHENIUS)] = np.float32(1000.0) * softplus(w["activation_raw"])
    temp_coef[:, list(GAPS)] = w["gap_temp"].astype(np.float64) * 1000.0
    cast = {
        "w1_op": np.stack([soc_row, t_row / 20.0, soh_row]),
        "base1": k1[:n_profiles] + w["h1_bias"] - 1.25 * t_row,
        "offsets": w["latent"],
        "w2": w["h2_kernel"],
        "b2": w["h2_bias"],
        "w3": w["out_kernel"],
        "base3": w["out_bias"].astype(np.float64) + w["profile_bias"],
    }
    folded = Folded(**{k: np.ascontiguousarray(v, dtype=dtype) for k, v in cast.items()}, temp_coef=temp_coef)

    def bias_row(kernel: npt.ArrayLike, bias: npt.ArrayLike, extra_column: bool) -> npt.NDArray[np.float64]:
        out = np.vstack([kernel, bias]).astype(np.float64)
        if extra_column:
            out = np.hstack([out, np.zeros((len(out), 1))])
        return np.ascontiguousarray(out)

    point = PointWeights(
        w1=[bias_row(cast["w1_op"], cast["base1"][p], True) for p in range(n_profiles)],
        w2=bias_row(cast["w2"], cast["b2"], True),
        w3=[bias_row(cast["w3"], cast["base3"][p], False) for p in range(n_profiles)],
        offsets=w["latent"].astype(np.float64).tolist(),
        temp_coef=temp_coef.tolist(),
    )
    return folded, point
