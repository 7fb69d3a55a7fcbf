"""Inference speed: the numpy runtime against model.predict and a bare model(x) of the same Keras model.

    .venv/bin/python tools/bench_inference.py [--model DIR] [--repeat N]

Cases: one operating point, a 96-cell batch and a 1024-cell batch, 60 frequencies each (random profiles,
cells and operating points over the whole input range); then process start to first spectrum, a fresh
interpreter timed from launch with a warm weight cache. Medians over repeated calls.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hil_server.model.runtime import NumpyPinn
from hil_server.model.store import BUNDLED_MODEL_DIR

TARGETS_US = {1: 50.0, 96: 500.0, 1024: 3000.0}
START_TARGET_S = 0.5


def median_us(fn: Callable[[], Any], min_time: float = 0.3, max_calls: int = 20000) -> float:
    fn()  # warm-up: first-call allocations, Keras tracing
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_calls and (time.perf_counter() - start < min_time or len(times) < 5):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL_DIR)
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds of calls per measurement")
    args = parser.parse_args()

    rt = NumpyPinn.load(args.model)  # also warms the weight cache for the start-up measurement
    rt64 = NumpyPinn.load(args.model, dtype=np.float64)
    start = startup_s(args.model)

    rng = np.random.default_rng(0)
    freq = np.logspace(-3, 5, 60).astype(np.float32)
    cases = []
    for n in (1, 96, 1024):
        profile = rng.integers(0, len(rt.profiles), n).astype(np.int32)
        cell = rng.integers(0, len(rt.cells) + 1, n).astype(np.int32)
        op = np.stack([rng.uniform(0, 1, n), rng.uniform(-40, 80, n), rng.uniform(0.4, 1, n)], 1)
        op = op.astype(np.float32)
        # the server's single-point call: scalar profile, typical cell
        call = (int(profile[0]), op[0], freq, None, None) if n == 1 else (profile, op, freq, None, cell)
        t32 = median_us(functools.partial(rt.impedance, *call[:4], cell=call[4]), args.min_time)
        t64 = median_us(functools.partial(rt64.impedance, *call[:4], cell=call[4]), args.min_time)
        cases.append((n, profile, cell, op, t32, t64))

    # Keras last: after its first call TensorFlow's thread pools keep spinning for a while and would slow
    # whatever numpy runs next on this 2-core machine (seen as 5-8x noise on the 1024-cell case).
    from hil_server.model.store import load_keras_model

    model, _ = load_keras_model(args.model)
    print(f"model {args.model} ({len(rt.profiles)} profiles, {len(rt.cells)} cells), 60 frequencies, medians")
    header = (
        f"{'case':>12} {'numpy f32':>11} {'numpy f64':>11} {'model(x)':>11} {'predict':>11}"
        f" {'x vs model(x)':>14} {'x vs predict':>13} {'target':>9}"
    )
    print(header)
    for n, profile, cell, op, t32, t64 in cases:
        inputs = {
            "profile": profile,
            "cell": cell,
            "op": op,
            "freq_hz": np.broadcast_to(freq, (n, 60)).copy(),
        }
        t_call = median_us(functools.partial(model, inputs, training=False), args.min_time, 2000)
        predict = functools.partial(model.predict, inputs, verbose=0, batch_size=max(n, 32))
        t_pred = median_us(predict, args.min_time, 200)
        target = TARGETS_US[n]
        verdict = "ok" if t32 < target else f"MISSED x{t32 / target:.1f}"
        label = "1 point" if n == 1 else f"{n} cells"
        print(
            f"{label:>12} {t32:>9.1f}us {t64:>9.1f}us {t_call:>9.1f}us {t_pred:>9.1f}us"
            f" {t_call / t32:>13.0f}x {t_pred / t32:>12.0f}x {target:>7.0f}us {verdict}"
        )
    verdict = "ok" if start < START_TARGET_S else f"MISSED x{start / START_TARGET_S:.1f}"
    print(
        f"process start to first spectrum (warm cache, median of 5): {start:.3f} s"
        f"  target {START_TARGET_S} s {verdict}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
