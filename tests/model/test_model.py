"""The PINN's physics: circuit (numpy) vs the Keras layer, Kramers-Kronig consistency, parameter transforms,
the Lin-KK test itself, and model loading errors. TensorFlow-backed tests share one import."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from hil_server.model import N_PARAMS, P, impedance, lin_kk
from hil_server.model.store import ModelLoadError, read_metadata

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
FREQ = np.logspace(4, -2, 61)


def random_params(rng: np.random.Generator, n: int) -> np.ndarray:
    p = np.empty((n, N_PARAMS))
    p[:, P.R0] = 10 ** rng.uniform(-3, 0.5, n)
    p[:, P.R_L] = 10 ** rng.uniform(-4, -1, n)
    p[:, P.TAU_L] = 10 ** rng.uniform(-7, -4, n)
    p[:, P.R1] = 10 ** rng.uniform(-3, 0, n)
    p[:, P.TAU1] = 10 ** rng.uniform(-6, -2, n)
    p[:, P.A1] = rng.uniform(0.5, 1.0, n)
    p[:, P.R2] = 10 ** rng.uniform(-3, 0, n)
    p[:, P.TAU2] = p[:, P.TAU1] * 10 ** rng.uniform(0, 3, n)
    p[:, P.A2] = rng.uniform(0.5, 1.0, n)
    p[:, P.R_W] = 10 ** rng.uniform(-3, 0, n)
    p[:, P.TAU_W] = p[:, P.TAU2] * 10 ** rng.uniform(0, 4, n)
    p[:, P.PHI_W] = rng.uniform(0.3, 0.5, n)
    return p


def test_circuit_is_kramers_kronig_consistent_and_positive() -> None:
    params = random_params(np.random.default_rng(1), 60)
    z = impedance(params, FREQ[None, :])
    assert np.all(z.real > 0)
    # With 40 RC elements a consistent spectrum is reproduced to far below 1 %; one that is not, cannot be.
    residuals = [lin_kk(FREQ, zi, fixed_m=40).max_residual for zi in z]
    assert max(residuals) < 0.005, max(residuals)


def test_linkk_rejects_a_non_kk_spectrum() -> None:
    z = impedance(random_params(np.random.default_rng(2), 1)[0], FREQ)
    bump = z + 0.3 * np.abs(z).mean() * np.exp(-((np.log10(FREQ) - 0.5) ** 2) / 0.05)  # real part only
    assert lin_kk(FREQ, z, fixed_m=40).max_residual < 0.005
    assert lin_kk(FREQ, bump, fixed_m=40).max_residual > 0.02
    assert not lin_kk(FREQ, bump).passed()


def test_linkk_on_an_exact_rc_circuit() -> None:
    w = 2 * np.pi * FREQ
    z = 0.05 + 0.02 / (1 + 1j * w * 0.01) + 0.03 / (1 + 1j * w * 1.0)
    assert lin_kk(FREQ, z, fixed_m=30).max_residual < 1e-4
    # The mu criterion stops at the first M whose mu <= c, as specified (Schoenleber 2014), even where a
    # sharp ideal RC is still fitted coarsely; measured spectra have broad time-constant distributions.
    result = lin_kk(FREQ, z)
    assert result.mu <= 0.85
    assert all(lin_kk(FREQ, z, fixed_m=m).mu > 0.85 for m in range(1, result.m))


def test_warburg_series_branch_matches_closed_form() -> None:
    from hil_server.model.circuit import warburg_fs

    w = np.array([1e-7, 1e-6])  # |s| below SMALL_S: the series branch
    series = warburg_fs(w, np.ones(2), np.ones(2), np.full(2, 0.5))
    s = np.sqrt(1j * w)
    exact = 1 / (s * np.tanh(s))
    np.testing.assert_allclose(series, exact, rtol=1e-6)


def test_keras_physics_layer_matches_numpy() -> None:
    from hil_server.model.physics import circuit_impedance

    params = random_params(np.random.default_rng(3), 200)
    freq = np.logspace(5, -3, 81)
    re, im = circuit_impedance(params.astype(np.float32), np.broadcast_to(freq.astype(np.float32), (200, 81)))
    ref = impedance(params, freq[None, :])
    got = np.asarray(re, np.float64) + 1j * np.asarray(im, np.float64)
    rel = np.abs(got - ref) / np.abs(ref)
    assert rel.max() < 1e-4, rel.max()


def test_parameter_transforms_are_physical_everywhere() -> None:
    from hil_server.model.pinn import ParamNet

    net = ParamNet(n_profiles=2, n_cells=3)
    net.build(None)
    rng = np.random.default_rng(4)
    n = 500
    raw = rng.normal(0, 6, (n, N_PARAMS)).astype(np.float32)
    profile = rng.integers(0, 2, n).astype(np.int32)
    temp = rng.uniform(-40, 80, n).astype(np.float32)
    p = np.asarray(net.transform(raw, profile, temp))
    assert np.all(np.isfinite(p))
    for i in (P.R0, P.R_L, P.TAU_L, P.R1, P.TAU1, P.R2, P.TAU2, P.R_W, P.TAU_W):
        assert np.all(p[:, i] > 0), P(i).name
    # open bounds in exact arithmetic; float32 sigmoid saturates onto them at extreme raw values
    assert np.all((p[:, P.A1] >= 0.5) & (p[:, P.A1] <= 1))
    assert np.all((p[:, P.A2] >= 0.5) & (p[:, P.A2] <= 1))
    assert np.all((p[:, P.PHI_W] >= 0.3) & (p[:, P.PHI_W] <= 0.5))
    assert np.all(p[:, P.TAU1] <= p[:, P.TAU2])
    assert np.all(p[:, P.TAU2] <= p[:, P.TAU_W])


def test_arrhenius_factor_lowers_resistance_with_temperature() -> None:
    from hil_server.model.pinn import ParamNet

    net = ParamNet(n_profiles=1, n_cells=1)
    net.build(None)
    raw = np.zeros((3, N_PARAMS), np.float32)
    p = np.asarray(net.transform(raw, np.zeros(3, np.int32), np.array([-20.0, 25.0, 60.0], np.float32)))
    for i in (P.R0, P.R1, P.R2, P.R_W):
        assert p[0, i] > p[1, i] > p[2, i]


# -- model directories -----------------------------------------------------------------------------------


def test_missing_model_directory_says_which_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"metadata\.json: missing"):
        read_metadata(tmp_path)


def test_metadata_naming_a_missing_model_file(tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_text(
        json.dumps(
            {"model_file": "m.keras", "profiles": [], "cells": {}, "input_ranges": {}, "model_sha256": "00"}
        )
    )
    with pytest.raises(ModelLoadError, match=r"m\.keras: missing"):
        read_metadata(tmp_path)


def test_malformed_metadata(tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not JSON"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="missing or malformed field"):
        read_metadata(tmp_path)


def test_corrupt_model_file_is_detected_by_hash(trained_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "m"
    shutil.copytree(trained_model, copy)
    data = bytearray((copy / "model.keras").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.keras").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"does not match metadata\.json"):
        read_metadata(copy)


def test_unloadable_model_file_with_matching_hash(trained_model: Path, tmp_path: Path) -> None:
    import hashlib

    from hil_server.model.store import load_keras_model

    copy = tmp_path / "m"
    shutil.copytree(trained_model, copy)
    (copy / "model.keras").write_bytes(b"PK\x03\x04 not really a zip")
    meta = json.loads((copy / "metadata.json").read_text())
    meta["model_sha256"] = hashlib.sha256((copy / "model.keras").read_bytes()).hexdigest()
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="not a loadable Keras model"):
        load_keras_model(copy)


def test_frame_validity_figure_separates_consistent_from_noisy() -> None:
    from hil_server.model.linkk import kk_residual

    z = impedance(random_params(np.random.default_rng(5), 1)[0], FREQ)
    noisy = z + np.abs(z) * 0.01 * np.random.default_rng(6).standard_normal(FREQ.size)  # real part only
    assert kk_residual(FREQ, z) < 0.001
    assert kk_residual(FREQ, noisy) > 0.01
    assert np.isnan(kk_residual(FREQ[:10], z[:10]))
