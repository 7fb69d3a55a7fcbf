"""TFLite export of the whole PINN (network + physics layer, real arithmetic only), float32 or int8.

The exported graph: inputs ``profile`` (B,) int32, ``cell`` (B,) int32, ``op`` (B, 3) float32 and ``freq_hz``
(B, n_freq) float32 with a fixed number of frequencies; outputs ``z_re``, ``z_im`` (B, n_freq). int8 quantises
the weights (activations stay float32: see ``export_tflite``); inputs and outputs are float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import structlog

from .store import load_keras_model

log = structlog.get_logger(__name__)

Quantize = Literal["float32", "int8"]
OUTPUTS = sorted(["z_re", "z_im"])


def _concrete(model: Any, n_freq: int) -> Any:
    import tensorflow as tf

    spec = {
        "profile": tf.TensorSpec([None], tf.int32, name="profile"),
        "cell": tf.TensorSpec([None], tf.int32, name="cell"),
        "op": tf.TensorSpec([None, 3], tf.float32, name="op"),
        "freq_hz": tf.TensorSpec([None, n_freq], tf.float32, name="freq_hz"),
    }

    @tf.function(input_signature=[spec])  # type: ignore[untyped-decorator]
    def serve(inputs: dict[str, Any]) -> dict[str, Any]:
        out = model(inputs, training=False)
        return {"z_re": out["z_re"], "z_im": out["z_im"]}

    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    # Frozen: with the weights as resource variables the int8 calibrator fails on READ_VARIABLE.
    return convert_variables_to_constants_v2(serve.get_concrete_function())


def random_inputs(
    rng: np.random.Generator, n: int, n_profiles: int, n_cells: int, freq_hz: npt.NDArray[np.float32]
) -> dict[str, npt.NDArray[Any]]:
    """Inputs over the whole range: SOC 0..1, -40..80 C, SOH 0.4..1, every profile and cell."""
    op = np.stack([rng.uniform(0, 1, n), rng.uniform(-40, 80, n), rng.uniform(0.4, 1, n)], 1)
    return {
        "profile": rng.integers(0, n_profiles, n).astype(np.int32),
        "cell": rng.integers(0, n_cells + 1, n).astype(np.int32),
        "op": op.astype(np.float32),
        "freq_hz": np.broadcast_to(freq_hz, (n, len(freq_hz))).astype(np.float32),
    }


def measured_inputs(
    profiles: list[str], freq_hz: npt.NDArray[np.float32], limit: int = 400
) -> dict[str, npt.NDArray[Any]] | None:
    """Operating points of the measured spectra (typical cell), or None without the data."""
    try:
        from hil_server.eis_data import load_all

        spectra = load_all().clean()
        rows = [(profiles.index(s.source), s.soc, s.temp_c, s.soh) for s in spectra if s.source in profiles]
    except Exception as exc:  # no data here is normal for an installed package: fall back to random points
        log.info("measured operating points unavailable, using random ones", error=str(exc))
        return None
    if not rows:
        return None
    pick = np.random.default_rng(0).permutation(len(rows))[:limit]
    arr = np.asarray([rows[i] for i in pick], np.float64)
    n = len(arr)
    return {
        "profile": arr[:, 0].astype(np.int32),
        "cell": np.zeros(n, np.int32),
        "op": arr[:, 1:].astype(np.float32),
        "freq_hz": np.broadcast_to(freq_hz, (n, len(freq_hz))).astype(np.float32),
    }


def run_tflite(model_bytes: bytes, inputs: dict[str, npt.NDArray[Any]]) -> npt.NDArray[np.complex128]:
    """Z (n, F) from a .tflite model, one point per invocation (LiteRT if installed, else tf.lite)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interp = Interpreter(model_content=model_bytes)
    runner = interp.get_signature_runner()
    out = runner(**{k: v for k, v in inputs.items()})
    if "z_re" not in out:
        # Freezing drops the output names: outputs follow tf.nest's sorted keys, z_im then z_re.
        out = dict(zip(OUTPUTS, (out[f"output_{i}"] for i in range(len(OUTPUTS))), strict=True))
    return np.asarray(out["z_re"], np.float64) + 1j * np.asarray(out["z_im"], np.float64)


def _nrmse(pred: npt.NDArray[Any], ref: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    err: npt.NDArray[np.float64] = np.sqrt(np.mean(np.abs(pred - ref) ** 2, axis=1)) / np.mean(
        np.abs(ref), axis=1
    )
    return err


def export_tflite(
    model_dir: Path,
    out_path: Path,
    quantize: Quantize = "float32",
    *,
    freq_hz: npt.ArrayLike | None = None,
    n_check: int = 256,
) -> dict[str, Any]:
    """Write ``out_path`` and return a report: parity vs Keras, int8 loss vs float32, sizes in bytes."""
    import tensorflow as tf

    model, meta = load_keras_model(model_dir)
    freq = np.asarray(np.logspace(-2, 4, 60) if freq_hz is None else freq_hz, np.float32)
    concrete = _concrete(model, len(freq))
    n_cells = len(meta.cells)
    rng = np.random.default_rng(0)

    def convert(mode: Quantize) -> bytes:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
        if mode == "int8":
            # Weights int8, activations float ("dynamic range"). Full-integer quantisation with a
            # representative dataset was tried: the physics layer's activations span 1e-11..1e10 (time
            # constants, CPE magnitudes) and the quantised DIV kernel fails at run time (divisor is the
            # zero point).
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        data: bytes = converter.convert()
        return data

    float_bytes = convert("float32")
    out_bytes = float_bytes if quantize == "float32" else convert("int8")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(out_bytes)

    check = random_inputs(rng, n_check, len(meta.profiles), n_cells, freq)
    keras_out = model(check, training=False)
    z_keras = np.asarray(keras_out["z_re"], np.float64) + 1j * np.asarray(keras_out["z_im"], np.float64)
    z_float = run_tflite(float_bytes, check)
    report: dict[str, Any] = {
        "path": str(out_path),
        "quantize": quantize,
        "n_freq": len(freq),
        "size_bytes": len(out_bytes),
        "float32_size_bytes": len(float_bytes),
        "keras_size_bytes": meta.path.stat().st_size,
        "float32_max_rel_diff_vs_keras": float(np.max(np.abs(z_float - z_keras) / np.abs(z_keras))),
    }
    if quantize == "int8":
        measured = measured_inputs(meta.profiles, freq)
        points = measured if measured is not None else check
        z_ref = run_tflite(float_bytes, points)
        err = _nrmse(run_tflite(out_bytes, points), z_ref)
        report["int8_nrmse_vs_float32"] = {
            "points": "measured" if measured is not None else "random",
            "n": len(err),
            "median": float(np.median(err)),
            "p90": float(np.quantile(err, 0.9)),
        }
    log.info("tflite exported", **{k: v for k, v in report.items() if not isinstance(v, dict)})
    return report
