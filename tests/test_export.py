"""TFLite export: the whole PINN runs in the LiteRT interpreter and matches the Keras model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hil_server.model.export import export_tflite, random_inputs, run_tflite


@pytest.mark.parametrize("quantize", ["float32", "int8"])
def test_export_runs_in_litert(trained_model: Path, tmp_path: Path, quantize: str) -> None:
    pytest.importorskip("ai_edge_litert")
    out = tmp_path / f"model_{quantize}.tflite"
    report = export_tflite(trained_model, out, quantize, n_check=64)  # type: ignore[arg-type]
    assert out.is_file()
    assert out.stat().st_size == report["size_bytes"] > 0
    rel = report["float32_max_rel_diff_vs_keras"]
    assert rel < 1e-5, f"float32 TFLite vs Keras: max relative difference {rel:.2e}"
    freq = np.logspace(-2, 4, 60).astype(np.float32)
    z = run_tflite(out.read_bytes(), random_inputs(np.random.default_rng(1), 8, 2, 1, freq))
    assert z.shape == (8, 60)
    assert np.isfinite(z).all()
    assert (z.real > 0).all()
    if quantize == "int8":
        assert report["size_bytes"] < report["float32_size_bytes"]
        loss = report["int8_nrmse_vs_float32"]
        assert loss["median"] < 0.05, f"int8 costs {loss['median']:.2%} median NRMSE vs float32"
