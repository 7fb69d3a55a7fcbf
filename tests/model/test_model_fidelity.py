"""Issue 13: one typical cell everywhere, grouped cross-validation, calibration with aging, bad calibration
input, and the physical checks on the extrapolation grid."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest

import protocol as p
from hil_server.cli import main
from hil_server.eis_data import SpectrumSet, write_generic_csv
from hil_server.model import N_PARAMS
from hil_server.model.cv import cell_folds, cross_validate, format_cv, nearest_neighbour
from hil_server.model.profiles import Profile, cell_latent
from hil_server.model.runtime import NumpyPinn
from hil_server.model.store import BUNDLED_MODEL_DIR
from hil_server.testing import loopback


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# ---- the CV splitter -------------------------------------------------------------------------------------


def test_cell_folds_put_every_cell_in_exactly_one_fold(small_spectra: SpectrumSet) -> None:
    folds = cell_folds(small_spectra, 3, seed=0)
    flat = [c for f in folds for c in f]
    assert sorted(flat) == sorted(small_spectra.cells())
    assert len(flat) == len(set(flat))  # no cell in two folds
    for fold in folds:  # every fold holds cells of every source
        assert {c.split("/")[0] for c in fold} == set(small_spectra.sources())
    assert folds == cell_folds(small_spectra, 3, seed=0)  # deterministic
    assert folds != cell_folds(small_spectra, 3, seed=1)


def test_cell_folds_refuse_more_folds_than_cells(small_spectra: SpectrumSet) -> None:
    with pytest.raises(ValueError, match="has only 4 cells"):
        cell_folds(small_spectra, 5, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        cell_folds(small_spectra, 1, seed=0)


def test_nearest_neighbour_baseline_returns_the_nearest_training_spectrum(small_spectra: SpectrumSet) -> None:
    one = small_spectra.filter(source="rashid2023")
    test = SpectrumSet.of([one[0]])
    re, im = nearest_neighbour(one, test)  # the spectrum itself is in "training": distance 0
    np.testing.assert_allclose(re[0, : one[0].n_points], one[0].z.real)
    np.testing.assert_allclose(im[0, : one[0].n_points], one[0].z.imag)


def test_cross_validation_scores_every_cell_with_every_model(small_spectra: SpectrumSet) -> None:
    from hil_server.model.train import TrainConfig

    data = small_spectra.filter(cells=small_spectra.filter(source="rashid2023").cells()[:2])
    data = data + small_spectra.filter(cells=small_spectra.filter(source="zhang2020").cells()[:2])
    result = cross_validate(data, 2, config=TrainConfig(epochs=2, batch_size=128), mlp_epochs=2)
    cells = {c["cell"]: c for c in result["cells"]}
    assert sorted(cells) == sorted(data.cells())
    for c in cells.values():
        assert set(c["errors"]) == {"pinn", "plain_mlp", "nearest"}
        assert all(np.isfinite(c["errors"]["pinn"]))
        assert len(c["errors"]["pinn"]) == len(data.filter(cells=[c["cell"]]))
    zhang = [c for c in cells.values() if c["source"] == "zhang2020"]
    assert all(set(c["calibrated"]) == {"one_spectrum", "early_life"} for c in zhang)
    text = format_cv(result)
    assert "nearest" in text
    assert "pinn one spectrum" in text


# ---- one typical cell everywhere --------------------------------------------------------------------------


def test_the_typical_cell_is_offset_zero_in_every_path() -> None:
    runtime = NumpyPinn.load(BUNDLED_MODEL_DIR)
    op = np.array([[0.5, 10.0, 0.9]])
    freq = np.geomspace(1e4, 0.1, 20)
    none = runtime.impedance(0, op, freq)
    zero = runtime.impedance(0, op, freq, latent=np.zeros(runtime.latent_dim))
    cell0 = runtime.impedance(0, op, freq, cell=0)
    builtin = runtime.impedance(0, op, freq, latent=Profile("x", "x", None).latents([0.9]))
    np.testing.assert_array_equal(none, zero)
    np.testing.assert_array_equal(none, cell0)
    np.testing.assert_array_equal(none, builtin)


def test_cell_latent_adds_the_aging_rate_per_soh() -> None:
    offset = np.arange(N_PARAMS, dtype=float)
    rate = np.ones(N_PARAMS)
    got = cell_latent(offset, rate, [1.0, 0.8])
    np.testing.assert_allclose(got[0], offset)
    np.testing.assert_allclose(got[1], offset + 0.2)
    assert not cell_latent(None, None, [0.7]).any()


@pytest.mark.asyncio
async def test_spectrum_command_returns_what_the_server_streams(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "rest.yaml"
    scenario.write_text(
        "name: rest\nstep_rate_hz: 10\n"
        "eis: {interval_s: null, mode: instant, frequencies: {min_hz: 0.05, max_hz: 5000, "
        "points_per_decade: 3}}\n"
        "cells: {count: 1, profile: rashid2023, soc: 0.5, soh: 0.875, temp_c: 15}\n"
        "ambient: {temp_c: 15}\n"
        "timeline:\n  - rest: {duration_s: 60}\n"
    )
    async with loopback(scenario) as (_, client):
        await client.subscribe(mask=p.SubscribeMask.EIS_SPECTRUM)
        assert isinstance(await client.control(p.Control(p.ControlCommand.REQUEST_SPECTRUM)), p.Ack)
        streamed = await client.next_message(p.EisSpectrum, timeout=10)
    freqs = tmp_path / "freqs.txt"
    freqs.write_text("\n".join(repr(float(f)) for f in streamed.freq_hz) + "\n")
    soc, soh = streamed.soc_ppm / 1e6, streamed.soh_ppm / 1e6
    temp_c = streamed.temperature_mdegC / 1e3
    assert (soc, soh, temp_c) == (0.5, 0.875, 15.0)
    args = ["spectrum", "--profile", "rashid2023", "--soc", "0.5", "--temp-c", "15", "--soh", "0.875"]
    capsys.readouterr()  # the server's own log lines
    assert main([*args, "--freqs", str(freqs)]) == 0
    rows = _rows(capsys.readouterr().out)
    z_re = np.array([float(r["z_re_ohm"]) for r in rows])
    z_im = np.array([float(r["z_im_ohm"]) for r in rows])
    # the wire carries float32: equal to its precision
    np.testing.assert_allclose(streamed.z_re_ohm, z_re, rtol=2e-6)
    np.testing.assert_allclose(streamed.z_im_ohm, z_im, rtol=2e-6, atol=1e-9)


def test_spectrum_warns_once_outside_the_trained_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    points = tmp_path / "points.csv"
    points.write_text("profile,soc,temp_c,soh\nrashid2023,0.5,-20,0.9\nrashid2023,0.5,-25,0.6\n")
    assert main(["spectrum", "--points", str(points)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("outside the trained range") == 1
    assert "points=2" in captured.err or '"points": 2' in captured.err
    inside = ["--profile", "rashid2023", "--soc", "0.5", "--temp-c", "25", "--soh", "0.9"]
    assert main(["spectrum", *inside]) == 0
    assert "outside the trained range" not in capsys.readouterr().err


# ---- calibration ------------------------------------------------------------------------------------------


def _calibrate(model: Path, csv_path: Path, name: str, *extra: str) -> int:
    args = ["--model", str(model), "--profile", "zhang2020", "--spectra", str(csv_path), "--name", name]
    return main(["calibrate", *args, *extra])


@pytest.fixture
def profile_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "profiles"
    monkeypatch.setenv("EIS_HIL_PROFILES", str(folder))
    return folder


@pytest.fixture
def zhang_cell(small_spectra: SpectrumSet) -> SpectrumSet:
    cell = small_spectra.filter(source="zhang2020").cells()[0]
    return SpectrumSet.of(sorted(small_spectra.filter(cells=[cell]), key=lambda s: s.cycle or 0))


def test_calibrate_from_one_spectrum_fits_offsets_and_says_what_it_cannot(
    trained_model: Path,
    zhang_cell: SpectrumSet,
    tmp_path: Path,
    profile_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    one = tmp_path / "one.csv"
    write_generic_csv(zhang_cell[:1], one)
    assert _calibrate(trained_model, one, "one-spectrum") == 0
    out = capsys.readouterr().out
    assert "Not determined: how this cell ages" in out
    saved = json.loads((profile_dir / "one-spectrum.json").read_text())
    assert len(saved["latent"]) == N_PARAMS
    assert saved["aging"] is None


def test_calibrate_from_several_ages_fits_the_aging_rate_and_reports_later_bands(
    trained_model: Path,
    zhang_cell: SpectrumSet,
    tmp_path: Path,
    profile_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    many = tmp_path / "many.csv"
    spread = zhang_cell.filter(lambda s: s.soh >= 0.8)
    assert np.ptp([s.soh for s in spread]) > 0.1
    write_generic_csv(spread, many)
    assert _calibrate(trained_model, many, "aged") == 0
    out = capsys.readouterr().out
    assert "offsets and its aging rate" in out
    assert "leave-later-out" in out
    assert out.count("SOH 0.") >= 2  # one line per later SOH band
    saved = json.loads((profile_dir / "aged.json").read_text())
    assert len(saved["aging"]) == N_PARAMS
    # the stream and the spectrum command apply offset + rate * (1 - SOH)
    args = ["spectrum", "--model", str(trained_model), "--profile", "aged", "--soc", "1", "--temp-c", "25"]
    assert main([*args, "--soh", "1.0"]) == 0
    young = np.array([float(r["z_re_ohm"]) for r in _rows(capsys.readouterr().out)])
    assert main([*args, "--soh", "0.8"]) == 0
    old = np.array([float(r["z_re_ohm"]) for r in _rows(capsys.readouterr().out)])
    runtime = NumpyPinn.load(trained_model)
    k = runtime.profile_index("zhang2020")
    freq = np.asarray(json.loads((trained_model / "metadata.json").read_text())["freq_grids"]["zhang2020"])
    lat = cell_latent(saved["latent"], saved["aging"], [0.8])
    expected = runtime.impedance(k, [[1.0, 25.0, 0.8]], freq, latent=lat)[0].real
    np.testing.assert_allclose(old, expected, rtol=1e-6)
    assert not np.allclose(young, old)


def _bad_input(zhang_cell: SpectrumSet, kind: str) -> SpectrumSet:
    s = zhang_cell[0]
    z = s.z.copy()
    if kind == "few_points":
        return SpectrumSet.of([dataclasses.replace(s, freq_hz=s.freq_hz[:8], z=z[:8])])
    if kind == "re_not_positive":
        z[10] = -abs(z[10].real) + 1j * z[10].imag
    elif kind == "mohm":
        z = z * 1000
    elif kind == "im_flipped":
        z = z.conj()
    return SpectrumSet.of([dataclasses.replace(s, z=z)])


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("few_points", "8 points; a spectrum needs at least 12"),
        ("re_not_positive", "a cell's Re(Z) is positive"),
        ("mohm", "in mOhm?"),
        ("im_flipped", "the sign is flipped"),
    ],
)
def test_bad_calibration_input_is_refused_and_saves_nothing(
    trained_model: Path,
    zhang_cell: SpectrumSet,
    tmp_path: Path,
    profile_dir: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    message: str,
) -> None:
    bad = tmp_path / f"{kind}.csv"
    write_generic_csv(_bad_input(zhang_cell, kind), bad)
    assert _calibrate(trained_model, bad, "bad") == 2
    err = capsys.readouterr().err
    assert message in err
    assert str(bad) in err
    if kind != "mohm":  # a per-spectrum check names the spectrum
        assert "spectrum_id 0" in err
    assert "Traceback" not in err
    assert not (profile_dir / "bad.json").exists()


def test_mohm_values_are_accepted_with_force(
    trained_model: Path,
    zhang_cell: SpectrumSet,
    tmp_path: Path,
    profile_dir: Path,
) -> None:
    bad = tmp_path / "mohm.csv"
    write_generic_csv(_bad_input(zhang_cell, "mohm"), bad)
    assert _calibrate(trained_model, bad, "big", "--force") == 0
    assert (profile_dir / "big.json").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("zhang2020", "is a built-in profile"),
        ("existing", "exists"),
        ("../escape", "use letters, digits"),
    ],
)
def test_bad_profile_names_are_refused_before_the_fit(
    trained_model: Path,
    zhang_cell: SpectrumSet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    message: str,
) -> None:
    folder = tmp_path / "profiles"
    monkeypatch.setenv("EIS_HIL_PROFILES", str(folder))
    folder.mkdir()
    (folder / "existing.json").write_text("{}")
    good = tmp_path / "good.csv"
    write_generic_csv(zhang_cell[:1], good)
    assert _calibrate(trained_model, good, name) == 2
    assert message in capsys.readouterr().err
    assert (folder / "existing.json").read_text() == "{}"
    if name == "existing":
        assert _calibrate(trained_model, good, name, "--replace") == 0
        assert json.loads((folder / "existing.json").read_text())["name"] == "existing"


def test_an_unwritable_profile_directory_is_found_before_the_fit(
    trained_model: Path,
    zhang_cell: SpectrumSet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("EIS_HIL_PROFILES", str(blocker / "profiles"))
    good = tmp_path / "good.csv"
    write_generic_csv(zhang_cell[:1], good)

    def no_model(*_args: object) -> None:
        pytest.fail("the model was loaded before the refusal")

    monkeypatch.setattr("hil_server.model.store.load_keras_model", no_model)
    assert _calibrate(trained_model, good, "cell") == 2
    assert "cannot write there" in capsys.readouterr().err


# ---- physical checks on the grid ---------------------------------------------------------------------------


def test_bundled_model_is_physical_on_the_extrapolation_grid() -> None:
    """Series resistance and |Z(0.1 Hz)| never fall as the cell gets colder or older, for every profile."""
    from hil_server.model.calibrate import predict
    from hil_server.model.evaluate import grid_arrays, monotonicity, validity
    from hil_server.model.store import load_keras_model

    model, meta = load_keras_model(BUNDLED_MODEL_DIR)
    grids = {k: np.asarray(meta.raw["freq_grids"][k]) for k in meta.profiles}
    grid = grid_arrays(meta.profiles, grids)
    checks = monotonicity(model, grid)
    assert checks["series_resistance_colder"] == 1.0, checks
    assert checks["series_resistance_older"] == 1.0, checks
    assert checks["abs_z_0p1hz_colder"] == 1.0, checks
    # One step of 1100 still falls in the bundled model: zhang2020, SOC 0, 40 C, SOH 1.0 -> 0.9, |Z(0.1 Hz)|
    # -0.34 % (the training loss is soft; README "Limitations"). Anything more is a regression.
    assert checks["abs_z_0p1hz_older"] >= 1 - 1 / 1100 - 1e-9, checks
    assert validity(*predict(model, grid), grid)["finite_re_positive"] == 1.0


def test_monotonicity_check_catches_a_resistance_that_falls_in_the_cold() -> None:
    """The check itself can fail: a model whose resistance falls as it gets colder scores below 100 %."""
    from hil_server.model import evaluate

    class Backwards:
        def __call__(self, inputs: dict[str, np.ndarray], training: bool = False) -> dict[str, np.ndarray]:
            t = np.asarray(inputs["op"])[:, 1:2]
            f = np.asarray(inputs["freq_hz"])
            re = (0.01 + 0.0001 * t) * np.ones_like(f)  # higher when warmer: unphysical
            return {"z_re": re, "z_im": -0.001 * np.ones_like(f), "params": None}

    grid = evaluate.grid_arrays(["x"], {"x": np.geomspace(1e4, 0.01, 20)})
    checks = evaluate.monotonicity(Backwards(), grid)
    assert checks["series_resistance_colder"] == 0.0
    assert checks["series_resistance_older"] == 1.0


def test_evaluate_cv_through_the_cli(
    trained_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", "--model", str(trained_model), "--cv", "1"]) == 2
    assert "at least 2 folds" in capsys.readouterr().err
    report = tmp_path / "cv.json"
    args = ["--cv", "2", "--cv-epochs", "1", "--mlp-epochs", "1", "--json", str(report)]
    assert main(["evaluate", "--model", str(trained_model), *args]) == 0
    out = capsys.readouterr().out
    assert "Grouped 2-fold cross-validation" in out
    assert "0.1 SOH older" in out
    result = json.loads(report.read_text())
    assert {c["cell"] for c in result["cv"]["cells"]} == set(
        result["cv"]["folds"][0] + result["cv"]["folds"][1]
    )
    assert set(result["monotonicity"]) >= {"series_resistance_colder", "abs_z_0p1hz_older"}


def test_keras_never_uses_the_typical_cells_row_of_the_offset_table() -> None:
    """pinn.ParamNet masks row 0: whatever it holds, cell 0 is offset 0, as in the numpy runtime."""
    from hil_server.model.calibrate import predict
    from hil_server.model.dataset import Arrays
    from hil_server.model.store import load_keras_model

    model, _meta = load_keras_model(BUNDLED_MODEL_DIR)
    table = model.get_layer("param_net").latent.embeddings
    rows = np.asarray(table.numpy()).copy()
    rows[0] = 0.5  # a typical-cell row far from zero, as the previous bundled model had
    table.assign(rows)
    freq = np.geomspace(1e4, 0.1, 20).astype(np.float32)[None, :]
    a = Arrays(
        profile=np.array([0], np.int32),
        cell=np.array([0], np.int32),
        op=np.array([[0.5, 10.0, 0.9]], np.float32),
        freq_hz=freq,
        z_re=np.zeros_like(freq),
        z_im=np.zeros_like(freq),
        mask=np.ones_like(freq),
        source=("x",),
        cell_id=("x",),
    )
    typical = predict(model, a)
    zero = predict(model, a, np.zeros(N_PARAMS))
    np.testing.assert_array_equal(typical[0], zero[0])
    numpy_z = NumpyPinn.load(BUNDLED_MODEL_DIR).impedance(0, a.op, freq[0])
    np.testing.assert_allclose(typical[0][0], numpy_z[0].real, rtol=1e-5)
