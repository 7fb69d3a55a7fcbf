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

from hil_server.model.runtime import NumpyPinn, cache_path, load_weights
from hil_server.model.store import BUNDLED_MODEL_DIR, ModelLoadError, read_metadata

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


def test_constants_match_pinn() -> None:
    from hil_server.model import pinn, runtime

    assert (runtime.T_REF_K, runtime.KELVIN) == (pinn.T_REF_K, pinn.KELVIN)
    assert (runtime.LOG_MIN, runtime.LOG_MAX) == (pinn.LOG_MIN, pinn.LOG_MAX)
    assert runtime.ARRHENIUS == pinn.ARRHENIUS
    assert runtime.GAPS == pinn.GAPS


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
