"""Inference without TensorFlow: the PINN's weights evaluated in numpy, the circuit vectorised over cells and
frequencies.

The ``.keras`` file stays the source of truth; ``weights.py`` reads its weights with h5py and caches them as
an ``.npz``, so a warm start is numpy only: importing TensorFlow costs seconds and a streaming server must not
pay for it. Nothing is fixed but the ParamNet layout: the number of profiles, cells and hidden units come from
the weights.

The arithmetic mirrors ``pinn.ParamNet`` and ``physics.CircuitLayer`` (parity-tested against the Keras model
on random inputs across the whole input range), with constants folded ahead of time (``_fold.py``):
- the one-hot profile input and the first bias become a per-profile row of the first layer,
  ``(temp_c - 25) / 20`` is folded into the first kernel, so layer 1 is one matmul on ``op`` as given;
- the output bias and the per-profile bias become one per-profile row;
- the activation energies ``1000 softplus(activation_raw)`` and the ``gap_temp`` terms are per-profile rows;
- the circuit works on the clipped log-parameters: ``|(j w tau)^a| = exp(a log w + a log tau)`` needs no log
  per point, and ``log w`` is computed once per frequency vector (cached by value).

Two paths (where the time went before: one operating point spent ~20 us in numpy calls on 12-element arrays
and ~30 us in complex64 exp, which numpy does not vectorise; 1024 cells spent most of theirs in complex exp
and division, 15-35 and 5 ns a value against 0.1-0.4 ns for real float32 passes, and in OpenBLAS threads):
- one operating point: three ``np.dot`` of float64 vectors with the biases as an extra input row, the
  transforms on Python floats, the circuit as ~20 numpy calls on (4, F) complex128 arrays (~25 us);
- batches: the network in the runtime's dtype in GEMMs small enough to stay single-threaded, the transforms
  per cell in float64, a per-cell coefficient table, then the circuit in real arithmetic, float32 by default,
  ~60 passes over (cells, F) arrays in blocks of ``BLOCK_POINTS`` values that stay in L2.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import structlog

from ._fold import fold, matmul, softplus, softplus1
from .circuit import SMALL_S, P
from .constants import KELVIN, LOG_MAX, LOG_MIN, T_REF_K
from .store import BUNDLED_MODEL_DIR, ModelLoadError, ModelMetadata, read_metadata
from .weights import Weights, check_shapes, load_weights

log = structlog.get_logger(__name__)

MIN_TEMP_C: Final = -273.0
"""Operating points at or below this are refused (1/T would divide by zero or change sign)."""

F32 = npt.NDArray[np.float32]


@dataclasses.dataclass(frozen=True)
class _Grid:
    """Constants of one frequency vector, cached by its bytes (a server asks for the same grid every step)."""

    logw: npt.NDArray[np.float64]
    """(F,) log(2 pi f)."""
    g: npt.NDArray[np.float64]
    """(2, F): [log w; 1], so that ``[[a, a log tau]] @ g`` is a log(w tau)^a for every element at once."""
    logw_min: float
    w_t: npt.NDArray[Any]
    """(F,) 2 pi f in the runtime's dtype."""
    logw_t: npt.NDArray[Any]
    """(F,) log(2 pi f) in the runtime's dtype."""


GRID_CACHE_SIZE: Final = 16
_HALF_PI: Final = math.pi / 2
_EXP_MID: Final = np.array([0.75, 0.75, 0.4])
_EXP_SCALE: Final = np.array([0.25, 0.25, 0.1])
"""a1, a2 = 0.5 + 0.5 sigmoid(x) = 0.75 + 0.25 tanh(x/2); phi_W = 0.3 + 0.2 sigmoid = 0.4 + 0.1 tanh(x/2)."""
_COS, _SIN = math.cos, math.sin

# Columns of the per-cell coefficient table of the batch circuit (all (n,) quantities the (n, F) passes need).
_C_TAU_L, _C_RL, _C_R0 = 0, 1, 2
_C_ZARC = (3, 9)
"""Start of each ZARC's six columns: a, a log tau, R, 2 cos(a pi/2), cos(a pi/2), sin(a pi/2)."""
_C_W = 15
"""Start of the Warburg's seven: phi, phi log tau_W, R_W, -2 cos, 2 sin, cos, sin (of phi pi/2)."""
_N_COEF: Final = 22
BLOCK_POINTS: Final = 512 * 60
"""Cells x frequencies per block of the batch circuit: 7 float32 work arrays of this size take 860 kB, inside
a 1 MB L2 (blocks of 256, 512 and 1024 cells x 60 took 1.22, 1.14 and 1.13 ms for 1024 cells; 128, 1.40)."""
DECAY_FLOOR: Final = -80.0
"""Floor of -2 Re(s) in the Warburg: exp below -87 is subnormal in float32 (~100x slower on x86), and
e^-80 is nothing next to 1 in 1 - e^-2s."""


class NumpyPinn:
    """The PINN's inference in numpy: parameters and spectra for batches of operating points.

    ``op`` rows are ``[soc, temp_c, soh]`` as in the Keras model. Each operating point is evaluated for its
    ``profile`` index and either its ``cell`` index (0 = the profile's typical cell, 1.. = training cells, see
    ``cells``) or an explicit ``latent`` vector (a calibrated profile: log-offsets (N_PARAMS,) of the circuit
    parameters, added to the network's raw output like a training cell's row).

    Two paths, both parity-tested against Keras:
    - one operating point (the server's call): the network as three ``np.dot`` of float64 vectors, the
      parameter transforms in Python floats, the circuit as a few complex128 operations on (4, F) arrays
      (float64 whatever ``dtype``: numpy's complex128 exp is faster than its complex64 one);
    - batches: the network in ``dtype``, the transforms per cell in float64, and the circuit in real
      arithmetic, ``dtype``, in blocks of ``BLOCK_POINTS`` values (numpy's float32 exp, cos, sin are SIMD;
      its complex exp and division are not: 15-35 and 5 ns a value, against 0.1-0.4 ns for real passes).

    ``dtype`` float32 (default, the fast one for batches) computes what the Keras model computes in its own
    precision; float64 gives the same values with less rounding. Spectra are complex64 or complex128 to match.
    The only state that changes after construction is a small cache of frequency grids (dict operations,
    atomic under the GIL): calls from several threads are safe."""

    def __init__(
        self, weights: Weights, meta: ModelMetadata, dtype: type[np.floating[Any]] = np.float32
    ) -> None:
        problem = check_shapes(weights, len(meta.profiles), len(meta.cells), meta.path)
        if problem:
            raise ModelLoadError(f"{meta.path}: {problem}")
        self.meta = meta
        self.profiles: list[str] = list(meta.profiles)
        self.cells: dict[str, int] = dict(meta.cells)
        self.latent_dim: int = int(weights["latent"].shape[1])
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.complex_dtype = np.result_type(self.dtype, np.complex64)
        self._f32 = self.dtype == np.float32
        self._w, self._pw = fold(weights, dtype)
        self._n_profiles = len(self.profiles)
        self._n_cells = len(self.cells)
        self._one = self.dtype.type(1.0)
        self._kelvin = self.dtype.type(KELVIN)
        self._inv_t_ref = self.dtype.type(1.0 / T_REF_K)
        # The typical cell (index 0) is offset 0 by definition (pinn.ParamNet masks its row of the table):
        # its stored row is ignored, so models trained before that rule give the same answer here as in Keras.
        self._w.offsets[0] = 0
        self._pw.offsets[0] = [0.0] * self.latent_dim
        self._grids: dict[bytes, _Grid] = {}

    @classmethod
    def load(
        cls,
        model_dir: Path | str = BUNDLED_MODEL_DIR,
        *,
        cache_dir: Path | None = None,
        dtype: type[np.floating[Any]] = np.float32,
        rebuild: bool = True,
    ) -> NumpyPinn:
        """From a model directory (model.keras + metadata.json); ModelLoadError names the file and why."""
        meta = read_metadata(Path(model_dir))
        weights, origin = load_weights(meta, cache_dir=cache_dir, rebuild=rebuild)
        log.debug("numpy pinn loaded", model=str(meta.path), weights_from=origin)
        return cls(weights, meta, dtype)

    @property
    def model_sha256(self) -> str:
        return self.meta.model_sha256

    def profile_index(self, profile: str) -> int:
        return self.meta.profile_index(profile)

    # ---- public API ----------------------------------------------------------------------------------

    def params(
        self,
        profile: npt.ArrayLike,
        op: npt.ArrayLike,
        latent: npt.ArrayLike | None = None,
        *,
        cell: npt.ArrayLike | None = None,
    ) -> npt.NDArray[Any]:
        """Circuit parameters (n, N_PARAMS) in physical units, columns as ``circuit.P``, in ``dtype``."""
        point = self._as_point(profile, op, cell, latent)
        if point is not None:
            lp = np.array([self._point_log_params(*point)])
        else:
            lp = self._log_params(profile, op, cell, latent)
        out = np.exp(lp)
        out[:, P.A1 :: 3] = lp[:, P.A1 :: 3]
        result: npt.NDArray[Any] = out.astype(self.dtype, copy=False)
        return result

    def impedance(
        self,
        profile: npt.ArrayLike,
        op: npt.ArrayLike,
        freq_hz: npt.ArrayLike,
        latent: npt.ArrayLike | None = None,
        *,
        cell: npt.ArrayLike | None = None,
    ) -> npt.NDArray[Any]:
        """Z (n, F), complex, for n operating points at the frequencies ``freq_hz`` (F,) (shared by all)."""
        grid = self._grid(freq_hz)
        point = self._as_point(profile, op, cell, latent)
        if point is not None:
            z = self._point_circuit(self._point_log_params(*point), grid)
            result: npt.NDArray[Any] = z.astype(self.complex_dtype, copy=False)
            return result
        return self._batch_circuit(self._log_params(profile, op, cell, latent), grid)

    # ---- inputs --------------------------------------------------------------------------------------

    def _grid(self, freq_hz: npt.ArrayLike) -> _Grid:
        freq = np.asarray(freq_hz, dtype=np.float64)
        key = freq.tobytes()
        grid = self._grids.get(key)
        if grid is not None and len(freq) == len(grid.logw):
            return grid
        if freq.ndim != 1 or not len(freq):
            raise ValueError(f"freq_hz must be one shared frequency vector (F,), got shape {freq.shape}")
        if not (np.isfinite(freq).all() and (freq > 0).all()):
            raise ValueError("freq_hz must be positive and finite")
        # As Keras gets them: float32 frequencies, then 2 pi f.
        w = np.asarray(freq, self.dtype) * self.dtype.type(2 * np.pi)
        logw = np.log(w.astype(np.float64))
        grid = _Grid(
            logw=logw,
            g=np.ascontiguousarray(np.stack([logw, np.ones_like(logw)])),
            logw_min=float(logw.min()),
            w_t=w,
            logw_t=logw.astype(self.dtype),
        )
        if len(self._grids) >= GRID_CACHE_SIZE:
            self._grids.pop(next(iter(self._grids)), None)
        self._grids[key] = grid
        return grid

    def _check_index(self, value: npt.ArrayLike, limit: int, what: str) -> npt.NDArray[np.intp] | int:
        if isinstance(value, int | np.integer):  # the common single-point call: no array round trip
            if not 0 <= value < limit:
                raise ValueError(f"{what} index {int(value)} out of range 0..{limit - 1}")
            return int(value)
        idx = np.asarray(value, dtype=np.intp)
        if idx.size and (idx.min() < 0 or idx.max() >= limit):
            raise ValueError(f"{what} indices must be in 0..{limit - 1}")
        return idx

    def _as_point(
        self,
        profile: npt.ArrayLike,
        op: npt.ArrayLike,
        cell: npt.ArrayLike | None,
        latent: npt.ArrayLike | None,
    ) -> tuple[int, list[float], int, list[float] | None] | None:
        """(profile, [soc, temp_c, soh], cell, latent) for one operating point with scalar indices, else
        None (the batch path)."""
        if not isinstance(profile, int | np.integer) or not (
            cell is None or isinstance(cell, int | np.integer)
        ):
            return None
        ops = np.asarray(op, dtype=self.dtype)
        if ops.shape not in ((3,), (1, 3)):
            return None
        prof = self._check_index(profile, self._n_profiles, "profile")
        lat: list[float] | None = None
        if latent is not None:
            if cell is not None:
                raise ValueError("give a cell index or a latent vector, not both")
            lat_arr = np.asarray(latent, dtype=self.dtype)
            if lat_arr.shape not in ((self.latent_dim,), (1, self.latent_dim)):
                return None  # let the batch path explain what is wrong
            lat = lat_arr.ravel().tolist()
        c = 0 if cell is None else self._check_index(cell, self._n_cells + 1, "cell")
        values: list[float] = ops.ravel().tolist()
        if not (math.isfinite(values[0]) and math.isfinite(values[2]) and MIN_TEMP_C < values[1] < math.inf):
            raise ValueError(f"op must be finite with temp_c above {MIN_TEMP_C} C, got {values}")
        return int(prof), values, int(c), lat

    # ---- one operating point -------------------------------------------------------------------------

    def _point_log_params(
        self, prof: int, op: list[float], cell: int, latent: list[float] | None
    ) -> list[float]:
        """Log-parameters of one operating point as Python floats (A1, A2, PHI_W hold the exponents)."""
        pw = self._pw
        soc, temp_c, soh = op
        h = np.dot(np.array((soc, temp_c, soh, 1.0)), pw.w1[prof])
        np.tanh(h, out=h)
        h[-1] = 1.0
        h = np.dot(h, pw.w2)
        np.tanh(h, out=h)
        h[-1] = 1.0
        raw: list[float] = np.dot(h, pw.w3[prof]).tolist()
        if latent is not None:
            raw = [r + o for r, o in zip(raw, latent, strict=True)]
        elif cell:
            raw = [r + o for r, o in zip(raw, pw.offsets[cell], strict=True)]
        # 1/T - 1/T_ref with Keras's float32 rounding (a float32 model's Arrhenius factors carry it)
        if self._f32:
            t32 = np.float32(temp_c)
            inv_t = float(np.float32(1.0) / (t32 + np.float32(KELVIN)) - np.float32(1.0 / T_REF_K))
        else:
            inv_t = 1.0 / (temp_c + KELVIN) - 1.0 / T_REF_K
        tc = pw.temp_coef[prof]
        lo, hi = LOG_MIN, LOG_MAX
        c = [(lo if r < lo else hi if r > hi else r) + k * inv_t for r, k in zip(raw, tc, strict=True)]
        c[P.TAU2] = c[P.TAU1] + softplus1(raw[P.TAU2] + tc[P.TAU2] * inv_t)
        c[P.TAU_W] = c[P.TAU2] + softplus1(raw[P.TAU_W] + tc[P.TAU_W] * inv_t)
        lp = [lo if v < lo else hi if v > hi else v for v in c]
        # a = 0.5 + 0.5 sigmoid(x) = 0.75 + 0.25 tanh(x/2); phi = 0.3 + 0.2 sigmoid(x) = 0.4 + 0.1 tanh(x/2)
        lp[P.A1] = 0.75 + 0.25 * math.tanh(0.5 * raw[P.A1])
        lp[P.A2] = 0.75 + 0.25 * math.tanh(0.5 * raw[P.A2])
        lp[P.PHI_W] = 0.4 + 0.1 * math.tanh(0.5 * raw[P.PHI_W])
        return lp

    def _point_circuit(self, lp: list[float], grid: _Grid) -> npt.NDArray[np.complex128]:
        """Z (1, F) complex128 of one operating point."""
        a1, a2, phi = lp[P.A1], lp[P.A2], lp[P.PHI_W]
        lt_w = lp[P.TAU_W]
        # s_k = (j w tau_k)^a_k = |.| e^{j a_k pi/2} for L||R (a = 1), both ZARCs and the Warburg: (4, F)
        coef = np.array(((1.0, lp[P.TAU_L]), (a1, a1 * lp[P.TAU1]), (a2, a2 * lp[P.TAU2]), (phi, phi * lt_w)))
        mag = np.exp(coef @ grid.g)
        t1, t2, tw = a1 * _HALF_PI, a2 * _HALF_PI, phi * _HALF_PI
        rot = np.array(
            (
                (1j,),
                (complex(_COS(t1), _SIN(t1)),),
                (complex(_COS(t2), _SIN(t2)),),
                (complex(_COS(tw), _SIN(tw)),),
            )
        )
        s = mag * rot
        r0, r_l, r1, r2, r_w = (math.exp(lp[i]) for i in (P.R0, P.R_L, P.R1, P.R2, P.R_W))
        # R0 + R_L - R_L/(1 + ju) + R1/(1 + s1) + R2/(1 + s2): L||R_L = R_L ju/(1 + ju) = R_L - R_L/(1 + ju)
        den = s[:3]
        den += 1.0
        np.reciprocal(den, out=den)
        z = np.array((complex(-r_l), complex(r1), complex(r2))) @ den
        # Finite-space Warburg R_W coth(s)/s, coth(s) = (1 + e) / (1 - e), e = exp(-2 s)
        sw = s[3]
        small = None
        if math.exp(phi * (grid.logw_min + lt_w)) < SMALL_S:  # |s| grows with w: smallest at the lowest
            small = mag[3] < SMALL_S
            ss = sw[small] ** 2
            sw = np.where(small, 1.0, sw)
        e = np.exp(sw * -2.0)
        den_w = 1.0 - e
        den_w *= sw
        e += 1.0
        wb = np.divide(e, den_w, out=e)
        if small is not None:
            # 1 - e cancels for small |s|: the series 1/s^2 + 1/3 - s^2/45 instead
            wb[small] = 1 / ss + 1 / 3 - ss / 45
        wb *= r_w
        z += wb
        z += r0 + r_l
        out: npt.NDArray[np.complex128] = z[None, :]
        return out

    # ---- batches -------------------------------------------------------------------------------------

    def _log_params(
        self,
        profile: npt.ArrayLike,
        op: npt.ArrayLike,
        cell: npt.ArrayLike | None,
        latent: npt.ArrayLike | None,
    ) -> npt.NDArray[np.float64]:
        """Log-parameters (n, N_PARAMS), float64, clipped to [LOG_MIN, LOG_MAX]; the columns of A1, A2 and
        PHI_W hold those exponents themselves."""
        ops = np.asarray(op, dtype=self.dtype)
        if ops.ndim == 1:
            ops = ops[None, :]
        if ops.ndim != 2 or ops.shape[1] != 3:
            raise ValueError(f"op must be (n, 3) rows of [soc, temp_c, soh], got shape {ops.shape}")
        if not (np.isfinite(ops).all() and (ops[:, 1] > MIN_TEMP_C).all()):
            raise ValueError(f"op must be finite with temp_c above {MIN_TEMP_C} C")
        prof = self._check_index(profile, self._n_profiles, "profile")
        w = self._w
        pre = matmul(ops, w.w1_op)
        pre += w.base1[prof]
        h = np.tanh(pre, out=pre)
        h = matmul(h, w.w2)
        h += w.b2
        np.tanh(h, out=h)
        raw_t = matmul(h, w.w3)
        raw_t += w.base3[prof]
        if latent is not None:
            if cell is not None:
                raise ValueError("give a cell index or a latent vector, not both")
            lat = np.asarray(latent, dtype=self.dtype)
            if (
                lat.shape[-1] != self.latent_dim
                or lat.ndim > 2
                or (lat.ndim == 2 and len(lat) not in (1, len(ops)))
            ):
                raise ValueError(
                    f"latent must be ({self.latent_dim},) or (n, {self.latent_dim}), got {lat.shape}"
                )
            raw_t += lat
        elif cell is not None:
            cells = self._check_index(cell, self._n_cells + 1, "cell")
            if not isinstance(cells, int) or cells:
                raw_t += w.offsets[cells]
        raw = raw_t.astype(np.float64)
        # 1/T - 1/T_ref with the float32 rounding of Keras's graph when the runtime is float32
        inv_t = (self._one / (ops[:, 1:2] + self._kelvin) - self._inv_t_ref).astype(np.float64)
        temp_term = w.temp_coef[prof] * inv_t
        logp: npt.NDArray[np.float64] = np.clip(raw, LOG_MIN, LOG_MAX)
        logp += temp_term
        gaps = raw[:, P.TAU2 :: 3] + temp_term[:, P.TAU2 :: 3]  # TAU2, TAU_W: columns 7, 10
        gaps = np.cumsum(softplus(gaps), axis=1)
        logp[:, P.TAU2 :: 3] = logp[:, P.TAU1, None] + gaps
        np.clip(logp, LOG_MIN, LOG_MAX, out=logp)
        # A1, A2, PHI_W are columns 5, 8, 11. sigmoid(x) = (1 + tanh(x/2))/2 cannot overflow.
        t = np.tanh(raw[:, P.A1 :: 3] * 0.5)
        logp[:, P.A1 :: 3] = t * _EXP_SCALE + _EXP_MID
        return logp

    def _coefficients(self, lp: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
        """The per-cell table (n, _N_COEF) the circuit's (n, F) passes broadcast, in the runtime's dtype."""
        c = np.empty((len(lp), _N_COEF))
        r = np.exp(lp[:, [P.R0, P.R_L, P.R1, P.R2, P.R_W]])
        c[:, _C_TAU_L] = np.exp(lp[:, P.TAU_L])
        c[:, _C_RL] = r[:, 1]
        c[:, _C_R0] = r[:, 0]
        for k, (tau, a) in zip(_C_ZARC, ((P.TAU1, P.A1), (P.TAU2, P.A2)), strict=True):
            ex = lp[:, a]
            c[:, k] = ex
            c[:, k + 1] = ex * lp[:, tau]
            c[:, k + 2] = r[:, 2 if tau == P.TAU1 else 3]
            theta = ex * _HALF_PI
            c[:, k + 4] = np.cos(theta)
            c[:, k + 3] = 2 * c[:, k + 4]
            c[:, k + 5] = np.sin(theta)
        phi = lp[:, P.PHI_W]
        c[:, _C_W] = phi
        c[:, _C_W + 1] = phi * lp[:, P.TAU_W]
        c[:, _C_W + 2] = r[:, 4]
        theta = phi * _HALF_PI
        c[:, _C_W + 5] = np.cos(theta)
        c[:, _C_W + 6] = np.sin(theta)
        c[:, _C_W + 3] = -2 * c[:, _C_W + 5]
        c[:, _C_W + 4] = 2 * c[:, _C_W + 6]
        result: npt.NDArray[Any] = c.astype(self.dtype, copy=False)
        return result

    def _batch_circuit(self, lp: npt.NDArray[np.float64], grid: _Grid) -> npt.NDArray[Any]:
        n, n_freq = len(lp), len(grid.logw)
        coef = self._coefficients(lp)
        # Cells whose Warburg |s| falls below SMALL_S somewhere on the grid (it is smallest at the lowest
        # frequency): their blocks take the series on the way.
        small = lp[:, P.PHI_W] * (grid.logw_min + lp[:, P.TAU_W]) < math.log(SMALL_S)
        out = np.empty((n, n_freq), self.complex_dtype)
        rows = min(n, max(1, BLOCK_POINTS // n_freq))
        work = np.empty((7, rows, n_freq), self.dtype)
        for i in range(0, n, rows):
            j = min(i + rows, n)
            series = lp[i:j] if small[i:j].any() else None
            self._block(coef[i:j], grid, work[:, : j - i], out[i:j], series)
        return out

    def _block(
        self,
        c: npt.NDArray[Any],
        grid: _Grid,
        work: npt.NDArray[Any],
        out: npt.NDArray[Any],
        series_lp: npt.NDArray[np.float64] | None,
    ) -> None:
        """Z of a block of cells into ``out`` (m, F), real arithmetic on (m, F) arrays of the runtime's dtype.

        ``c`` is the block's coefficient table, ``work`` (7, m, F) scratch; ``series_lp`` the block's
        log-parameters when some Warburg |s| is below SMALL_S in it (those points take the series)."""
        u, t1, t2, t3, t4, re, im = work
        w, logw = grid.w_t, grid.logw_t

        def col(k: int) -> npt.NDArray[Any]:
            return c[:, k : k + 1]

        # L || R_L = R_L u^2/(1 + u^2) + j R_L u/(1 + u^2) = q u^2 + j q u, q = R_L/(1 + u^2), u = w tau_L
        # (not R_L - q: that cancels at low u, where R_L can be 1000 times R0)
        np.multiply(col(_C_TAU_L), w, out=u)
        np.multiply(u, u, out=t1)
        t1 += self._one
        np.divide(col(_C_RL), t1, out=t1)
        np.multiply(t1, u, out=im)
        np.multiply(im, u, out=re)
        re += col(_C_R0)
        # ZARC R/(1 + s), s = m e^{j theta}: |1 + s|^2 = m (m + 2 cos) + 1 and R/(1 + s) = q (1 + conj s)
        # with q = R/|1 + s|^2
        for k in _C_ZARC:
            np.multiply(col(k), logw, out=u)
            u += col(k + 1)
            np.exp(u, out=u)  # m = (w tau)^a
            np.add(u, col(k + 3), out=t1)
            t1 *= u
            t1 += self._one
            np.divide(col(k + 2), t1, out=t1)  # q
            re += t1
            t1 *= u  # q m
            np.multiply(t1, col(k + 4), out=t2)
            re += t2
            np.multiply(t1, col(k + 5), out=t2)
            im -= t2
        # Finite-space Warburg R_W coth(s)/s with coth(s) = 2/(1 - e) - 1, e = exp(-2 s), s = m e^{j theta}:
        # 1 - e = A + jB with A = 1 - d cos(p), B = d sin(p), d = exp(-2 m cos), p = 2 m sin; then
        # 2/(1 - e) - 1 = P - jB' with P = 2A/D - 1, B' = 2B/D, D = A^2 + B^2, and 1/s = e^{-j theta}/m.
        k = _C_W
        np.multiply(col(k), logw, out=u)
        u += col(k + 1)
        np.exp(u, out=u)  # m
        small = None
        if series_lp is not None:
            small = u < SMALL_S
            np.maximum(u, SMALL_S, out=u)  # keeps D away from 0; these points are replaced below
        np.multiply(u, col(k + 3), out=t1)
        np.maximum(t1, DECAY_FLOOR, out=t1)
        np.exp(t1, out=t1)  # d
        np.multiply(u, col(k + 4), out=t2)
        # p only matters while d is above its floor, and p <= 2 m cos <= 80 there (theta <= pi/4); larger
        # arguments would send cos and sin down their slow scalar path.
        np.minimum(t2, -DECAY_FLOOR, out=t2)
        np.cos(t2, out=t3)
        np.sin(t2, out=t2)
        t3 *= t1
        np.subtract(self._one, t3, out=t3)  # A
        t2 *= t1  # B
        np.multiply(t3, t3, out=t1)
        np.multiply(t2, t2, out=t4)
        t1 += t4  # D
        np.divide(2.0, t1, out=t1)
        t3 *= t1
        t3 -= self._one  # P
        t2 *= t1  # B'
        np.divide(col(k + 2), u, out=u)  # R_W / m
        if small is not None:
            u[small] = 0.0
        t3 *= u
        t2 *= u
        # R_W (P - jB') (cos - j sin) / m = R_W/m [(P cos - B' sin) - j (B' cos + P sin)]
        np.multiply(t3, col(k + 5), out=t1)
        re += t1
        np.multiply(t2, col(k + 6), out=t1)
        re -= t1
        np.multiply(t2, col(k + 5), out=t1)
        im -= t1
        np.multiply(t3, col(k + 6), out=t1)
        im -= t1
        out.real = re
        out.imag = im
        if small is not None and series_lp is not None:
            # 1 - e cancels for small |s|: the series 1/s^2 + 1/3 - s^2/45 instead, in float64
            r_i, f_i = np.nonzero(small)
            phi = series_lp[r_i, P.PHI_W]
            s = np.exp(phi * (grid.logw[f_i] + series_lp[r_i, P.TAU_W]) + 1j * _HALF_PI * phi)
            ss = s * s
            out[r_i, f_i] += np.exp(series_lp[r_i, P.R_W]) * (1 / ss + 1 / 3 - ss / 45)
