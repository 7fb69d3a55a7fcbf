"""sim.output's compact spectra: eis-hil run's Parquet (one row per spectrum, float32 lists) against its CSV
(one row per point), and the general layout path of the spectrum table."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil_server.cli import main

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def test_compact_spectra_hold_what_the_generic_csv_holds(tmp_path: Path) -> None:
    """eis-hil run's Parquet spectra (one row per spectrum, float32 lists, truth null where equal) against
    its CSV output (one row per point, float64) of the same run: every value, to float32 precision."""
    import numpy as np
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    scenario = str(SCENARIOS / "fault_showcase.yaml")  # noise, frozen values, contact resistance
    max_s = "900"
    assert main(["run", scenario, "--out", str(tmp_path / "pq"), "--max-s", max_s]) == 0
    assert main(["run", scenario, "--out", str(tmp_path / "csv"), "--max-s", max_s, "--csv"]) == 0
    spectra = pq.read_table(tmp_path / "pq" / "spectra.parquet").to_pylist()
    grid = pq.read_table(tmp_path / "pq" / "frequencies.parquet").column("freq_hz").to_pylist()
    points = pacsv.read_csv(tmp_path / "csv" / "spectra.csv").to_pylist()
    assert len(points) == len(spectra) * len(grid)
    assert any(s["true_z_re_ohm"] is not None for s in spectra)
    assert any(s["true_z_re_ohm"] is None for s in spectra)
    by_key = {(s["cell"], s["time_s"]): s for s in spectra}
    for p in points:
        s = by_key[(p["cell"], p["time_s"])]
        k = grid.index(p["freq_hz"])
        assert s["spectrum_id"] == p["spectrum_id"]
        for name in ("z_re_ohm", "z_im_ohm"):
            truth = s[f"true_{name}"] or s[name]
            np.testing.assert_allclose([s[name][k], truth[k]], [p[name], p[f"true_{name}"]], rtol=1e-6)
        assert (s["dropped"] or [False] * len(grid))[k] == p["dropped"]
        np.testing.assert_allclose(
            [s["soc"], s["temp_c"], s["soh"]], [p["soc"], p["temp_c"], p["soh"]], rtol=1e-6
        )


def test_spectra_of_some_cells_at_mixed_times_keep_their_rows() -> None:
    """The general layout path (not every cell in every spectrum, times out of order)."""
    import numpy as np

    from hil_server.sim.output import Spectrum, _spectrum_table

    rng = np.random.default_rng(0)
    freq = np.array([100.0, 10.0, 1.0])

    def spectrum(time_us: int, cells: list[int]) -> Spectrum:
        n = len(cells)
        z = rng.normal(size=(n, 3)) + 1j * rng.normal(size=(n, 3))
        c = np.array(cells, dtype=np.int64)
        f = c.astype(np.float64)
        return Spectrum(
            time_us,
            0,
            c,
            c + 100,
            freq,
            z,
            z,
            np.zeros((n, 3), bool),
            f / 10,
            f * 0 + 1.0,
            f + 20.0,
            f * 0,
            np.zeros(n, np.uint16),
        )

    spectra = [spectrum(2_000_000, [2, 0]), spectrum(1_000_000, [1]), spectrum(3_000_000, [0, 1, 2])]
    rows = _spectrum_table(spectra).to_pylist()
    assert [(r["cell"], r["time_s"]) for r in rows] == [
        (0, 2.0),
        (0, 3.0),
        (1, 1.0),
        (1, 3.0),
        (2, 2.0),
        (2, 3.0),
    ]
    for r in rows:
        sp = next(s for s in spectra if s.time_us == r["time_s"] * 1e6)
        i = list(sp.cells).index(r["cell"])
        np.testing.assert_allclose(r["z_re_ohm"], sp.z_ohm[i].real, rtol=1e-6)
        np.testing.assert_allclose(r["z_im_ohm"], sp.z_ohm[i].imag, rtol=1e-6)
        assert r["true_z_re_ohm"] is None
        assert r["dropped"] is None
        assert r["soc"] == pytest.approx(r["cell"] / 10)
