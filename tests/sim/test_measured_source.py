"""Real-measurement replay: a scenario whose spectra come from a measured campaign (generic EIS CSV),
resampled to the scenario's grid, streamed through the same engine, faults and protocol."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import protocol as p
from hil_server.scenario import ScenarioError, load_scenario
from hil_server.sim import Engine, FixedCircuitSource
from hil_server.testing import loopback

FREQS = np.geomspace(1000.0, 0.1, 13)  # the lab measured 1 kHz .. 0.1 Hz


def _z(soc: float) -> np.ndarray:
    """A made-up but smooth spectrum whose size depends on the SOC label, so rows are told apart."""
    w = 2 * np.pi * FREQS
    z: np.ndarray = 0.02 + soc * 0.01 + 0.03 / (1 + 1j * w * 0.01)
    return z


def _write_campaign(path: Path, socs: list[float]) -> None:
    lines = ["spectrum_id,soc,temp_c,soh,freq_hz,z_re_ohm,z_im_ohm"]
    for i, soc in enumerate(socs):
        for f, z in zip(FREQS, _z(soc), strict=True):
            lines.append(f"s{i},{soc},25,0.95,{float(f)!r},{float(z.real)!r},{float(z.imag)!r}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _scenario(tmp_path: Path, select: str = "nearest", soc: float = 0.75, file: str = "lab.csv") -> Path:
    path = tmp_path / "measured.yaml"
    path.write_text(
        f"""name: measured
step_rate_hz: 10
eis:
  interval_s: 1
  frequencies: {{min_hz: 0.01, max_hz: 10000, points_per_decade: 10}}
  measured: {{file: {file}, select: {select}}}
cells: {{count: 1, profile: zhang2020, soc: {soc}}}
timeline:
  - rest: {{duration_s: 60}}
""",
        encoding="utf-8",
    )
    return path


def _spectra(path: Path, seconds: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    eng = Engine(load_scenario(path), FixedCircuitSource())
    out = []
    for step in eng.run(seconds):
        for sp in step.spectra:
            out.append((sp.freq_hz[~sp.dropped[0]], sp.z_ohm[0][~sp.dropped[0]], sp.dropped[0]))
    return out


def test_nearest_measured_spectrum_resampled_to_the_grid(tmp_path: Path) -> None:
    _write_campaign(tmp_path / "lab.csv", [0.2, 0.8])
    (freq, z, dropped), *_ = _spectra(_scenario(tmp_path), 1.5)
    # grid points outside the measured 0.1 Hz .. 1 kHz band are dropped, not extrapolated
    assert freq.min() >= 0.1 - 1e-9
    assert freq.max() <= 1000 + 1e-9
    assert dropped.sum() == 20  # 0.01 .. 0.08 Hz and 1.26 .. 10 kHz of the 61-point grid
    # inside: the SOC 0.8 spectrum (nearest to the cell's 0.75), interpolated in log frequency
    expected = np.interp(np.log10(freq), np.log10(FREQS[::-1]), _z(0.8)[::-1].real)
    np.testing.assert_allclose(z.real, expected, rtol=1e-12)
    on_grid = np.isclose(freq, 10.0)
    np.testing.assert_allclose(z[on_grid], _z(0.8)[np.isclose(FREQS, 10.0)], rtol=1e-12)


def test_nearest_follows_the_operating_point(tmp_path: Path) -> None:
    _write_campaign(tmp_path / "lab.csv", [0.2, 0.8])
    low = _spectra(_scenario(tmp_path, soc=0.25), 1.5)[0][1]
    high = _spectra(_scenario(tmp_path, soc=0.75), 1.5)[0][1]
    assert low.real.max() < high.real.max()


def test_sequence_plays_the_file_in_order_and_wraps(tmp_path: Path) -> None:
    _write_campaign(tmp_path / "lab.csv", [0.1, 0.5, 0.9])
    got = _spectra(_scenario(tmp_path, select="sequence"), 4.5)
    assert len(got) == 4
    highest = [z.real.max() for _, z, _ in got]
    expected = [_z(s).real.max() for s in (0.1, 0.5, 0.9, 0.1)]
    np.testing.assert_allclose(highest, expected, rtol=1e-12)


@pytest.mark.asyncio
async def test_measured_spectra_reach_a_client(tmp_path: Path) -> None:
    _write_campaign(tmp_path / "lab.csv", [0.2, 0.8])
    async with loopback(_scenario(tmp_path), pipe=True) as (_, client):
        await client.subscribe(mask=p.SubscribeMask.EIS_SPECTRUM)
        while not isinstance((frame := await client.next_frame(timeout=10)).message, p.EisSpectrum):
            pass
        spectrum = frame.message
        assert frame.flags & p.FrameFlags.MEASURED  # a BMS can tell measured data from model output
    assert spectrum.freq_hz.size == 41  # the grid points inside the measured band
    np.testing.assert_allclose(
        spectrum.z_re_ohm[np.isclose(spectrum.freq_hz, 10.0)],
        _z(0.8)[np.isclose(FREQS, 10.0)].real,
        rtol=1e-6,
    )
    assert spectrum.kk_residual < 0.01  # a consistent measured spectrum stays consistent when resampled


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("/etc/passwd", None, "expected a path relative to the scenario's directory"),
        ("../lab.csv", None, "leaves the scenario's directory"),
        ("missing.csv", None, "file not found"),
        ("lab.csv", "spectrum_id,soc,temp_c,soh,freq_hz,z_re_ohm,z_im_ohm\ns0,0.5,25,0.9,abc,1,0\n", "abc"),
        (
            "latin1.csv",
            "spectrum_id,soc\n\xe9\xff\xfe\n",
            "latin1.csv:2: eis.measured.file: not UTF-8 text (byte 0xe9",
        ),
    ],
)
def test_bad_measured_files_get_precise_errors(
    tmp_path: Path, file: str, content: str | None, message: str
) -> None:
    sub = tmp_path / "sc"
    sub.mkdir()
    if content is not None:
        (sub / file).write_bytes(content.encode("latin-1"))
    with pytest.raises(ScenarioError) as err:
        load_scenario(_scenario(sub, file=file))
    text = "\n".join(str(e) for e in err.value.errors)
    assert message in text
    assert "eis.measured.file" in text
    if content is not None and file == "lab.csv":
        assert f"{sub / file}:2" in text  # the CSV's own file and line
