"""The simulated source (PyBaMM, LG M50 / Chen2020): the shipped spectra, their record, the reader's checks,
and, when PyBaMM is installed, that the generator reproduces them."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hil_server.eis_data import (
    SIMULATED_CELL,
    SIMULATED_PATH,
    SIMULATED_PROFILE,
    SIMULATED_SOURCE,
    DataNotFoundError,
    EisDataError,
    Spectrum,
    SpectrumSet,
    content_hash,
    read_pybamm_chen2020,
    read_simulated_metadata,
    save_npz,
)
from hil_server.model.dataset import to_arrays
from hil_server.model.linkk import lin_kk

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sim() -> SpectrumSet:
    return read_pybamm_chen2020()


@pytest.fixture(scope="module")
def meta() -> dict[str, object]:
    return read_simulated_metadata()


def _at(sim: SpectrumSet, soc: float, temp_c: float) -> Spectrum:
    (s,) = sim.filter(lambda s: abs(s.soc - soc) < 1e-9 and s.temp_c == temp_c)
    return s


def test_schema_grid_and_signs(sim: SpectrumSet) -> None:
    assert len(sim) == 300
    assert sim.sources() == [SIMULATED_SOURCE]
    assert sim.profiles() == [SIMULATED_PROFILE]
    assert sim.cells() == [SIMULATED_CELL]
    assert np.all(sim.soh == 1.0)
    assert np.allclose(np.unique(sim.soc), np.arange(1, 21) * 0.05)
    assert np.array_equal(np.unique(sim.temp_c), np.arange(-20.0, 55.0, 5.0))
    freq, z = sim.stacked()
    assert np.allclose(freq, np.logspace(4, -2, 61))
    assert np.all(z.real > 0)
    # No inductance in the DFN: capacitive (standard sign, Im < 0) everywhere.
    assert np.all(z.imag < 0)


def test_record_describes_the_file(sim: SpectrumSet, meta: dict[str, object]) -> None:
    assert meta["content_sha256"] == content_hash(sim)
    assert meta["file_sha256"] == hashlib.sha256(SIMULATED_PATH.read_bytes()).hexdigest()
    assert meta["parameter_set"] == "Chen2020 (LG M50 21700, NMC811 / graphite-SiOx)"
    assert meta["model_options"] == {"surface form": "differential", "contact resistance": "true"}
    assert meta["generator"] == "python tools/gen_pybamm_eis.py"
    versions = meta["versions"]
    assert isinstance(versions, dict)
    assert versions["pybamm"]
    assert meta["contact_resistance_ohm"] == 0.015
    assert SIMULATED_PATH.stat().st_size < 500_000


def test_intercept_is_contact_plus_electrolyte(sim: SpectrumSet, meta: dict[str, object]) -> None:
    contact = float(meta["contact_resistance_ohm"])  # type: ignore[arg-type]
    hf = np.array([s.z.real[0] for s in sim])
    assert np.all(hf > contact)
    assert np.all(hf < contact + 0.006)  # the DFN's own intercept is 2-5 mOhm over -20..50 C


def test_spectra_change_with_temperature(sim: SpectrumSet) -> None:
    """Both the ohmic part (electrolyte, Arrhenius from OKane2022) and the arc (charge transfer) move."""
    rows = sorted((s for s in sim if abs(s.soc - 0.5) < 1e-9), key=lambda s: s.temp_c)
    hf = np.array([s.z.real[0] for s in rows])
    i_1hz = int(np.argmin(np.abs(np.log10(rows[0].freq_hz))))
    arc = np.array([s.z.real[i_1hz] - s.z.real[0] for s in rows])
    assert np.all(np.diff(hf) < 0)
    assert np.all(np.diff(arc) < 0)
    assert hf[0] - hf[-1] > 0.002  # -20 C vs 50 C: about 2.8 mOhm
    assert arc[0] / arc[-1] > 10  # 136 vs 11 mOhm


def test_spectra_change_with_soc(sim: SpectrumSet) -> None:
    low, mid = _at(sim, 0.05, 25.0), _at(sim, 0.5, 25.0)
    assert low.z.real[-1] > 1.1 * mid.z.real[-1]


def test_kramers_kronig_consistent(sim: SpectrumSet) -> None:
    for s in sim[::25]:
        assert lin_kk(s.freq_hz, s.z, fixed_m=40).max_residual < 0.005, (s.soc, s.temp_c)


def test_profiles_are_data_driven_in_the_model_arrays(sim: SpectrumSet) -> None:
    other = Spectrum("g", "g/x", "g", 0.5, 25.0, 0.9, np.array([20.0, 2.0]), np.array([1 + 0j, 1 - 1j]))
    mixed = sim[:3] + SpectrumSet((other,))
    a = to_arrays(mixed, mixed.profiles(), {})
    assert a.freq_hz.shape == (4, 61)
    assert a.profile.tolist() == [1, 1, 1, 0]
    assert a.mask[3].sum() == 2


def _copy_with_sidecar(tmp_path: Path) -> Path:
    target = tmp_path / SIMULATED_PATH.name
    shutil.copy(SIMULATED_PATH, target)
    shutil.copy(SIMULATED_PATH.with_suffix(".json"), target.with_suffix(".json"))
    return target


def test_reader_rejects_a_stale_sidecar(tmp_path: Path, sim: SpectrumSet) -> None:
    target = _copy_with_sidecar(tmp_path)
    assert content_hash(read_pybamm_chen2020(target)) == content_hash(sim)
    save_npz(sim[:10], target)
    with pytest.raises(EisDataError, match=r"pybamm_chen2020\.json describes other data"):
        read_pybamm_chen2020(target)


def test_reader_rejects_other_labels(tmp_path: Path, sim: SpectrumSet) -> None:
    target = _copy_with_sidecar(tmp_path)
    s = sim[0]
    wrong = Spectrum("zhang2020", "zhang2020/x", "zhang2020", s.soc, s.temp_c, 1.0, s.freq_hz, s.z)
    digest = save_npz(SpectrumSet((wrong,)), target)
    side = target.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "content_sha256": digest}))
    with pytest.raises(EisDataError, match="source='zhang2020'"):
        read_pybamm_chen2020(target)


def test_reader_missing_files_say_how_to_regenerate(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="gen_pybamm_eis"):
        read_pybamm_chen2020(tmp_path / "none.npz")
    target = _copy_with_sidecar(tmp_path)
    target.with_suffix(".json").unlink()
    with pytest.raises(DataNotFoundError, match=r"pybamm_chen2020\.json"):
        read_pybamm_chen2020(target)


@pytest.mark.skipif(importlib.util.find_spec("pybamm") is None, reason="PyBaMM not installed (simdata extra)")
def test_generator_reproduces_the_shipped_spectra(tmp_path: Path, sim: SpectrumSet) -> None:
    out = tmp_path / "sim.npz"
    grid = ["--soc", "0.05", "--temp-c", "-20"]  # one point, the coldest and emptiest: ~4 s
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "gen_pybamm_eis.py"), "--out", str(out), *grid],
        check=True,
        capture_output=True,
        cwd=REPO,
        timeout=120,
    )
    again = read_pybamm_chen2020(out)
    assert len(again) == 1
    for s in again:
        shipped = _at(sim, s.soc, s.temp_c)
        np.testing.assert_allclose(s.z, shipped.z, rtol=1e-9, atol=0)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["generator"].endswith("--soc 0.05 --temp-c -20")
