"""Native potentiostat files (../shared/data/instrument_files, impedance.py's examples, MIT) through
impedance.py's readers: detection, sign convention and frequency order per vendor, clear errors, the
operating point from options or a sidecar, ``eis-hil convert`` both ways, and the three call sites
(``calibrate --spectra``, ``train --extra``, a scenario's ``eis.measured``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from impedance.preprocessing import readCSV

from hil_server.cli import main
from hil_server.eis_data import (
    EisDataError,
    OperatingPoint,
    SpectrumSet,
    detect_format,
    read_generic_csv,
    read_spectra_file,
    write_generic_csv,
)
from hil_server.scenario import ScenarioError, load_scenario

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT.parent / "shared" / "data" / "instrument_files"
POINT = OperatingPoint(soc=0.5, temp_c=25.0, soh=0.9)

# file -> (format, points, (f_max, Z there), (f_min, Z there)); the values are copied from the files' text,
# with the standard sign (Im < 0 capacitive): BioLogic writes -Im(Z), so its column is negated.
CASES = {
    "exampleDataGamry.DTA": (
        "gamry",
        72,
        (200015.6, 825.8584 - 1367.239j),
        (0.0158898, 17007.49 - 6635.557j),
    ),
    "exampleDataBioLogic.mpt": (
        "biologic",
        43,
        (1000.3201, 65.470886 - 0.38998979j),
        (0.01689554, 110.97003 - 2.3458567j),
    ),
    "exampleDataAutolab.txt": (
        "autolab",
        41,
        (10000.0, 0.013785863964281 + 0.007191946305823j),
        (0.1, 0.0345697771923854 - 0.00390292888845954j),
    ),
    "exampleDataCHInstruments.txt": ("chinstruments", 73, (99610.0, 98.91 - 2.748j), (0.1, 5685 - 15860j)),
    "exampleDataParstat.txt": (
        "parstat",
        31,
        (10000.0, -0.00049816280376104 + 0.0175143479976367j),
        (10.0, 0.0270946491457229 - 0.00399791080333837j),
    ),
    "exampleDataPowersuite.txt": (
        "powersuite",
        30,
        (2000000.0, -470.54113 - 1397.7358j),
        (0.1, 423929.46 - 49014.063j),
    ),
    "exampleDataVersaStudio.par": (
        "versastudio",
        61,
        (100000.0, 55.31571 + 4.575431j),
        (0.02154435, 1516.313 - 122.8279j),
    ),
    "exampleDataZPlot.z": ("zplot", 21, (300000.0, 147.77 - 11.335j), (3000.0, 613.68 - 137.13j)),
    "exampleDataZPlot_noComments.z": ("zplot", 31, (300000.0, 642.62 - 85.821j), (300.0, 1305.3 - 195.01j)),
    # impedance.py's plain CSV, written low frequency first: reordered to descending
    "exampleData.csv": (
        "csv",
        66,
        (10000.0, 0.015771482660485933 + 0.010157474564938236j),
        (0.0031623, 0.0494998977640506 - 0.020438698544418925j),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_vendor_file_reads_with_the_standard_sign_and_descending_frequencies(name: str) -> None:
    fmt, n, (f_hi, z_hi), (f_lo, z_lo) = CASES[name]
    path = FILES / name
    assert detect_format(path) == fmt
    (spectrum,) = read_spectra_file(path, point=POINT)
    assert spectrum.n_points == n
    assert np.all(np.diff(spectrum.freq_hz) < 0)
    assert spectrum.freq_hz[0] == pytest.approx(f_hi)
    assert spectrum.z[0] == pytest.approx(z_hi)
    assert spectrum.freq_hz[-1] == pytest.approx(f_lo)
    assert spectrum.z[-1] == pytest.approx(z_lo)
    assert spectrum.z[-1].imag < 0  # every one of these is capacitive at its lowest frequency
    assert (spectrum.soc, spectrum.temp_c, spectrum.soh) == (0.5, 25.0, 0.9)
    assert spectrum.cell_id == f"generic/{path.stem}"


def test_detection_is_by_content_not_by_name(tmp_path: Path) -> None:
    renamed = tmp_path / "bench_run_3.txt"
    shutil.copy(FILES / "exampleDataGamry.DTA", renamed)
    assert detect_format(renamed) == "gamry"
    unknown = tmp_path / "notes.txt"
    unknown.write_text("hello\nworld\n")
    with pytest.raises(EisDataError, match=r"notes.txt:1: not a spectrum file eis-hil recognises"):
        read_spectra_file(unknown, point=POINT)


def test_the_aborted_gamry_sweep_is_one_clear_line() -> None:
    with pytest.raises(EisDataError) as err:
        read_spectra_file(FILES / "exampleDataGamryABORT.DTA", point=POINT)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{FILES / 'exampleDataGamryABORT.DTA'}:172: the sweep was aborted")
    assert "after 72 points of about 98 planned" in text


def test_the_biologic_file_without_frequencies_is_one_clear_line() -> None:
    with pytest.raises(EisDataError) as err:
        read_spectra_file(FILES / "exampleDataBioLogic_MissingFreq.mpt", point=POINT)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{FILES / 'exampleDataBioLogic_MissingFreq.mpt'}:61: no 'freq/Hz' column")


def test_operating_point_says_what_is_missing_and_takes_a_sidecar(tmp_path: Path) -> None:
    dta = tmp_path / "cell7.DTA"
    shutil.copy(FILES / "exampleDataGamry.DTA", dta)
    with pytest.raises(
        EisDataError, match=r"cell7.DTA: .*soc, temp_c, soh missing; give --soc --temp-c --soh"
    ):
        read_spectra_file(dta)
    with pytest.raises(EisDataError, match=r"temp_c, soh missing"):
        read_spectra_file(dta, point=OperatingPoint(soc=0.4))
    (tmp_path / "cell7.DTA.yaml").write_text("soc: 0.8\ntemp_c: 15\nsoh: 0.97\ncell_id: bench-7\n")
    (spectrum,) = read_spectra_file(dta)
    assert (spectrum.soc, spectrum.temp_c, spectrum.soh, spectrum.cell_id) == (
        0.8,
        15.0,
        0.97,
        "generic/bench-7",
    )
    (over,) = read_spectra_file(dta, point=OperatingPoint(temp_c=35.0))  # options win over the sidecar
    assert (over.soc, over.temp_c) == (0.8, 35.0)
    (tmp_path / "cell7.DTA.yaml").write_text("soc: 0.8\nsoh: 97\n")
    with pytest.raises(EisDataError, match=r"cell7.DTA.yaml:2: soh: expected a number in \[0, 1\]"):
        read_spectra_file(dta)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- 0.5\n", r"cell7.DTA.yaml:1: expected a mapping"),
        ("soc: 0.5\nsoc_pct: 50\n", r"cell7.DTA.yaml:2: unknown key 'soc_pct': expected soc, temp_c"),
        ("temp_c: 298.15\n", r"cell7.DTA.yaml:1: temp_c: expected a number in \[-100, 150\], got 298.15"),
        ("soc: .nan\n", r"cell7.DTA.yaml:1: soc: expected a number in \[0, 1\], got .nan"),
        ("soc: [0.5]\n", r"cell7.DTA.yaml:1: soc: expected a number in \[0, 1\]$"),
        ("soc: 0.5\n  soh: 1\n", r"cell7.DTA.yaml:2: cannot read the operating point"),
        ("soc: " + "[" * 5000 + "\n", r"cell7.DTA.yaml: cannot read the operating point"),
        ("soc: " + "9" * (70 * 1024) + "\n", r"cell7.DTA.yaml: larger than 65536 bytes"),
    ],
)
def test_a_bad_sidecar_is_one_line_with_its_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    dta = tmp_path / "cell7.DTA"
    shutil.copy(FILES / "exampleDataGamry.DTA", dta)
    (tmp_path / "cell7.DTA.yaml").write_text(text)
    with pytest.raises(EisDataError, match=message):
        read_spectra_file(dta, point=POINT)


def test_a_sidecar_alias_is_read_as_its_value_not_expanded(tmp_path: Path) -> None:
    dta = tmp_path / "cell7.DTA"
    shutil.copy(FILES / "exampleDataGamry.DTA", dta)
    (tmp_path / "cell7.DTA.yaml").write_text("soc: &x 0.5\nsoh: *x\ntemp_c: 20\ncell_id: 7\n")
    (spectrum,) = read_spectra_file(dta)
    assert (spectrum.soc, spectrum.temp_c, spectrum.soh, spectrum.cell_id) == (0.5, 20.0, 0.5, "generic/7")


def test_convert_to_generic_and_to_impedance_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cell.csv"
    argv = ["convert", str(FILES / "exampleDataBioLogic.mpt"), str(out), "--soc", "0.5", "--temp-c", "25"]
    assert main(argv) == 2  # no SOH: refused, nothing written
    assert "soh missing" in capsys.readouterr().err
    assert not out.exists()
    assert main([*argv, "--soh", "1"]) == 0
    (generic,) = read_generic_csv(out)
    (direct,) = read_spectra_file(FILES / "exampleDataBioLogic.mpt", point=OperatingPoint(0.5, 25.0, 1.0))
    np.testing.assert_array_equal(generic.freq_hz, direct.freq_hz)
    np.testing.assert_array_equal(generic.z, direct.z)
    back = tmp_path / "impedance.csv"
    assert main(["convert", str(out), str(back), "--to", "impedance"]) == 0
    freq, z = readCSV(str(back))  # impedance.py reads what we wrote
    np.testing.assert_allclose(freq, direct.freq_hz, rtol=1e-15)
    np.testing.assert_allclose(z, direct.z, rtol=1e-15)
    assert detect_format(back) == "csv"
    assert main(["convert", str(FILES / "exampleDataGamryABORT.DTA"), str(back), "--to", "impedance"]) == 2
    assert ":172: the sweep was aborted" in capsys.readouterr().err
    assert main(["convert", str(out), str(tmp_path / "missing-dir" / "x.csv")]) == 2
    assert "missing-dir does not exist" in capsys.readouterr().err


def _measured_scenario(tmp_path: Path, file: str) -> Path:
    path = tmp_path / "lab.yaml"
    path.write_text(
        f"""name: lab
step_rate_hz: 10
eis:
  interval_s: 1
  frequencies: {{min_hz: 0.01, max_hz: 10000, points_per_decade: 10}}
  measured: {{file: {file}}}
cells: {{count: 1, profile: zhang2020, soc: 0.5}}
timeline:
  - rest: {{duration_s: 10}}
""",
        encoding="utf-8",
    )
    return path


def test_scenario_eis_measured_takes_an_instrument_file_with_its_sidecar(tmp_path: Path) -> None:
    shutil.copy(FILES / "exampleDataAutolab.txt", tmp_path / "cell.txt")
    scenario = _measured_scenario(tmp_path, "cell.txt")
    with pytest.raises(ScenarioError) as err:
        load_scenario(scenario)
    assert "soc, temp_c, soh missing" in str(err.value)
    (tmp_path / "cell.txt.yaml").write_text("soc: 0.5\ntemp_c: 25\nsoh: 1.0\n")
    measured = load_scenario(scenario).eis.measured
    assert measured is not None
    (spectrum,) = measured.spectra
    assert spectrum.n_points == 41
    assert spectrum.z[0] == pytest.approx(0.013785863964281 + 0.007191946305823j)


def test_train_extra_reports_a_bad_instrument_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    abort = str(FILES / "exampleDataGamryABORT.DTA")
    assert main(["train", "--out", str(tmp_path / "m"), "--epochs", "1", "--extra", abort]) == 2
    err = capsys.readouterr().err
    assert "exampleDataGamryABORT.DTA:172: the sweep was aborted" in err
    assert not (tmp_path / "m").exists()


def test_calibrate_from_an_impedance_csv_with_the_operating_point_as_options(
    trained_model: Path,
    small_spectra: SpectrumSet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EIS_HIL_PROFILES", str(tmp_path / "profiles"))
    spectrum = small_spectra.filter(source="zhang2020")[0]
    generic = tmp_path / "one.csv"
    write_generic_csv([spectrum], generic)
    lab = tmp_path / "lab.csv"
    assert main(["convert", str(generic), str(lab), "--to", "impedance"]) == 0  # labels dropped
    argv = ["calibrate", "--model", str(trained_model), "--profile", "zhang2020", "--spectra", str(lab)]
    argv += ["--name", "lab-cell"]
    assert main(argv) == 2
    assert "soc, temp_c, soh missing" in capsys.readouterr().err
    point = ["--soc", repr(spectrum.soc), "--temp-c", repr(spectrum.temp_c), "--soh", repr(spectrum.soh)]
    assert main([*argv, *point]) == 0
    assert (tmp_path / "profiles" / "lab-cell.json").is_file()
    assert "lab-cell" in capsys.readouterr().out


def test_operating_point_options_out_of_range_are_refused_before_reading(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    src = str(FILES / "exampleDataGamry.DTA")
    with pytest.raises(SystemExit):
        main(["convert", src, str(tmp_path / "o.csv"), "--temp-c", "298"])
    assert "expected degrees Celsius in -100..150 (Kelvin?)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", src, str(tmp_path / "o.csv"), "--soc", "50"])
    assert "percent? give a fraction" in capsys.readouterr().err
