"""tools/fidelity_limits.py: the diagnostics the model README quotes (circuit floor, leave-one-cell-out
predictions from the other cells), on synthetic spectra whose answers are known."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from hil_server.eis_data import Spectrum, SpectrumSet
from hil_server.model.circuit import N_PARAMS, P, impedance

TOOL = Path(__file__).resolve().parents[2] / "tools" / "fidelity_limits.py"
FREQ = np.logspace(4, -1, 30)


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fidelity_limits", TOOL)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fidelity_limits", module)
    spec.loader.exec_module(module)
    return module


def _params(soh: float) -> np.ndarray:
    p = np.zeros(N_PARAMS)
    p[[P.R0, P.R_L, P.TAU_L]] = 0.02 + 0.01 * (1 - soh), 0.005, 1e-5
    p[[P.R1, P.TAU1, P.A1]] = 0.005, 1e-3, 0.9
    p[[P.R2, P.TAU2, P.A2]] = 0.01, 0.05, 0.8
    p[[P.R_W, P.TAU_W, P.PHI_W]] = 0.01, 50.0, 0.45
    return p


def _spectrum(cell: str, soh: float, z: np.ndarray) -> Spectrum:
    return Spectrum("rashid2023", cell, "rashid2023", 0.5, 25.0, soh, FREQ, z)


def test_circuit_floor_is_zero_on_a_circuit_spectrum_from_a_poor_start() -> None:
    tool = _tool()
    truth = _params(0.9)
    s = _spectrum("c1", 0.9, impedance(truth[None], FREQ[None])[0])
    start = truth.copy()
    start[[P.R0, P.R2, P.TAU2]] *= (1.5, 0.6, 3.0)
    assert tool.circuit_floor(s, start) < 1e-4


def test_lookups_leave_the_cell_out_and_a_line_in_soh_recovers_a_linear_trend() -> None:
    tool = _tool()
    base = impedance(_params(1.0)[None], FREQ[None])[0]
    # Z linear in SOH, so the line through the other cells predicts each cell exactly; the nearest other
    # cell and the mean do not, and a cell's own spectrum is never used (it would score 0).
    spectra = SpectrumSet.of(
        _spectrum(f"c{i}", soh, base * (2 - soh)) for i, soh in enumerate((0.8, 0.9, 1.0))
    )
    out = tool.lookups(spectra)
    assert max(out["linear in SOH"]) < 1e-9
    assert min(out["nearest cell"]) > 0.01
    assert out["mean"][0] > out["nearest cell"][0] > 0
    assert set(out) == {"nearest cell", "linear in SOH", "kernel in SOH", "mean"}
