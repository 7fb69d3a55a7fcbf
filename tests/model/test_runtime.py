"""The numpy runtime against the Keras model it comes from, its weight cache, and its import footprint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from hil_server.model.runtime import NumpyPinn
from hil_server.model.store import BUNDLED_MODEL_DIR, ModelLoadError, read_metadata
from hil_server.model.weights import cache_path, load_weights

TOLERANCE = 1e-5
"""Max relative difference |Z_numpy - Z_keras| / |Z_keras| allowed, the issue's target in float32."""


def _random_inputs(
    rng: np.random.Generator, n: int, n_profiles: int, n_cells: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Operating points across the whole input range, every profile and cell, frequencies 1 mHz..100 kHz."""
    profile = rng.integers(0, n_profiles, n).astype(np.int32)
    cell = rng.integers(0, n_cells + 1, n).astype(np.int32)
    op = np.stack([rng.uniform(0, 1, n), rng.uniform(-40, 80, n), rng.uniform(0.4, 1, n)], 1).astype(
        np.float32
    )
    freq = np.sort(10 ** rng.uniform(-3, 5, 60)).astype(np.float32)
    freq[[0, -1]] = 1e-3, 1e5
    return profile, cell, op, freq


def _rel(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    return float(np.max(np.abs(a - b) / np.abs(b)))


def _keras(model: Any, profile: Any, cell: Any, op: Any, freq: Any) -> tuple[Any, Any]:
    out = model(
        {"profile": profile, "cell": cell, "op": op, "freq_hz": np.broadcast_to(freq, (len(op), len(freq)))},
        training=False,
    )
    z = np.asarray(out["z_re"], np.float64) + 1j * np.asarray(out["z_im"], np.float64)
    return z, np.asarray(out["params"], np.float64)


@pytest.fixture(scope="module")
def keras_model(trained_model: Path) -> Any:
    from hil_server.model.store import load_keras_model

    return load_keras_model(trained_model)[0]


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# 4 points x 60 frequencies takes the small-batch branch (complex exp), 1500 points the large one
@pytest.mark.parametrize("n", [1, 4, 1500])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parity_with_keras_cells(
    trained_model: Path, keras_model: Any, cache_dir: Path, n: int, dtype: type[np.floating[Any]]
) -> None:
    rt = NumpyPinn.load(trained_model, cache_dir=cache_dir, dtype=dtype)
    rng = np.random.default_rng(n)
    profile, cell, op, freq = _random_inputs(rng, n, len(rt.profiles), len(rt.cells))
    z_keras, p_keras = _keras(keras_model, profile, cell, op, freq)
    z = rt.impedance(profile, op, freq, cell=cell)
    p = rt.params(profile, op, cell=cell)
    assert z.shape == (n, 60)
    assert np.iscomplexobj(z)
    rel_z, rel_p = _rel(z, z_keras), _rel(p, p_keras)
    assert rel_z < TOLERANCE, f"max relative difference of Z vs Keras {rel_z:.2e} ({dtype.__name__}, n={n})"
    assert rel_p < TOLERANCE, f"max relative difference of params vs Keras {rel_p:.2e}"


def test_parity_with_keras_latents(trained_model: Path, keras_model: Any, cache_dir: Path) -> None:
    from hil_server.model.calibrate import predict_with_latents

    rt = NumpyPinn.load(trained_model, cache_dir=cache_dir)
    rng = np.random.default_rng(7)
    profile, _, op, freq = _random_inputs(rng, 800, len(rt.profiles), len(rt.cells))
    latents = rng.normal(0, 0.5, (800, rt.latent_dim)).astype(np.float32)
    z_keras = predict_with_latents(keras_model, profile, op, latents, freq)
    rel = _rel(rt.impedance(profile, op, freq, latents), z_keras)
    assert rel < TOLERANCE, f"max relative difference vs Keras with random latents {rel:.2e}"
    # one calibrated profile's latent for a single point: the shared-vector form
    one = rt.impedance(int(profile[0]), op[0], freq, latents[0])
    rel_one = _rel(one, z_keras[:1])
    assert rel_one < TOLERANCE, f"single point with a latent: {rel_one:.2e}"


def test_scalar_and_batch_forms_agree(trained_model: Path, cache_dir: Path) -> None:
    rt = NumpyPinn.load(trained_model, cache_dir=cache_dir)
    freq = np.logspace(-3, 5, 60)
    batch = rt.impedance([1, 1], [[0.5, 25.0, 0.9], [0.2, -10.0, 0.7]], freq, cell=[0, 0])
    assert np.allclose(rt.impedance(1, [0.5, 25.0, 0.9], freq), batch[:1], rtol=1e-6)
    assert np.allclose(rt.impedance(np.int64(1), [[0.2, -10.0, 0.7]], freq, cell=0), batch[1:], rtol=1e-6)


def test_bad_inputs_are_refused(trained_model: Path, cache_dir: Path) -> None:
    rt = NumpyPinn.load(trained_model, cache_dir=cache_dir)
    freq = np.logspace(0, 3, 5)
    with pytest.raises(ValueError, match="profile index"):
        rt.impedance(len(rt.profiles), [0.5, 25, 1], freq)
    with pytest.raises(ValueError, match="cell indices"):
        rt.impedance([0], [[0.5, 25, 1]], freq, cell=[len(rt.cells) + 1])
    with pytest.raises(ValueError, match="op must be"):
        rt.impedance(0, [0.5, 25], freq)
    with pytest.raises(ValueError, match="latent must be"):
        rt.impedance(0, [0.5, 25, 1], freq, np.zeros(rt.latent_dim + 1))
    with pytest.raises(ValueError, match="not both"):
        rt.impedance(0, [0.5, 25, 1], freq, np.zeros(rt.latent_dim), cell=1)
    for bad in ([0.5, -273.15, 1], [float("nan"), 25, 1], [0.5, float("inf"), 1]):
        with pytest.raises(ValueError, match="op must be finite"):
            rt.impedance(0, bad, freq)
        with pytest.raises(ValueError, match="op must be finite"):
            rt.params([0, 0], [bad, [0.5, 25, 1]])


def test_server_process_does_not_import_tensorflow(trained_model: Path, cache_dir: Path) -> None:
    NumpyPinn.load(trained_model, cache_dir=cache_dir)  # warm the cache
    code = (
        "import sys, numpy as np\n"
        "from hil_server.model.runtime import NumpyPinn\n"
        f"rt = NumpyPinn.load({str(trained_model)!r}, rebuild=False)\n"
        "z = rt.impedance(0, [0.5, 25.0, 0.9], np.logspace(-3, 5, 60))\n"
        "assert z.shape == (1, 60) and np.isfinite(z).all()\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'h5py'))\n"
        "assert not heavy, heavy\n"
    )
    env = dict(os.environ, EIS_HIL_CACHE_DIR=str(cache_dir))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rehash(model_dir: Path) -> None:
    """Rewrite model.keras with different bytes but the same weights, and record the new hash."""
    import hashlib

    path = model_dir / "model.keras"
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item.filename))
        dst.writestr("note.txt", "same weights, different archive")
    tmp.replace(path)
    meta_path = model_dir / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["model_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))


def test_new_model_hash_gets_its_own_cache(trained_model: Path, tmp_path: Path, cache_dir: Path) -> None:
    model_dir = _copy_model(trained_model, tmp_path / "model")
    first = read_metadata(model_dir)
    assert load_weights(first, cache_dir=cache_dir)[1] == "keras"
    assert load_weights(first, cache_dir=cache_dir)[1] == "cache"
    _rehash(model_dir)
    second = read_metadata(model_dir)
    assert second.model_sha256 != first.model_sha256
    with pytest.raises(ModelLoadError, match="no cache yet"):
        load_weights(second, cache_dir=cache_dir, rebuild=False)
    assert load_weights(second, cache_dir=cache_dir)[1] == "keras"
    assert cache_path(second.model_sha256, cache_dir).is_file()


def test_stale_cache_is_refused_and_rebuilt(trained_model: Path, tmp_path: Path, cache_dir: Path) -> None:
    model_dir = _copy_model(trained_model, tmp_path / "model")
    old = read_metadata(model_dir)
    load_weights(old, cache_dir=cache_dir)
    _rehash(model_dir)
    new = read_metadata(model_dir)
    # a cache of the old model under the new model's name (a copied cache dir, a hand-edited file...)
    shutil.copy(cache_path(old.model_sha256, cache_dir), cache_path(new.model_sha256, cache_dir))
    with pytest.raises(ModelLoadError, match="stale weight cache") as err:
        NumpyPinn.load(model_dir, cache_dir=cache_dir, rebuild=False)
    assert str(cache_path(new.model_sha256, cache_dir)) in str(err.value)
    assert load_weights(new, cache_dir=cache_dir)[1] == "keras"
    assert load_weights(new, cache_dir=cache_dir)[1] == "cache"


@pytest.mark.parametrize("garbage", [b"", b"not a zip file", b"PK\x03\x04truncated"])
def test_corrupt_cache_is_refused_and_rebuilt(trained_model: Path, cache_dir: Path, garbage: bytes) -> None:
    meta = read_metadata(trained_model)
    path = cache_path(meta.model_sha256, cache_dir)
    path.parent.mkdir(parents=True)
    path.write_bytes(garbage)
    with pytest.raises(ModelLoadError, match="corrupt weight cache") as err:
        NumpyPinn.load(trained_model, cache_dir=cache_dir, rebuild=False)
    assert str(path) in str(err.value)
    rt = NumpyPinn.load(trained_model, cache_dir=cache_dir)
    assert np.isfinite(rt.impedance(0, [0.5, 25, 1], [1.0, 10.0])).all()
    assert load_weights(meta, cache_dir=cache_dir)[1] == "cache"


def test_cache_with_wrong_shapes_is_refused(trained_model: Path, cache_dir: Path) -> None:
    meta = read_metadata(trained_model)
    load_weights(meta, cache_dir=cache_dir)
    path = cache_path(meta.model_sha256, cache_dir)
    with np.load(path) as npz:
        arrays = dict(npz)
    arrays["h2_kernel"] = arrays["h2_kernel"][:, :3]
    np.savez(path, **arrays)
    with pytest.raises(ModelLoadError, match="h2_kernel has shape"):
        load_weights(meta, cache_dir=cache_dir, rebuild=False)


def test_missing_or_corrupt_model_names_the_file(
    trained_model: Path, tmp_path: Path, cache_dir: Path
) -> None:
    model_dir = _copy_model(trained_model, tmp_path / "model")
    (model_dir / "model.keras").write_bytes(b"garbage")
    meta = json.loads((model_dir / "metadata.json").read_text())
    import hashlib

    meta["model_sha256"] = hashlib.sha256(b"garbage").hexdigest()
    (model_dir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=r"model\.keras: not a Keras archive"):
        NumpyPinn.load(model_dir, cache_dir=cache_dir)
    (model_dir / "model.keras").unlink()
    with pytest.raises(ModelLoadError, match=r"model\.keras: missing"):
        NumpyPinn.load(model_dir, cache_dir=cache_dir)
    with pytest.raises(ModelLoadError, match=r"metadata\.json: missing"):
        NumpyPinn.load(tmp_path / "nowhere", cache_dir=cache_dir)


def test_unwritable_cache_dir_still_loads(trained_model: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    rt = NumpyPinn.load(trained_model, cache_dir=blocker / "cache")
    assert np.isfinite(rt.impedance(0, [0.5, 25, 1], [1.0])).all()


def test_bundled_model_parity(cache_dir: Path) -> None:
    """The shipped model, whose weights are larger than the smoke-trained one's."""
    try:
        rt = NumpyPinn.load(BUNDLED_MODEL_DIR, cache_dir=cache_dir)
        from hil_server.model.store import load_keras_model

        model = load_keras_model(BUNDLED_MODEL_DIR)[0]
    except ModelLoadError as exc:
        pytest.skip(f"bundled model not usable here: {exc}")
    rng = np.random.default_rng(3)
    profile, cell, op, freq = _random_inputs(rng, 1000, len(rt.profiles), len(rt.cells))
    z_keras, _ = _keras(model, profile, cell, op, freq)
    rel = _rel(rt.impedance(profile, op, freq, cell=cell), z_keras)
    assert rel < TOLERANCE, f"bundled model: max relative difference vs Keras {rel:.2e}"


# ---- the single-point path, the batch circuit and their helpers -------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_single_points_match_keras(
    trained_model: Path, keras_model: Any, cache_dir: Path, dtype: type[np.floating[Any]]
) -> None:
    """The server's call (scalar profile and cell, one op row) takes its own path: check it point by point."""
    rt = NumpyPinn.load(trained_model, cache_dir=cache_dir, dtype=dtype)
    rng = np.random.default_rng(11)
    profile, cell, op, freq = _random_inputs(rng, 48, len(rt.profiles), len(rt.cells))
    z_keras, p_keras = _keras(keras_model, profile, cell, op, freq)
    z = np.concatenate(
        [rt.impedance(int(p), o, freq, cell=int(c)) for p, o, c in zip(profile, op, cell, strict=True)]
    )
    params = np.concatenate(
        [rt.params(int(p), o, cell=int(c)) for p, o, c in zip(profile, op, cell, strict=True)]
    )
    assert z.dtype == rt.complex_dtype
    assert params.dtype == rt.dtype
    assert _rel(z, z_keras) < TOLERANCE
    assert _rel(params, p_keras) < TOLERANCE
    # and the same points as a batch agree with them to float32 rounding
    batch = rt.impedance(profile, op, freq, cell=cell)
    assert _rel(z, batch) < 2e-6


def _random_log_params(rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
    """Log-parameters over the whole clipped range (exponents in the A1, A2, PHI_W columns), with a third of
    the Warburg time constants tiny enough for |s| < SMALL_S at low frequency."""
    from hil_server.model.circuit import P
    from hil_server.model.constants import LOG_MAX, LOG_MIN

    lp = rng.uniform(LOG_MIN, LOG_MAX, (n, 12))
    lp[:, [P.R0, P.R_L, P.R1, P.R2, P.R_W]] = rng.uniform(-8, 3, (n, 5))
    lp[: n // 3, P.TAU_W] = rng.uniform(LOG_MIN, -15, n // 3)
    lp[:, P.A1] = rng.uniform(0.5, 1.0, n)
    lp[:, P.A2] = rng.uniform(0.5, 1.0, n)
    lp[:, P.PHI_W] = rng.uniform(0.3, 0.5, n)
    return lp


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_circuit_paths_match_the_reference_circuit(
    trained_model: Path, cache_dir: Path, dtype: type[np.floating[Any]]
) -> None:
    """Both circuit paths against circuit.py (float64, complex) on random parameters over the whole range,
    the Warburg's small-|s| series included, one block and several."""
    from hil_server.model import circuit, runtime
    from hil_server.model.circuit import SMALL_S, P

    rt = NumpyPinn.load(trained_model, cache_dir=cache_dir, dtype=dtype)
    rng = np.random.default_rng(5)
    n = runtime.BLOCK_POINTS // 60 + 40  # two blocks at 60 frequencies
    lp = _random_log_params(rng, n)
    freq = np.logspace(-3, 5, 60)
    grid = rt._grid(freq)
    params = np.exp(lp)
    params[:, P.A1 :: 3] = lp[:, P.A1 :: 3]
    w = np.exp(grid.logw)  # the frequencies as the runtime sees them (float32-rounded for a float32 runtime)
    reference = circuit.impedance(params, np.broadcast_to(w / (2 * np.pi), (n, len(freq))))
    s_w = np.exp(lp[:, P.PHI_W, None] * (grid.logw + lp[:, P.TAU_W, None]))
    assert (s_w < SMALL_S).any(), "the test must reach the Warburg series"
    # float32: the general Warburg formula loses ~2 digits just above SMALL_S (1 - e ~ 2s), as Keras's does;
    # circuit.py itself is off by up to ~1e-7 at a few points (checked against mpmath while writing this)
    tol = 2e-5 if dtype == np.float32 else 1e-6
    batch = rt._batch_circuit(lp, grid)
    assert batch.dtype == rt.complex_dtype
    assert _rel(batch, reference) < tol
    single = np.concatenate([rt._point_circuit(row.tolist(), grid) for row in lp[:64]])
    assert _rel(single, reference[:64]) < 1e-6
    # the two float64 computations agree far more closely with each other than with the reference
    if dtype == np.float64:
        assert _rel(single, batch[:64]) < 1e-11


def test_matmul_never_exceeds_the_serial_blas_size() -> None:
    from hil_server.model._fold import BLAS_SERIAL_MNK
    from hil_server.model._fold import matmul as _matmul

    rng = np.random.default_rng(0)
    for n, k, m in [(1, 3, 64), (63, 64, 64), (64, 64, 64), (65, 64, 64), (1000, 64, 12), (4097, 3, 64)]:
        x = rng.normal(size=(n, k)).astype(np.float32)
        w = rng.normal(size=(k, m)).astype(np.float32)
        got = _matmul(x, w)
        assert got.shape == (n, m)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, x @ w, rtol=1e-5, atol=1e-5)
    assert BLAS_SERIAL_MNK // (64 * 64) == 64  # the hidden layer runs in 64-row blocks


def test_frequency_grids_are_cached_by_value(trained_model: Path, cache_dir: Path) -> None:
    from hil_server.model import runtime

    rt = NumpyPinn.load(trained_model, cache_dir=cache_dir)
    fresh = NumpyPinn.load(trained_model, cache_dir=cache_dir)
    op = [0.4, 10.0, 0.9]
    freq = np.logspace(-2, 4, 30)
    first = rt.impedance(0, op, freq)
    freq *= 2  # the same array object, other values: must not hit the old entry
    assert np.array_equal(rt.impedance(0, op, freq), fresh.impedance(0, op, freq))
    assert not np.allclose(rt.impedance(0, op, freq), first)
    for i in range(runtime.GRID_CACHE_SIZE + 3):
        rt.impedance([0, 0], [op, op], np.logspace(-2, 4, 10 + i))
    assert len(rt._grids) == runtime.GRID_CACHE_SIZE


@pytest.mark.parametrize(
    ("freq", "match"),
    [
        ([1.0, 0.0, 10.0], "positive"),
        ([1.0, -5.0], "positive"),
        ([1.0, float("nan")], "positive"),
        ([[1.0, 10.0]], "one shared frequency vector"),
        ([], "one shared frequency vector"),
    ],
)
def test_bad_frequencies_are_refused(trained_model: Path, cache_dir: Path, freq: Any, match: str) -> None:
    rt = NumpyPinn.load(trained_model, cache_dir=cache_dir)
    with pytest.raises(ValueError, match=match):
        rt.impedance(0, [0.5, 25, 1], freq)
    with pytest.raises(ValueError, match=match):
        rt.impedance([0, 1], [[0.5, 25, 1], [0.5, 25, 1]], freq)


def test_latent_batch_shapes(trained_model: Path, cache_dir: Path) -> None:
    """A shared latent vector or one per point; a latent table of the wrong length is refused."""
    rt = NumpyPinn.load(trained_model, cache_dir=cache_dir)
    freq = np.logspace(-1, 3, 8)
    ops = [[0.5, 25.0, 0.9], [0.3, 5.0, 0.8]]
    lat = np.full(rt.latent_dim, 0.1)
    shared = rt.impedance([0, 0], ops, freq, lat)
    each = rt.impedance([0, 0], ops, freq, np.stack([lat, lat]))
    assert np.allclose(shared, each)
    assert np.allclose(rt.impedance(0, ops[0], freq, lat), shared[:1], rtol=2e-6)
    with pytest.raises(ValueError, match="latent must be"):
        rt.impedance([0, 0], ops, freq, np.stack([lat, lat, lat]))
