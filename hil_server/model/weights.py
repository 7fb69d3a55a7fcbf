"""The PINN's weights without TensorFlow: read from the ``.keras`` archive with h5py and cached as ``.npz``.

The ``.keras`` file stays the source of truth. Its weights are read once (``model.weights.h5`` inside the
archive) and cached as an ``.npz`` named after the archive's sha256, so a warm start is numpy only. A cache
whose recorded hash, format or shapes do not match is refused and rebuilt from the archive. Nothing is fixed
but the ParamNet layout: the number of profiles, cells and hidden units come from the weights.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import structlog

from .circuit import N_PARAMS
from .constants import ARRHENIUS, GAPS
from .store import ModelLoadError, ModelMetadata

log = structlog.get_logger(__name__)

CACHE_FORMAT: Final = 1
"""Bump when the cached arrays change meaning: older caches are then refused and rebuilt."""
CACHE_ENV: Final = "EIS_HIL_CACHE_DIR"


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


def check_shapes(weights: Weights, n_profiles: int, n_cells: int, where: Path) -> str | None:
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
    problem = check_shapes(weights, int(net["n_profiles"]), int(net["n_cells"]), keras_path)
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
    problem = check_shapes(weights, len(meta.profiles), len(meta.cells), path)
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
