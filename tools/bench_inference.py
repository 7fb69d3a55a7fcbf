"""Inference speed: the numpy runtime against the Keras model it comes from and against bare numpy circuits.

    .venv/bin/python tools/bench_inference.py [--model DIR] [--min-time S]

Cases: one operating point (the server's call: scalar profile, typical cell), a 96-cell and a 1024-cell batch
(random profiles, cells and operating points over the whole input range), 60 frequencies each. Columns:

- ``runtime f32`` / ``f64``: ``NumpyPinn.impedance`` (network, transforms and circuit), float32 and float64;
- ``bare circ f32``: only the circuit, written the plain way (complex64 numpy, circuit.py's formulas) on the
  same points' parameters, computed beforehand: the floor the issue quotes for the physics alone;
- ``circuit.py``: ``circuit.impedance`` (the float64 complex reference) on those parameters;
- ``model(x)``, ``predict``: the Keras model of the same file, called directly and through ``predict``.

The numpy columns are measured interleaved (one call of each in turn), so a burst of load from other processes
hits them alike; Keras is measured last, because TensorFlow's thread pools keep spinning after its calls and
would slow whatever runs next. Then process start to first spectrum: a fresh interpreter, warm weight cache.
Medians (and 10th percentiles) over repeated calls. The machine is shared: the load average is printed at the
start and the end, and absolute figures move with it; the ratios, measured in the same run, move less.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hil_server.model import circuit
from hil_server.model.circuit import SMALL_S, P
from hil_server.model.runtime import NumpyPinn
from hil_server.model.store import BUNDLED_MODEL_DIR

TARGETS_US = {1: 50.0, 96: 500.0, 1024: 3000.0}
START_TARGET_S = 0.5
N_FREQ = 60


def bare_circuit_f32(params: npt.NDArray[np.float32], freq: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
    """circuit.py's expressions in complex64 numpy, nothing precomputed: the circuit-only baseline."""
    w = (2 * np.pi * freq).astype(np.float32)[None, :]

    def col(i: P) -> npt.NDArray[np.float32]:
        return params[:, i, None]

    def cpe(tau: npt.NDArray[np.float32], a: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        angle = a * np.float32(np.pi / 2)
        out: npt.NDArray[Any] = (w * tau) ** a * (np.cos(angle) + 1j * np.sin(angle)).astype(np.complex64)
        return out

    jwl = (1j * w * col(P.TAU_L)).astype(np.complex64)
    z = col(P.R0) + col(P.R_L) * jwl / (1 + jwl)
    z = z + col(P.R1) / (1 + cpe(col(P.TAU1), col(P.A1)))
    z = z + col(P.R2) / (1 + cpe(col(P.TAU2), col(P.A2)))
    s = cpe(col(P.TAU_W), col(P.PHI_W))
    small = np.abs(s) < SMALL_S
    s_safe = np.where(small, np.complex64(1), s)
    e = np.exp(-2 * s_safe)
    wb = (1 + e) / ((1 - e) * s_safe)
    if small.any():
        ss = s[small] ** 2
        wb[small] = 1 / ss + 1 / 3 - ss / 45
    result: npt.NDArray[Any] = z + col(P.R_W) * wb
    return result


def interleaved(
    fns: dict[str, Callable[[], Any]], min_time: float, max_rounds: int
) -> dict[str, list[float]]:
    """Seconds per call of each function, one call of each in turn until ``min_time`` has passed."""
    for fn in fns.values():
        fn()  # warm-up: first-call allocations, caches
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (time.perf_counter() - start < min_time or rounds < 5):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return times


def startup_s(model_dir: Path, runs: int = 5) -> float:
    code = (
        "import numpy as np\n"
        "from hil_server.model.runtime import NumpyPinn\n"
        f"NumpyPinn.load({str(model_dir)!r}).impedance(0, [0.5, 25.0, 0.9], np.logspace(-3, 5, 60))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fmt_us(seconds: list[float]) -> str:
    med = statistics.median(seconds) * 1e6
    p10 = float(np.percentile(seconds, 10)) * 1e6
    return f"{med:8.1f} ({p10:6.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL_DIR)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of calls per case")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]

    rt = NumpyPinn.load(args.model)  # also warms the weight cache for the start-up measurement
    rt64 = NumpyPinn.load(args.model, dtype=np.float64)
    start = startup_s(args.model)

    rng = np.random.default_rng(0)
    freq = np.logspace(-3, 5, N_FREQ).astype(np.float32)
    cases = []
    for n in (1, 96, 1024):
        profile = rng.integers(0, len(rt.profiles), n).astype(np.int32)
        cell = rng.integers(0, len(rt.cells) + 1, n).astype(np.int32)
        op = np.stack([rng.uniform(0, 1, n), rng.uniform(-40, 80, n), rng.uniform(0.4, 1, n)], 1)
        op = op.astype(np.float32)
        calls: dict[str, Callable[[], Any]]
        if n == 1:  # the server's single-point call: scalar profile, typical cell
            cell[:] = 0
            p0, op0 = int(profile[0]), op[0]
            calls = {
                "runtime f32": functools.partial(rt.impedance, p0, op0, freq),
                "runtime f64": functools.partial(rt64.impedance, p0, op0, freq),
            }
        else:
            calls = {
                "runtime f32": functools.partial(rt.impedance, profile, op, freq, cell=cell),
                "runtime f64": functools.partial(rt64.impedance, profile, op, freq, cell=cell),
            }
        params = rt.params(profile, op, cell=cell).astype(np.float32)
        params64, freq64 = params.astype(np.float64), np.broadcast_to(freq.astype(np.float64), (n, N_FREQ))
        calls["bare circ f32"] = functools.partial(bare_circuit_f32, params, freq)
        calls["circuit.py"] = functools.partial(circuit.impedance, params64, freq64)
        rounds = 20000 if n == 1 else 2000
        cases.append((n, profile, cell, op, interleaved(calls, args.min_time, rounds)))

    # Where the 1024-cell call goes: network and transforms, per-cell coefficients, the (n, F) circuit passes.
    big = cases[-1]
    grid = rt._grid(freq)
    lp = rt._log_params(big[1], big[3], big[2], None)
    parts = interleaved(
        {
            "network + transforms": functools.partial(rt._log_params, big[1], big[3], big[2], None),
            "per-cell coefficients": functools.partial(rt._coefficients, lp),
            "circuit passes": functools.partial(rt._batch_circuit, lp, grid),
        },
        args.min_time,
        2000,
    )

    # Keras last: after its first call TensorFlow's thread pools keep spinning for a while and would slow
    # whatever numpy runs next on this 2-core machine (seen as 5-8x noise on the 1024-cell case).
    from hil_server.model.store import load_keras_model

    model, _ = load_keras_model(args.model)
    for n, profile, cell, op, times in cases:
        inputs = {
            "profile": profile,
            "cell": cell,
            "op": op,
            "freq_hz": np.broadcast_to(freq, (n, N_FREQ)).copy(),
        }
        keras_times = interleaved(
            {
                "model(x)": functools.partial(model, inputs, training=False),
                "predict": functools.partial(model.predict, inputs, verbose=0, batch_size=max(n, 32)),
            },
            args.min_time,
            300,
        )
        times.update(keras_times)
    load_end = os.getloadavg()[0]

    out = sys.stdout.write
    out(
        f"model {args.model} ({len(rt.profiles)} profiles, {len(rt.cells)} cells), {N_FREQ} frequencies\n"
        f"shared machine: {os.cpu_count()} cores, load average {load_start:.1f} at start, "
        f"{load_end:.1f} at end; figures are medians (10th percentile) in us\n\n"
    )
    cols = ["runtime f32", "runtime f64", "bare circ f32", "circuit.py", "model(x)", "predict"]
    out(f"{'case':>10} " + " ".join(f"{c:>17}" for c in cols) + f" {'target':>9}\n")
    for n, *_, times in cases:
        label = "1 point" if n == 1 else f"{n} cells"
        med = statistics.median(times["runtime f32"]) * 1e6
        verdict = "ok" if med < TARGETS_US[n] else f"MISSED x{med / TARGETS_US[n]:.1f}"
        out(
            f"{label:>10} "
            + " ".join(f"{fmt_us(times[c]):>17}" for c in cols)
            + f" {TARGETS_US[n]:>7.0f}us {verdict}\n"
        )
    out("\nratios: median time of each column / median time of runtime f32 (higher = runtime faster)\n")
    out(f"{'case':>10} " + " ".join(f"{c:>13}" for c in cols[1:]) + f" {'us/spectrum':>12}\n")
    for n, *_, times in cases:
        label = "1 point" if n == 1 else f"{n} cells"
        base = statistics.median(times["runtime f32"])
        out(
            f"{label:>10} "
            + " ".join(f"{statistics.median(times[c]) / base:>12.2f}x" for c in cols[1:])
            + f" {base * 1e6 / n:>12.2f}\n"
        )
    out("\n1024 cells, runtime f32 by part: ")
    out(", ".join(f"{name} {statistics.median(t) * 1e6:.0f} us" for name, t in parts.items()) + "\n")
    verdict = "ok" if start < START_TARGET_S else f"MISSED x{start / START_TARGET_S:.1f}"
    out(
        f"process start to first spectrum (warm cache, median of 5): {start:.3f} s"
        f"  target {START_TARGET_S} s {verdict}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
