"""TFLite export: the exported models run in the LiteRT interpreter, and the report's figures are the ones
the written file produces there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hil_server.model.export import (
    DEFAULT_FREQ_HZ,
    at_spectra,
    export_tflite,
    format_report,
    grid_inputs,
    nrmse,
    op_counts,
    random_inputs,
    run_keras,
    run_tflite,
    validation_spectra,
)
from hil_server.model.store import load_keras_model, read_metadata

pytest.importorskip("ai_edge_litert")

PHYSICS_OPS = {"EXP", "LOG", "COS", "SIN", "DIV", "SELECT_V2"}


@pytest.fixture(scope="module")
def int8_export(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One int8 export with every variant compared (the slow part, shared by the tests below)."""
    out = tmp_path_factory.mktemp("export") / "model_int8.tflite"
    return out, export_tflite(trained_model, out, "int8", n_check=64)


@pytest.fixture(scope="module")
def keras_model(trained_model: Path) -> Any:
    return load_keras_model(trained_model)[0]


def test_int8_file_is_the_int8_network_with_float_physics(int8_export: tuple[Path, dict[str, Any]]) -> None:
    out, report = int8_export
    data = out.read_bytes()
    assert report["written_variant"] == "int8"
    assert len(data) == report["size_bytes"] == report["variants"]["int8"]["size_bytes"]
    ops = op_counts(data)
    assert ops == report["variants"]["int8"]["ops"]
    assert ops["int8"]["FULLY_CONNECTED"] == 3
    assert ops["int8"]["TANH"] == 2
    # the physics layer stays float32: none of its ops runs on int8 tensors
    assert not PHYSICS_OPS & set(ops["int8"]), ops["int8"]
    assert set(ops["float32"]) >= PHYSICS_OPS
    assert "FULLY_CONNECTED" not in ops["float32"]


def test_reported_figures_are_what_the_written_file_computes(
    trained_model: Path, keras_model: Any, int8_export: tuple[Path, dict[str, Any]]
) -> None:
    out, report = int8_export
    meta = read_metadata(trained_model)
    data = out.read_bytes()
    row = report["variants"]["int8"]
    # accuracy lost to quantisation: NRMSE vs Keras on the grid over the trained input range
    grid = grid_inputs(meta, DEFAULT_FREQ_HZ)
    err = nrmse(run_tflite(data, grid), run_keras(keras_model, grid))
    assert row["nrmse_vs_keras_grid"]["n"] == len(err)
    assert row["nrmse_vs_keras_grid"]["median"] == pytest.approx(float(np.median(err)), rel=1e-9)
    assert row["nrmse_vs_keras_grid"]["max"] == pytest.approx(float(np.max(err)), rel=1e-9)
    # parity on random inputs over the whole range, every cell
    check = random_inputs(np.random.default_rng(0), 64, len(meta.profiles), len(meta.cells), DEFAULT_FREQ_HZ)
    z, z_keras = run_tflite(data, check), run_keras(keras_model, check)
    assert row["max_rel_diff_vs_keras"] == pytest.approx(float(np.max(np.abs(z - z_keras) / np.abs(z_keras))))
    # and the quantisation really costs something, within reason
    assert 0 < row["nrmse_vs_keras_grid"]["median"] < 0.1


def test_validation_spectra_figures(
    trained_model: Path, keras_model: Any, int8_export: tuple[Path, dict[str, Any]]
) -> None:
    out, report = int8_export
    meta = read_metadata(trained_model)
    spectra = validation_spectra(meta)
    if spectra is None:
        assert report["validation_spectra"].startswith("not available")
        pytest.skip("no measured validation spectra here")
    assert report["validation_spectra"] == len(spectra)
    data = out.read_bytes()
    zs = at_spectra(lambda x: run_tflite(data, x), meta, spectra, len(DEFAULT_FREQ_HZ))
    assert [len(z) for z in zs] == [s.n_points for s in spectra]
    err = np.array([nrmse(z, s.z) for z, s in zip(zs, spectra, strict=True)])
    reported = report["variants"]["int8"]["nrmse_vs_measured_validation"]
    assert reported["all"]["median"] == pytest.approx(float(np.median(err)), rel=1e-9)
    assert set(reported) == {"all"} | {s.source for s in spectra}
    # the float32 file tracks the Keras model against the measurements
    keras = report["keras_nrmse_vs_measured_validation"]["all"]["median"]
    assert report["variants"]["float32"]["nrmse_vs_measured_validation"]["all"]["median"] == pytest.approx(
        keras, rel=1e-4
    )
    assert keras == pytest.approx(
        float(
            np.median(
                [
                    nrmse(z, s.z)
                    for z, s in zip(
                        at_spectra(lambda x: run_keras(keras_model, x), meta, spectra, len(DEFAULT_FREQ_HZ)),
                        spectra,
                        strict=True,
                    )
                ]
            )
        ),
        rel=1e-9,
    )


def test_every_variant_is_reported(int8_export: tuple[Path, dict[str, Any]]) -> None:
    _, report = int8_export
    variants = report["variants"]
    assert set(variants) == {"float32", "int8", "int8-weights-only", "int8-full"}
    assert variants["float32"]["max_rel_diff_vs_keras"] < 1e-5
    weights_only = variants["int8-weights-only"]
    assert weights_only["size_bytes"] < variants["float32"]["size_bytes"]
    assert "int8" not in weights_only["ops"]  # dynamic range: int8 weights, float activations
    # int8 everywhere either fails to run (TFLite's int8 DIV) or is reported with its figures
    full = variants["int8-full"]
    assert "error" in full or full["nrmse_vs_keras_grid"] is None or full["nrmse_vs_keras_grid"]["median"] > 0
    text = format_report(report)
    for name in variants:
        assert name in text
    json.dumps(report)  # the CLI prints it as JSON


def test_float32_export_runs_in_litert(trained_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.tflite"
    report = export_tflite(trained_model, out, "float32", n_check=32, compare=False)
    assert set(report["variants"]) == {"float32"}
    assert out.stat().st_size == report["size_bytes"]
    rel = report["float32_max_rel_diff_vs_keras"]
    assert rel < 1e-5, f"float32 TFLite vs Keras: max relative difference {rel:.2e}"
    meta = read_metadata(trained_model)
    z = run_tflite(
        out.read_bytes(), random_inputs(np.random.default_rng(1), 8, len(meta.profiles), 1, DEFAULT_FREQ_HZ)
    )
    assert z.shape == (8, len(DEFAULT_FREQ_HZ))
    assert np.isfinite(z).all()
    assert (z.real > 0).all()
    assert "int8" not in op_counts(out.read_bytes())


def test_bad_frequencies_are_refused(trained_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive frequencies"):
        export_tflite(trained_model, tmp_path / "x.tflite", freq_hz=[1.0, -1.0], compare=False)
    assert not (tmp_path / "x.tflite").exists()
