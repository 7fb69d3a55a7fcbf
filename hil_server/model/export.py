"""TFLite export of the whole PINN (network + physics layer, real arithmetic only), float32 or int8.

The exported graph: inputs ``profile`` (B,) int32, ``cell`` (B,) int32, ``op`` (B, 3) float32 and ``freq_hz``
(B, n_freq) float32 with a fixed number of frequencies; outputs ``z_re``, ``z_im`` (B, n_freq) float32.

``int8`` is full-integer quantisation of the network (the three dense layers and both tanh: int8 weights and
activations, int32 biases, calibrated on a representative dataset drawn over the model's trained input range)
with the physics layer kept in float32, inputs and outputs float32. Why not int8 everywhere:

- the physics layer is not quantisable in int8. Its activations span 1e-11..1e10 (time constants, CPE
  magnitudes (w tau)^a over 6 decades of frequency, exp(-2s)); one int8 scale per tensor leaves two or three
  significant levels in most of them, and TFLite's int8 DIV kernel refuses to run at all (a calibrated
  divisor lands on its zero point). The report shows that attempt (``int8-full``) with its error;
- int8 inputs and outputs would not help an MCU either: the inputs are physical quantities with different
  scales in one tensor (SOC 0..1 beside temperature in C), and Z spans decades, so per-tensor int8 scales
  would cost more accuracy than the whole network's quantisation. Float I/O converts once at the first dense
  layer (one QUANTIZE) and once after the last (one DEQUANTIZE), ops TFLite Micro has (whether its kernel
  set covers every float op of the physics layer, ONE_HOT and GATHER included, was not checked here).

What int8 costs (bundled model, 60 frequencies 0.01 Hz..10 kHz): 55.9 kB against 68.0 kB in float32, and
2.3 % median NRMSE against the Keras model on a grid over the trained input range (p90 4.4 %; about 0.5 % from
the first layer, 1.8 % each from the second layer's pre-activations (int8 over +-31 where tanh only needs +-3)
and from the output layer's 12 log-parameters sharing one int8 scale); on the measured validation spectra of
rashid2023 2.6 % -> 3.3 % median. Its input scale is calibrated on the trained range, so points far outside
it saturate (35 % worst relative difference on random inputs over -40..80 C). Weights-only int8 (dynamic
range: 0.2 % NRMSE, 56.5 kB) needs float kernels with int8 weights, which TFLite Micro does not have. On an
MCU with an FPU the float32 file is the better choice; int8 pays off only where int8 matrix units are what the
target has. One STRIDED_SLICE of a clipped log-parameter in the transforms also comes out int8 (the
QuantizationDebugger denylist does not reach it, by op type or by name); the figures include its effect.

The report (also printed by ``eis-hil export-tflite``) gives, for each variant (float32, int8, int8 weights
only, int8 everywhere): size, max relative difference from the Keras model on random inputs over the whole
input range, NRMSE against the Keras model on a grid over the trained input range (the accuracy lost to
quantisation), and NRMSE against the measured validation spectra when the data is installed (beside the Keras
model's own, so the loss reads against the model's error).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import structlog

from .store import ModelLoadError, ModelMetadata, load_keras_model

log = structlog.get_logger(__name__)

Quantize = Literal["float32", "int8"]
OUTPUTS = sorted(["z_re", "z_im"])
DEFAULT_FREQ_HZ = np.logspace(-2, 4, 60).astype(np.float32)
NETWORK_OPS = frozenset({"FULLY_CONNECTED", "TANH"})
"""The ops int8 quantises; all others (the physics layer, the transforms, index handling) stay float32."""
CONVERSION_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
REPRESENTATIVE_SAMPLES = 256
GRID_SOC, GRID_TEMP, GRID_SOH = 6, 4, 3
"""Points per axis of the accuracy grid over each profile's trained input range."""
VALIDATION_LIMIT = 300

Inputs = dict[str, npt.NDArray[Any]]
Z = npt.NDArray[np.complex128]


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


# ---- inputs -------------------------------------------------------------------------------------------


def random_inputs(
    rng: np.random.Generator, n: int, n_profiles: int, n_cells: int, freq_hz: npt.NDArray[np.float32]
) -> Inputs:
    """Inputs over the whole range: SOC 0..1, -40..80 C, SOH 0.4..1, every profile and cell."""
    op = np.stack([rng.uniform(0, 1, n), rng.uniform(-40, 80, n), rng.uniform(0.4, 1, n)], 1)
    return {
        "profile": rng.integers(0, n_profiles, n).astype(np.int32),
        "cell": rng.integers(0, n_cells + 1, n).astype(np.int32),
        "op": op.astype(np.float32),
        "freq_hz": np.broadcast_to(freq_hz, (n, len(freq_hz))).astype(np.float32),
    }


def _trained_range(meta: ModelMetadata, profile: str) -> list[tuple[float, float]]:
    """(low, high) of soc, temp_c, soh seen in training for ``profile`` (metadata.json input_ranges)."""
    try:
        ranges = meta.input_ranges[profile]
        return [(float(ranges[k][0]), float(ranges[k][1])) for k in ("soc", "temp_c", "soh")]
    except (KeyError, IndexError, TypeError, ValueError):
        raise ModelLoadError(
            f"{meta.path.parent / 'metadata.json'}: input_ranges has no [low, high] soc, temp_c and soh "
            f"for profile {profile!r}"
        ) from None


def trained_range_inputs(
    meta: ModelMetadata, rng: np.random.Generator, n: int, freq_hz: npt.NDArray[np.float32]
) -> Inputs:
    """Random points inside each profile's trained input range, every cell: the representative dataset."""
    profile = rng.integers(0, len(meta.profiles), n)
    op = np.empty((n, 3), np.float32)
    for k, name in enumerate(meta.profiles):
        rows = profile == k
        for j, (low, high) in enumerate(_trained_range(meta, name)):
            op[rows, j] = rng.uniform(low, high, int(rows.sum()))
    return {
        "profile": profile.astype(np.int32),
        "cell": rng.integers(0, len(meta.cells) + 1, n).astype(np.int32),
        "op": op,
        "freq_hz": np.broadcast_to(freq_hz, (n, len(freq_hz))).astype(np.float32),
    }


def grid_inputs(meta: ModelMetadata, freq_hz: npt.NDArray[np.float32]) -> Inputs:
    """A regular grid over each profile's trained input range, typical cell: where accuracy is reported."""
    rows = []
    for k, name in enumerate(meta.profiles):
        (s0, s1), (t0, t1), (h0, h1) = _trained_range(meta, name)
        for soc in np.linspace(s0, s1, GRID_SOC):
            for temp in np.linspace(t0, t1, GRID_TEMP):
                for soh in np.linspace(h0, h1, GRID_SOH):
                    rows.append((k, soc, temp, soh))
    arr = np.asarray(rows, np.float64)
    n = len(arr)
    return {
        "profile": arr[:, 0].astype(np.int32),
        "cell": np.zeros(n, np.int32),
        "op": arr[:, 1:].astype(np.float32),
        "freq_hz": np.broadcast_to(freq_hz, (n, len(freq_hz))).astype(np.float32),
    }


def validation_spectra(meta: ModelMetadata, limit: int = VALIDATION_LIMIT) -> list[Any] | None:
    """Measured spectra of the model's validation cells (metadata.json), or None without the data. A model
    trained on every cell (selected by grouped CV, as the bundled one) has none: then the measured spectra of
    its training cells, where the variants' loss against the measurements still reads against the model's."""
    cells = set(meta.raw.get("validation_cells", [])) or set(meta.cells)
    if not cells:
        return None
    try:
        from hil_server.eis_data import load_all

        known = meta.profiles
        spectra = list(
            load_all(simulated=True).clean().filter(cells=cells, predicate=lambda s: s.profile in known)
        )
    except Exception as exc:  # no data is normal for an installed package: the report says so
        log.info("validation spectra unavailable", error=str(exc))
        return None
    if not spectra:
        return None
    pick = np.random.default_rng(0).permutation(len(spectra))[:limit]
    return [spectra[i] for i in sorted(pick)]


# ---- running ------------------------------------------------------------------------------------------


def run_tflite(model_bytes: bytes, inputs: Inputs) -> Z:
    """Z (n, F) from a .tflite model in one invocation (LiteRT if installed, else tf.lite)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interp = Interpreter(model_content=model_bytes)
    runner = interp.get_signature_runner()
    out = runner(**dict(inputs.items()))
    if "z_re" not in out:
        # Freezing drops the output names: outputs follow tf.nest's sorted keys, z_im then z_re.
        out = dict(zip(OUTPUTS, (out[f"output_{i}"] for i in range(len(OUTPUTS))), strict=True))
    return np.asarray(out["z_re"], np.float64) + 1j * np.asarray(out["z_im"], np.float64)


def run_keras(model: Any, inputs: Inputs) -> Z:
    out = model(inputs, training=False)
    return np.asarray(out["z_re"], np.float64) + 1j * np.asarray(out["z_im"], np.float64)


def at_spectra(run: Callable[[Inputs], Z], meta: ModelMetadata, spectra: list[Any], n_freq: int) -> list[Z]:
    """Model Z at each spectrum's own frequencies, through a graph of fixed width ``n_freq``: each spectrum
    takes ceil(len / n_freq) rows, the last padded with its lowest frequency."""
    profile, op, freq, spans = [], [], [], []
    for s in spectra:
        rows = math.ceil(s.n_points / n_freq)
        padded = np.full(rows * n_freq, s.freq_hz[-1], np.float32)
        padded[: s.n_points] = s.freq_hz
        freq.append(padded.reshape(rows, n_freq))
        profile += [meta.profiles.index(s.profile)] * rows
        op += [(s.soc, s.temp_c, s.soh)] * rows
        spans.append(rows)
    z = run(
        {
            "profile": np.asarray(profile, np.int32),
            "cell": np.zeros(len(profile), np.int32),
            "op": np.asarray(op, np.float32),
            "freq_hz": np.concatenate(freq),
        }
    )
    out, row = [], 0
    for s, rows in zip(spectra, spans, strict=True):
        out.append(z[row : row + rows].reshape(-1)[: s.n_points])
        row += rows
    return out


def nrmse(pred: npt.NDArray[Any], ref: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Per spectrum (rows): sqrt(mean |pred - ref|^2) / mean |ref|."""
    err: npt.NDArray[np.float64] = np.sqrt(np.mean(np.abs(pred - ref) ** 2, axis=-1)) / np.mean(
        np.abs(ref), axis=-1
    )
    return err


def _summary(err: npt.NDArray[np.float64]) -> dict[str, float | int]:
    return {
        "n": len(err),
        "median": float(np.median(err)),
        "p90": float(np.quantile(err, 0.9)),
        "max": float(np.max(err)),
    }


def op_counts(model_bytes: bytes) -> dict[str, dict[str, int]]:
    """Ops of a .tflite model by the type of their first output: {"int8": {...}, "float32": {...}, ...}."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_bytes)
    tensors = interp.get_tensor_details()
    counts: dict[str, Counter[str]] = {}
    for op in interp._get_ops_details():
        kind = np.dtype(tensors[op["outputs"][0]]["dtype"]).name
        counts.setdefault(kind, Counter())[op["op_name"]] += 1
    return {kind: dict(sorted(c.items())) for kind, c in sorted(counts.items())}


# ---- conversion ---------------------------------------------------------------------------------------

Variant = Literal["float32", "int8", "int8-weights-only", "int8-full"]


class _Converter:
    """The four conversions of one model, sharing its frozen graph and representative dataset."""

    def __init__(self, model: Any, meta: ModelMetadata, freq: npt.NDArray[np.float32]) -> None:
        self.model = model
        self.meta = meta
        self.freq = freq
        self.concrete = _concrete(model, len(freq))
        self._done: dict[Variant, bytes] = {}
        """Conversions made: "int8" starts from "int8-full", which the comparison also reports."""

    def representative(self) -> Iterator[Inputs]:
        rng = np.random.default_rng(0)
        for _ in range(REPRESENTATIVE_SAMPLES // 8):
            yield trained_range_inputs(self.meta, rng, 8, self.freq)

    def _tf_converter(self, quantized: bool) -> Any:
        import tensorflow as tf

        converter = tf.lite.TFLiteConverter.from_concrete_functions([self.concrete], self.model)
        if quantized:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = self.representative
        return converter

    def convert(self, variant: Variant) -> bytes:
        if variant not in self._done:
            self._done[variant] = self._convert(variant)
        return self._done[variant]

    def _convert(self, variant: Variant) -> bytes:
        import tensorflow as tf

        if variant == "float32":
            data: bytes = self._tf_converter(False).convert()
        elif variant == "int8-weights-only":  # dynamic range: int8 weights, float activations
            converter = self._tf_converter(False)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            data = converter.convert()
        elif variant == "int8-full":  # int8 wherever TFLite has an int8 kernel, physics included
            data = self._tf_converter(True).convert()
        else:
            data = self._network_int8(self.convert("int8-full"))
        return data

    def _network_int8(self, full: bytes) -> bytes:
        """Full-integer dense layers and tanh, every other op kept float (QuantizationDebugger's denylist:
        TFLiteConverter itself has no per-op switch)."""
        import tensorflow as tf

        keep_float = sorted({k for c in op_counts(full).values() for k in c} - NETWORK_OPS - CONVERSION_OPS)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=self._tf_converter(True),
            debug_dataset=self.representative,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=keep_float),
        )
        data: bytes = debugger.get_nondebug_quantized_model()
        return data


@dataclasses.dataclass(frozen=True)
class _Reference:
    """The points every variant is evaluated on, and the Keras model's spectra there."""

    meta: ModelMetadata
    n_freq: int
    check: Inputs
    z_check: Z
    grid: Inputs
    z_grid: Z
    spectra: list[Any] | None


def _evaluate(data: bytes, ref: _Reference) -> dict[str, Any]:
    """One variant's row of the report, every figure from running ``data`` in the interpreter."""
    check, z_check, grid, z_grid = ref.check, ref.z_check, ref.grid, ref.z_grid
    meta, spectra, n_freq = ref.meta, ref.spectra, ref.n_freq
    z = run_tflite(data, check)
    finite = bool(np.isfinite(z).all())
    row: dict[str, Any] = {
        "size_bytes": len(data),
        "ops": op_counts(data),
        "finite": finite,
        "max_rel_diff_vs_keras": float(np.max(np.abs(z - z_check) / np.abs(z_check))) if finite else None,
        "nrmse_vs_keras_grid": _summary(nrmse(run_tflite(data, grid), z_grid)) if finite else None,
    }
    if spectra is not None and finite:
        zs = at_spectra(lambda x: run_tflite(data, x), meta, spectra, n_freq)
        row["nrmse_vs_measured_validation"] = _by_source(zs, spectra)
    return row


def _by_source(zs: list[Z], spectra: list[Any]) -> dict[str, dict[str, float | int]]:
    """NRMSE of model spectra against the measured ones, per source and over all."""
    err = np.array([nrmse(z, s.z) for z, s in zip(zs, spectra, strict=True)])
    sources = np.array([s.source for s in spectra])
    out = {"all": _summary(err)}
    for source in sorted(set(sources)):
        out[str(source)] = _summary(err[sources == source])
    return out


def export_tflite(
    model_dir: Path,
    out_path: Path,
    quantize: Quantize = "float32",
    *,
    freq_hz: npt.ArrayLike | None = None,
    n_check: int = 256,
    compare: bool = True,
) -> dict[str, Any]:
    """Write ``out_path`` and return the report (see the module docstring).

    ``compare=False`` converts and evaluates only float32 and the requested variant (faster)."""
    model, meta = load_keras_model(model_dir)
    freq = np.asarray(DEFAULT_FREQ_HZ if freq_hz is None else freq_hz, np.float32)
    if freq.ndim != 1 or not len(freq) or not (np.isfinite(freq).all() and (freq > 0).all()):
        raise ValueError(f"freq_hz must be a vector of positive frequencies, got {freq!r}")
    n_freq = len(freq)
    converter = _Converter(model, meta, freq)

    check = random_inputs(np.random.default_rng(0), n_check, len(meta.profiles), len(meta.cells), freq)
    grid = grid_inputs(meta, freq)
    spectra = validation_spectra(meta)
    ref = _Reference(meta, n_freq, check, run_keras(model, check), grid, run_keras(model, grid), spectra)
    written: Variant = quantize
    names: list[Variant] = ["float32", "int8", "int8-weights-only", "int8-full"]
    if not compare:
        names = ["float32"] if written == "float32" else ["float32", written]
    variants: dict[str, Any] = {}
    out_bytes = b""
    for name in names:
        try:
            data = converter.convert(name)
            variants[name] = _evaluate(data, ref)
        except Exception as exc:  # a variant that cannot convert or run is a result, not a crash
            if name == written:
                raise
            variants[name] = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1]}"}
            continue
        if name == written:
            out_bytes = data
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(out_bytes)

    report: dict[str, Any] = {
        "path": str(out_path),
        "quantize": quantize,
        "written_variant": written,
        "n_freq": n_freq,
        "freq_hz_range": [float(freq.min()), float(freq.max())],
        "size_bytes": len(out_bytes),
        "keras_size_bytes": meta.path.stat().st_size,
        "float32_max_rel_diff_vs_keras": variants["float32"]["max_rel_diff_vs_keras"],
        "check_points": f"{n_check} random over the whole input range, every cell",
        "grid_points": f"{len(grid['op'])} on a grid over each profile's trained input range, typical cell",
        "validation_spectra": len(spectra) if spectra is not None else "not available (no measured data)",
        "validation_cells": "held-out cells" if meta.raw.get("validation_cells") else "training cells",
        "variants": variants,
    }
    if spectra is not None:
        zs = at_spectra(lambda x: run_keras(model, x), meta, spectra, n_freq)
        report["keras_nrmse_vs_measured_validation"] = _by_source(zs, spectra)
    log.info(
        "tflite exported",
        path=str(out_path),
        variant=written,
        size_bytes=len(out_bytes),
        **{
            f"{k}_grid_nrmse_median": v["nrmse_vs_keras_grid"]["median"]
            for k, v in variants.items()
            if v.get("nrmse_vs_keras_grid")
        },
    )
    return report


def _pct(summary: dict[str, Any] | None, key: str = "median") -> str:
    return "-" if not summary else f"{100 * summary[key]:.3g}%"


def format_report(report: dict[str, Any]) -> str:
    """The report as a table, one row per variant (``export_tflite``'s dict holds every figure)."""
    lines = [
        f"wrote {report['path']} ({report['written_variant']}, {report['size_bytes']} bytes, "
        f"{report['n_freq']} frequencies {report['freq_hz_range'][0]:g}..{report['freq_hz_range'][1]:g} Hz)",
        f"parity: {report['check_points']}; NRMSE vs Keras: {report['grid_points']}; "
        f"validation spectra: {report['validation_spectra']} ({report['validation_cells']})",
    ]
    keras = report.get("keras_nrmse_vs_measured_validation")
    sources = list(keras) if keras else []
    head = f"{'variant':<18} {'bytes':>7} {'max rel vs Keras':>17} {'NRMSE vs Keras med/p90/max':>28}"
    head += "".join(f" {'vs measured ' + s + ' med':>26}" for s in sources)
    lines.append(head)
    if keras:
        lines.append(
            f"{'keras (reference)':<18} {report['keras_size_bytes']:>7} {'':>17} {'':>28}"
            + "".join(f" {_pct(keras[s]):>26}" for s in sources)
        )
    for name, row in report["variants"].items():
        if "error" in row:
            lines.append(f"{name:<18} fails: {row['error']}")
            continue
        grid = row["nrmse_vs_keras_grid"]
        rel = row["max_rel_diff_vs_keras"]
        nr = "/".join(_pct(grid, k) for k in ("median", "p90", "max")) if grid else "not finite"
        measured = row.get("nrmse_vs_measured_validation") or {}
        lines.append(
            f"{name:<18} {row['size_bytes']:>7} {'-' if rel is None else f'{rel:.2e}':>17} {nr:>28}"
            + "".join(f" {_pct(measured.get(s)):>26}" for s in sources)
        )
        int8 = row["ops"].get("int8")
        if int8:
            lines.append(f"{'':<18} int8 ops: " + ", ".join(f"{k} x{v}" for k, v in int8.items()))
    return "\n".join(lines) + "\n"
