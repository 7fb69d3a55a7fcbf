"""``eis-hil export --format mf4``: a live session with faults, recorded, exported as MDF 4 and as CSV, read
back with asammdf: every channel holds what the CSV export of the same capture holds."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import protocol as p
from hil_server.capture import mdf as capture_mdf
from hil_server.cli import main
from tests.capture.test_capture import SCENARIOS, served

asammdf = pytest.importorskip("asammdf")  # the dev extra installs it, so CI always runs these tests


def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """fault_showcase (12 cells, faults from t = 120 s) recorded until 700 frames, and its CSV export."""
    tmp = tmp_path_factory.mktemp("mdf")
    capture = tmp / "session.eiscap"
    with served(SCENARIOS / "fault_showcase.yaml") as (port, _, _):
        code, _ = _run(
            ["record", "127.0.0.1", str(port), "--out", str(capture), "--count", "700", "--divider", "10"]
        )
    assert code == 0
    code, _ = _run(["export", str(capture), "--out", str(tmp / "csv"), "--csv-only"])
    assert code == 0
    return capture, tmp / "csv"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _floats(rows: list[dict[str, str]], key: str) -> Any:
    return np.array([float(r[key]) for r in rows])


@pytest.mark.parametrize("chunk", [capture_mdf.CHUNK_STEPS, 64])
def test_mf4_matches_the_csv_export(
    session: tuple[Path, Path], tmp_path: Path, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chunk 64: the cell states are written in several chunks (asammdf extend), as for a long session."""
    capture, csv_dir = session
    monkeypatch.setattr(capture_mdf, "CHUNK_STEPS", chunk)
    out = tmp_path / "session.mf4"
    code, stdout = _run(["export", str(capture), "--format", "mf4", "--out", str(out)])
    assert code == 0
    assert f"wrote {out}" in stdout
    mdf = asammdf.MDF(out)
    assert mdf.version == "4.10"
    groups = {g.channel_group.acq_name: g for g in mdf.groups}
    assert set(groups) == {"eis-hil CELL_STATES", "eis-hil FAULT_EVENT", "eis-hil EIS_SPECTRUM"}

    # cell states: one channel per cell and quantity, values and units as CANape shows them
    states = _rows(csv_dir / "states.csv")
    cells = sorted({int(r["cell"]) for r in states})
    assert len(cells) == 12
    for cell in cells:
        rows = [r for r in states if int(r["cell"]) == cell]
        t_sim = mdf.get("t_sim")
        assert t_sim.unit == "s"
        np.testing.assert_allclose(t_sim.samples, _floats(rows, "t_sim_s"), rtol=0, atol=1e-9)
        np.testing.assert_allclose(t_sim.timestamps, _floats(rows, "t_capture_s"), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(mdf.get("step").samples, [int(r["step"]) for r in rows])
        for suffix, column, unit, scale in (
            ("Voltage", "voltage_v", "V", 1.0),
            ("Current", "current_a", "A", 1.0),
            ("Temperature", "temp_c", "°C", 1.0),
            ("SOC", "soc", "%", 100.0),
            ("SOH", "soh", "%", 100.0),
        ):
            signal = mdf.get(f"Cell{cell:03d}_{suffix}")
            assert signal.unit == unit
            np.testing.assert_allclose(signal.samples, _floats(rows, column) * scale, rtol=0, atol=1e-9)
            assert signal.invalidation_bits is None or not signal.invalidation_bits.any()
        flags = mdf.get(f"Cell{cell:03d}_Flags").samples
        np.testing.assert_array_equal(flags, [int(r["flags"]) for r in rows])
    assert any(int(r["flags"]) & p.CellFlags.FAULT_ACTIVE for r in states)  # the faults show in the flags

    # fault events: kind and phase by name, severity 0..1, the cells as text
    faults = _rows(csv_dir / "faults.csv")
    assert faults
    assert [k.decode() for k in mdf.get("Fault_kind").samples] == [r["kind"] for r in faults]
    assert "CONTACT_RESISTANCE" in {r["kind"] for r in faults}
    assert [k.decode() for k in mdf.get("Fault_phase").samples] == [r["phase"] for r in faults]
    assert mdf.get("Fault_kind", raw=True).samples.tolist() == [int(r["kind_code"]) for r in faults]
    np.testing.assert_array_equal(mdf.get("Fault_id").samples, [int(r["fault_id"]) for r in faults])
    np.testing.assert_allclose(mdf.get("Fault_severity").samples, _floats(faults, "severity"), atol=1e-9)
    np.testing.assert_allclose(mdf.get("Fault_t_sim").samples, _floats(faults, "t_sim_s"), atol=1e-9)
    assert [c.decode() for c in mdf.get("Fault_cells").samples] == [r["cells"] for r in faults]

    # spectra: the operating point per spectrum, the spectrum as array channels
    index = _rows(csv_dir / "spectra_index.csv")
    assert index
    np.testing.assert_array_equal(mdf.get("Spectrum_cell").samples, [int(r["cell"]) for r in index])
    np.testing.assert_array_equal(mdf.get("Spectrum_id").samples, [int(r["spectrum_id"]) for r in index])
    np.testing.assert_allclose(mdf.get("Spectrum_SOC").samples, _floats(index, "soc") * 100, atol=1e-9)
    np.testing.assert_allclose(mdf.get("Spectrum_Temperature").samples, _floats(index, "temp_c"), atol=1e-9)
    np.testing.assert_allclose(mdf.get("Spectrum_Current").samples, _floats(index, "current_a"), atol=1e-9)
    n_points = mdf.get("Spectrum_n_points").samples
    np.testing.assert_array_equal(n_points, [int(r["n_points"]) for r in index])
    arrays = {
        name: mdf.get(name).samples[name] for name in ("Spectrum_Frequency", "Spectrum_Z_Re", "Spectrum_Z_Im")
    }
    assert mdf.get("Spectrum_Z_Im").unit == "Ω"
    for k, row in enumerate(index):
        spectrum = np.loadtxt(csv_dir / row["file"], delimiter=",", ndmin=2).astype(np.float32)
        n = int(n_points[k])
        for col, name in enumerate(arrays):
            np.testing.assert_array_equal(arrays[name][k, :n], spectrum[:, col])
            assert np.isnan(arrays[name][k, n:]).all()
    mdf.close()


def test_mf4_option_errors_are_refused_before_any_work(
    session: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture, _ = session
    assert main(["export", str(capture), "--format", "mf4"]) == 2
    assert "--format mf4 needs --out FILE.mf4" in capsys.readouterr().err
    assert main(["export", str(capture), "--format", "mf4", "--out", str(tmp_path / "nope" / "x.mf4")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(capture), "--format", "mf4", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["export", str(capture)]) == 2
    assert "export needs --out" in capsys.readouterr().err
    not_capture = tmp_path / "x.eiscap"
    not_capture.write_bytes(b"hello")
    assert main(["export", str(not_capture), "--format", "mf4", "--out", str(tmp_path / "x.mf4")]) == 2
    assert "x.eiscap" in capsys.readouterr().err
    assert not (tmp_path / "x.mf4").exists()


@pytest.mark.parametrize("fmt", ["mf4", "pcapng"])
def test_a_truncated_capture_exports_what_is_complete(
    session: tuple[Path, Path], tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """As the CSV export: the summary line and one warning give the bytes after the last complete record."""
    capture, _ = session
    cut = tmp_path / "cut.eiscap"
    cut.write_bytes(capture.read_bytes()[:-100])  # the last record (a CELL_STATES frame) loses its end
    out = tmp_path / f"cut.{fmt}"
    option = ["--format", "mf4", "--out", str(out)] if fmt == "mf4" else ["--pcap", str(out)]
    assert main(["export", str(cut), *option]) == 0
    captured = capsys.readouterr()
    tail = int(captured.out.split("capture truncated, ")[1].split(" bytes")[0])
    assert 0 < tail < capture.stat().st_size - 100
    assert captured.err.count("capture truncated: exported what is complete") == 1
    assert out.stat().st_size > 0
