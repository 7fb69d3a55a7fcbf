"""Inference without TensorFlow: the PINN's weights evaluated in numpy, the circuit vectorised over cells and
frequencies.

The ``.keras`` file stays the source of truth. Its weights are read once (``model.weights.h5`` inside the
archive, with h5py, still without TensorFlow) and cached as an ``.npz`` named after the archive's sha256, so a
warm start is numpy only: importing TensorFlow costs seconds and a streaming server must not pay for it. A
cache whose recorded hash, format or shapes do not match is refused and rebuilt from the archive.

The arithmetic mirrors ``pinn.ParamNet`` and ``physics.CircuitLayer`` (parity-tested against the Keras model
on random inputs across the whole input range), with constants folded ahead of time:
- the one-hot profile input and the first bias become a per-profile row of the first layer,
  ``(temp_c - 25) / 20`` is folded into the first kernel, so layer 1 is one matmul on ``op`` as given;
- the output bias and the per-profile bias become one per-profile row;
- the activation energies ``1000 softplus(activation_raw)`` and the ``gap_temp`` terms are per-profile rows;
- the circuit works on the clipped log-parameters, so ``(j w tau)^a = exp(a (log w + log tau)) e^{j a pi/2}``
  needs no log, and one ``exp`` covers all three constant-phase elements.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import structlog

from .circuit import N_PARAMS, SMALL_S, P
from .store import BUNDLED_MODEL_DIR, ModelLoadError, ModelMetadata, read_metadata

log = structlog.get_logger(__name__)

CACHE_FORMAT: Final = 1
"""Bump when the cached arrays change meaning: older caches are then refused and rebuilt."""
CACHE_ENV: Final = "EIS_HIL_CACHE_DIR"

# Mirrors pinn.py. Duplicated rather than imported because pinn.py imports Keras; a test checks they agree.
T_REF_K: Final = 298.15
KELVIN: Final = 273.15
LOG_MIN: Final = -25.0
LOG_MAX: Final = 12.0
ARRHENIUS: Final = (P.R0, P.R1, P.R2, P.R_W, P.TAU1)
GAPS: Final = (P.TAU2, P.TAU_W)

_WEIGHT_NAMES: Final = (
    "latent",
    "h1_kernel",
    "h1_bias",
    "h2_kernel",
    "h2_bias",
    "out_kernel",
    "out_bias",
    "profile_bias",
    "activation_raw",
    "gap_temp",
)
_H5_PATHS: Final = {
    "latent": "layers/param_net/latent/vars/0",
    "h1_kernel": "layers/param_net/h1/vars/0",
    "h1_bias": "layers/param_net/h1/vars/1",
    "h2_kernel": "layers/param_net/h2/vars/0",
    "h2_bias": "layers/param_net/h2/vars/1",
    "out_kernel": "layers/param_net/out/vars/0",
    "out_bias": "layers/param_net/out/vars/1",
    # ParamNet.build creates its own weights in this order
    "profile_bias": "layers/param_net/vars/0",
    "activation_raw": "layers/param_net/vars/1",
    "gap_temp": "layers/param_net/vars/2",
}

F32 = npt.NDArray[np.float32]
Weights = dict[str, npt.NDArray[np.float32]]


def default_cache_dir() -> Path:
    """``$EIS_HIL_CACHE_DIR``, else ``$XDG_CACHE_HOME/eis-hil``, else ``~/.cache/eis-hil``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "eis-hil"


def cache_path(model_sha256: str, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"numpy-pinn-{model_sha256}.npz"


def _expected_shapes(n_profiles: int, n_cells: int, hidden: int) -> dict[str, tuple[int, ...]]:
    return {
        "latent": (n_cells + 1, N_PARAMS),
        "h1_kernel": (n_profiles + 3, hidden),
        "h1_bias": (hidden,),
        "h2_kernel": (hidden, hidden),
        "h2_bias": (hidden,),
        "out_kernel": (hidden, N_PARAMS),
        "out_bias": (N_PARAMS,),
        "profile_bias": (n_profiles, N_PARAMS),
        "activation_raw": (n_profiles, len(ARRHENIUS)),
        "gap_temp": (n_profiles, len(GAPS)),
    }


def _check_shapes(weights: Weights, n_profiles: int, n_cells: int, where: Path) -> str | None:
    """None if the weights fit a model with these profiles and cells, else why not."""
    missing = [name for name in _WEIGHT_NAMES if name not in weights]
    if missing:
        return f"missing arrays {', '.join(missing)}"
    hidden = weights["h1_bias"].shape[0]
    for name, shape in _expected_shapes(n_profiles, n_cells, hidden).items():
        if weights[name].shape != shape:
            return (
                f"{name} has shape {weights[name].shape}, expected {shape} "
                f"for {n_profiles} profiles and {n_cells} cells"
            )
    if not all(np.isfinite(w).all() for w in weights.values()):
        return "non-finite weights"
    return None


def read_keras_weights(keras_path: Path) -> Weights:
    """ParamNet's weights from a ``.keras`` archive, with h5py only (no TensorFlow)."""
    try:
        import h5py
    except ImportError as exc:  # h5py comes with Keras; without it only the Keras route would remain
        raise ModelLoadError(f"{keras_path}: reading the weights needs h5py ({exc})") from None
    try:
        with zipfile.ZipFile(keras_path) as archive:
            config = json.loads(archive.read("config.json"))
            blob = archive.read("model.weights.h5")
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{keras_path}: not a Keras archive ({type(exc).__name__}: {exc})") from None
    layers = {layer.get("name"): layer for layer in config.get("config", {}).get("layers", [])}
    net = layers.get("param_net", {}).get("config")
    if not isinstance(net, dict) or "n_profiles" not in net:
        raise ModelLoadError(f"{keras_path}: config.json has no param_net layer (not an eis-hil PINN)")
    weights: Weights = {}
    try:
        with h5py.File(io.BytesIO(blob), "r") as h5:
            for name, path in _H5_PATHS.items():
                weights[name] = np.asarray(h5[path], dtype=np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise ModelLoadError(
            f"{keras_path}: model.weights.h5 unreadable or missing a ParamNet weight ({exc})"
        ) from None
    problem = _check_shapes(weights, int(net["n_profiles"]), int(net["n_cells"]), keras_path)
    if problem:
        raise ModelLoadError(f"{keras_path}: model.weights.h5: {problem}")
    return weights


def _read_cache(path: Path, meta: ModelMetadata) -> Weights:
    """The cached weights, or ModelLoadError saying why the cache file cannot be used."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no cache yet") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelLoadError(f"{path}: corrupt weight cache ({type(exc).__name__}: {exc})") from None
    recorded = str(arrays.pop("model_sha256", ""))
    if recorded != meta.model_sha256:
        raise ModelLoadError(
            f"{path}: stale weight cache, made from a model with sha256 {recorded[:12] or '?'}.., "
            f"not {meta.path.name} ({meta.model_sha256[:12]}..)"
        )
    fmt = arrays.pop("format", None)
    if fmt is None or int(fmt) != CACHE_FORMAT:
        raise ModelLoadError(f"{path}: weight cache format {fmt}, this version reads {CACHE_FORMAT}")
    weights = {name: np.asarray(a, np.float32) for name, a in arrays.items()}
    problem = _check_shapes(weights, len(meta.profiles), len(meta.cells), path)
    if problem:
        raise ModelLoadError(f"{path}: corrupt weight cache: {problem}")
    return weights


def _write_cache(path: Path, weights: Weights, meta: ModelMetadata) -> None:
    """Atomically, so that concurrent servers never read a half-written cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as fh:
            arrays: dict[str, npt.NDArray[Any]] = {
                "model_sha256": np.array(meta.model_sha256),
                "format": np.array(CACHE_FORMAT),
                **weights,
            }
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except OSError as exc:
        # A read-only cache only costs the h5 read on the next start, so it is not worth failing over.
        log.warning("weight cache not written", path=str(path), error=str(exc))


def load_weights(
    meta: ModelMetadata, *, cache_dir: Path | None = None, rebuild: bool = True
) -> tuple[Weights, str]:
    """ParamNet's weights for ``meta`` and where they came from ("cache" or "keras").

    ``rebuild=False`` turns a missing, stale or corrupt cache into a ModelLoadError instead of re-reading the
    archive (for deployments that want the warm path or nothing)."""
    path = cache_path(meta.model_sha256, cache_dir)
    try:
        return _read_cache(path, meta), "cache"
    except ModelLoadError as exc:
        if not rebuild:
            raise
        if path.exists():
            log.warning("weight cache refused, rebuilding from the model", reason=str(exc))
    weights = read_keras_weights(meta.path)
    _write_cache(path, weights, meta)
    return weights, "keras"


def _softplus(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
    out: npt.NDArray[Any] = np.logaddexp(0.0, x)
    return out


@dataclasses.dataclass(frozen=True)
class _Folded:
    """Weights rearranged for inference (see the module docstring)."""

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
    """(n_profiles, N_PARAMS): what multiplies 1/T - 1/T_ref, per column: Ea/R_gas (K) in the Arrhenius
    columns, 1000 gap_temp in the two gap columns (disjoint sets, so one row serves both)."""


def _fold(w: Weights, dtype: type[np.floating[Any]]) -> _Folded:
    n_profiles = w["profile_bias"].shape[0]
    k1 = w["h1_kernel"].astype(np.float64)
    soc_row, soh_row, t_row = k1[n_profiles], k1[n_profiles + 1], k1[n_profiles + 2]
    temp_coef = np.zeros((n_profiles, N_PARAMS))
    # rounded to float32 like the Keras graph's 1000 * softplus(activation_raw)
    temp_coef[:, list(ARRHENIUS)] = np.float32(1000.0) * _softplus(w["activation_raw"])
    temp_coef[:, list(GAPS)] = w["gap_temp"].astype(np.float64) * 1000.0
    cast = {
        "w1_op": np.stack([soc_row, t_row / 20.0, soh_row]),
        "base1": k1[:n_profiles] + w["h1_bias"] - 1.25 * t_row,
        "offsets": w["latent"],
        "w2": w["h2_kernel"],
        "b2": w["h2_bias"],
        "w3": w["out_kernel"],
        "base3": w["out_bias"].astype(np.float64) + w["profile_bias"],
        "temp_coef": temp_coef,
    }
    return _Folded(**{k: np.ascontiguousarray(v, dtype=dtype) for k, v in cast.items()})


_TAUS: Final = [P.TAU_L, P.TAU1, P.TAU2, P.TAU_W]
"""Time constants of the four elements handled as (j w tau)^a: L||R (a = 1), ZARC 1, ZARC 2, Warburg."""
_RES: Final = [P.R0, P.R_L, P.R1, P.R2, P.R_W]
_ZARC_SIGN: Final = np.array([-1.0, 1.0, 1.0])
"""L||R = R_L j u / (1 + j u) = R_L - R_L / (1 + j u): the same R / (1 + s) form as the ZARCs, negated."""
# a1, a2 = 0.5 + 0.5 sigmoid = 0.75 + 0.25 tanh(x/2); phi_W = 0.3 + 0.2 sigmoid = 0.4 + 0.1 tanh(x/2)
_EXP_MID: Final = np.array([0.75, 0.75, 0.4])
_EXP_SCALE: Final = np.array([0.25, 0.25, 0.1])
CHUNK: Final = 64
"""Cells per block of the circuit evaluation in large batches."""
SMALL_BATCH: Final = 1024
"""Up to this many values of (j w tau)^a, np.exp on complex numbers (few calls, but ~30 ns a value) beats
building them from real exp, cos and sin (more calls, SIMD)."""


class NumpyPinn:
    """The PINN's inference in numpy: parameters and spectra for batches of operating points.

    ``op`` rows are ``[soc, temp_c, soh]`` as in the Keras model. Each operating point is evaluated for its
    ``profile`` index and either its ``cell`` index (0 = the profile's typical cell, 1.. = training cells, see
    ``cells``) or an explicit ``latent`` vector (a calibrated profile: log-offsets (N_PARAMS,) of the circuit
    parameters, added to the network's raw output like a training cell's row). ``dtype`` float32 computes what
    the
    Keras model computes in its own precision (and is the fast one: numpy's float32 exp, cos, sin are SIMD);
    float64 gives the same values with less rounding."""

    def __init__(
        self, weights: Weights, meta: ModelMetadata, dtype: type[np.floating[Any]] = np.float32
    ) -> None:
        problem = _check_shapes(weights, len(meta.profiles), len(meta.cells), meta.path)
        if problem:
            raise ModelLoadError(f"{meta.path}: {problem}")
        self.meta = meta
        self.profiles: list[str] = list(meta.profiles)
        self.cells: dict[str, int] = dict(meta.cells)
        self.latent_dim: int = int(weights["latent"].shape[1])
        self.dtype = np.dtype(dtype)
        self.complex_dtype = np.result_type(self.dtype, np.complex64)
        self._w = _fold(weights, dtype)
        self._n_profiles = len(self.profiles)
        self._n_cells = len(self.cells)
        dt = self.dtype.type
        self._one = dt(1.0)
        self._inv_t_ref = dt(1.0 / T_REF_K)
        self._two_pi = dt(2 * np.pi)
        self._half = dt(0.5)
        self._exp_mid = _EXP_MID.astype(dtype)
        self._exp_scale = _EXP_SCALE.astype(dtype)
        self._zarc_sign = _ZARC_SIGN.astype(dtype)
        # The typical cell's row of the offset table starts at zero and, with the training's cell dropout,
        # normally stays there: skip the add then, it is a measurable share of a single-point call.
        self._typical = self._w.offsets[0] if self._w.offsets[0].any() else None
        self._j_half_pi = (0.5j * np.pi) * np.ones((), self.complex_dtype)

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

    # ---- network -------------------------------------------------------------------------------------

    def _check_index(self, value: npt.ArrayLike, limit: int, what: str) -> npt.NDArray[np.intp] | int:
        if isinstance(value, int | np.integer):  # the common single-point call: no array round trip
            if not 0 <= value < limit:
                raise ValueError(f"{what} index {int(value)} out of range 0..{limit - 1}")
            return int(value)
        idx = np.asarray(value, dtype=np.intp)
        if idx.size and (idx.min() < 0 or idx.max() >= limit):
            raise ValueError(f"{what} indices must be in 0..{limit - 1}")
        return idx

    def _log_params(
        self,
        profile: npt.ArrayLike,
        op: npt.ArrayLike,
        cell: npt.ArrayLike | None,
        latent: npt.ArrayLike | None,
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """(log-parameters (n, N_PARAMS) clipped to [LOG_MIN, LOG_MAX], exponents (n, 4): [1, a1, a2, phi_W]).

        The log columns of A1, A2 and PHI_W are meaningless: those parameters are in the exponents."""
        ops = np.asarray(op, dtype=self.dtype)
        if ops.ndim == 1:
            ops = ops[None, :]
        if ops.ndim != 2 or ops.shape[1] != 3:
            raise ValueError(f"op must be (n, 3) rows of [soc, temp_c, soh], got shape {ops.shape}")
        prof = self._check_index(profile, self._n_profiles, "profile")
        w = self._w
        pre = ops @ w.w1_op
        pre += w.base1[prof]
        h = np.tanh(pre, out=pre)
        h = h @ w.w2
        h += w.b2
        np.tanh(h, out=h)
        raw = h @ w.w3
        raw += w.base3[prof]
        if latent is not None:
            if cell is not None:
                raise ValueError("give a cell index or a latent vector, not both")
            lat = np.asarray(latent, dtype=self.dtype)
            if lat.shape[-1] != self.latent_dim or lat.ndim > 2:
                raise ValueError(
                    f"latent must be ({self.latent_dim},) or (n, {self.latent_dim}), got {lat.shape}"
                )
            raw += lat
        elif cell is not None:
            cells = self._check_index(cell, self._n_cells + 1, "cell")
            if not isinstance(cells, int) or cells or self._typical is not None:
                raw += w.offsets[cells]
        elif self._typical is not None:
            raw += self._typical
        # transforms, as ParamNet.transform with the same float32 rounding of 1/T - 1/T_ref
        inv_t = self._one / (ops[:, 1:2] + KELVIN)
        inv_t -= self._inv_t_ref
        temp_term = w.temp_coef[prof] * inv_t
        logp = np.maximum(raw, LOG_MIN)
        np.minimum(logp, LOG_MAX, out=logp)
        logp += temp_term
        gaps = raw[:, P.TAU2 :: 3] + temp_term[:, P.TAU2 :: 3]  # TAU2, TAU_W: columns 7, 10
        gaps = np.cumsum(_softplus(gaps), axis=1)
        logp[:, P.TAU2 :: 3] = logp[:, P.TAU1, None] + gaps
        np.maximum(logp, LOG_MIN, out=logp)
        np.minimum(logp, LOG_MAX, out=logp)
        expo = np.empty((len(raw), 4), self.dtype)
        expo[:, 0] = 1.0
        # A1, A2, PHI_W are columns 5, 8, 11. sigmoid(x) = (1 + tanh(x/2))/2 cannot overflow, unlike
        # 1 / (1 + exp(-x)), so no np.errstate (microseconds) on the hot path.
        t = np.tanh(raw[:, P.A1 :: 3] * self._half, out=expo[:, 1:])
        t *= self._exp_scale
        t += self._exp_mid
        return logp, expo

    def params(
        self,
        profile: npt.ArrayLike,
        op: npt.ArrayLike,
        latent: npt.ArrayLike | None = None,
        *,
        cell: npt.ArrayLike | None = None,
    ) -> npt.NDArray[Any]:
        """Circuit parameters (n, N_PARAMS) in physical units, columns as ``circuit.P``."""
        logp, expo = self._log_params(profile, op, cell, latent)
        out: npt.NDArray[Any] = np.exp(logp)
        out[:, P.A1 :: 3] = expo[:, 1:]
        return out

    # ---- circuit -------------------------------------------------------------------------------------

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
        logp, expo = self._log_params(profile, op, cell, latent)
        freq = np.asarray(freq_hz, dtype=self.dtype)
        if freq.ndim != 1:
            raise ValueError(f"freq_hz must be one shared frequency vector (F,), got shape {freq.shape}")
        n = len(logp)
        if n <= CHUNK:
            return self._circuit(logp, expo, freq)
        # Large batches in blocks of cells: the (cells, 4, F) intermediates then stay in the CPU cache
        # (1024 cells at once ran at a third of the speed per cell of 64-cell blocks here).
        out = np.empty((n, len(freq)), self.complex_dtype)
        for i in range(0, n, CHUNK):
            out[i : i + CHUNK] = self._circuit(logp[i : i + CHUNK], expo[i : i + CHUNK], freq)
        return out

    def _circuit(
        self, logp: npt.NDArray[Any], expo: npt.NDArray[Any], freq: npt.NDArray[Any]
    ) -> npt.NDArray[Any]:
        # log(w tau) for the four (j w tau)^a elements, (n, 4, F)
        x = logp[:, _TAUS, None] + np.log(freq * self._two_pi)
        small_batch = x.size <= SMALL_BATCH
        if small_batch:
            s = np.exp((x + self._j_half_pi) * expo[:, :, None])
        else:
            # np.exp on complex64 is scalar code (~30 ns a value): build from real, SIMD exp/cos/sin instead
            x *= expo[:, :, None]
            mag = np.exp(x, out=x)
            angle = expo * (np.pi / 2)
            cos_a, sin_a = np.cos(angle), np.sin(angle)
            s = mag * (cos_a + 1j * sin_a)[:, :, None]
        r = np.exp(logp[:, _RES])
        # R0 + R_L - R_L/(1 + ju) + R1/(1 + s1) + R2/(1 + s2)
        s3 = s[:, :3]
        s3 += self._one
        zarc = (r[:, 1:4] * self._zarc_sign)[:, :, None] / s3
        z = zarc[:, 0]
        z += zarc[:, 1]
        z += zarc[:, 2]
        z += (r[:, 0] + r[:, 1])[:, None]
        # Finite-space Warburg R_W coth(s)/s, coth(s) = (1 + e) / (1 - e), e = exp(-2 s)
        sw = s[:, 3]
        if small_batch:
            e = np.exp(sw * -2)
            abs_s = np.abs(sw)
        else:
            abs_s = mag[:, 3]
            decay = abs_s * (-2 * cos_a[:, 3:])
            # exp below -87 is subnormal in float32 and subnormal arithmetic is ~100x slower on x86 (a cold
            # cell at low frequency hit it on every point); e^-80 is already nothing next to 1 in 1 - e.
            np.maximum(decay, -80.0, out=decay)
            np.exp(decay, out=decay)
            phase = abs_s * (-2 * sin_a[:, 3:])
            e = np.empty(sw.shape, self.complex_dtype)
            np.multiply(decay, np.cos(phase), out=e.real)
            np.multiply(decay, np.sin(phase), out=e.imag)
        den = self._one - e
        den *= sw
        e += self._one
        wb = np.divide(e, den, out=e)
        if abs_s.min() < SMALL_S:
            # 1 - e cancels for small |s|: the series 1/s^2 + 1/3 - s^2/45 instead
            small = abs_s < SMALL_S
            ss = sw[small] ** 2
            wb[small] = 1 / ss + 1 / 3 - ss / 45
        wb *= r[:, 4:5]
        z += wb
        result: npt.NDArray[Any] = z
        return result
