"""train, evaluate, profiles, spectrum and calibrate through the eis-hil entry point, on a tiny model."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from hil_server.cli import main
from hil_server.eis_data import SpectrumSet, write_generic_csv
from hil_server.model import N_PARAMS


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_spectrum_single_point(trained_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "spectrum",
            "--model",
            str(trained_model),
            "--profile",
            "zhang2020",
            "--soc",
            "0.5",
            "--temp-c",
            "-20",
            "--soh",
            "0.8",
        ]
    )
    assert code == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 60
    assert {r["row"] for r in rows} == {"0"}
    assert all(float(r["z_re_ohm"]) > 0 for r in rows)


def test_spectrum_batch_with_frequencies(trained_model: Path, tmp_path: Path) -> None:
    points = tmp_path / "points.csv"
    points.write_text("profile,soc,temp_c,soh\nrashid2023,0.1,60,0.6\nzhang2020,1.0,-30,1.0\n")
    freqs = tmp_path / "freqs.txt"
    freqs.write_text("# Hz\n1000\n1\n0.001\n")
    out = tmp_path / "spectra.csv"
    assert (
        main(
            [
                "spectrum",
                "--model",
                str(trained_model),
                "--points",
                str(points),
                "--freqs",
                str(freqs),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = _rows(out.read_text())
    assert [(r["row"], float(r["freq_hz"])) for r in rows] == [
        ("0", 1000.0),
        ("0", 1.0),
        ("0", 0.001),
        ("1", 1000.0),
        ("1", 1.0),
        ("1", 0.001),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("profile,soc,temp_c\nzhang2020,0.5,25\n", "missing column(s) soh"),
        ("profile,soc,temp_c,soh\nzhang2020,half,25,1\n", ":2: column 'soc': expected a number"),
        (
            "profile,soc,temp_c,soh\nzhang2020,0.5,25,1\nzhang2020,1.5,25,1\n",
            ": operating point 2: soc 1.5: expected a number in [0, 1]",
        ),
        ("profile,soc,temp_c,soh\nnosuch,0.5,25,1\n", "unknown profile 'nosuch'"),
    ],
)
def test_spectrum_bad_points_file(
    trained_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    points = tmp_path / "points.csv"
    points.write_text(content)
    assert main(["spectrum", "--model", str(trained_model), "--points", str(points)]) == 2
    assert message in capsys.readouterr().err


def test_spectrum_missing_model_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "spectrum",
                "--model",
                str(tmp_path),
                "--profile",
                "zhang2020",
                "--soc",
                "0.5",
                "--temp-c",
                "25",
                "--soh",
                "1",
            ]
        )
        == 2
    )
    assert "metadata.json: missing" in capsys.readouterr().err


def test_profiles_lists_ranges(trained_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles", "--model", str(trained_model)]) == 0
    out = capsys.readouterr().out
    assert "rashid2023" in out
    assert "zhang2020" in out


def test_calibrate_then_use_the_profile(
    trained_model: Path,
    small_spectra: SpectrumSet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EIS_HIL_PROFILES", str(tmp_path / "profiles"))
    cell = small_spectra.filter(source="zhang2020").cells()[0]
    measured = tmp_path / "cell.csv"
    write_generic_csv(small_spectra.filter(cells=[cell])[:3], measured)
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(trained_model),
                "--profile",
                "zhang2020",
                "--spectra",
                str(measured),
                "--name",
                "bench-cell-7",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "bench-cell-7" in out
    saved = json.loads((tmp_path / "profiles" / "bench-cell-7.json").read_text())
    assert saved["base"] == "zhang2020"
    assert len(saved["latent"]) == N_PARAMS  # one log-offset per circuit parameter
    before, after = (float(x) for x in re.findall(r"([0-9.]+)%", out)[:2])
    assert after < before
    assert (
        main(
            [
                "spectrum",
                "--model",
                str(trained_model),
                "--profile",
                "bench-cell-7",
                "--soc",
                "1",
                "--temp-c",
                "25",
                "--soh",
                "1",
            ]
        )
        == 0
    )
    calibrated = np.array([float(r["z_re_ohm"]) for r in _rows(capsys.readouterr().out)])
    assert main(["profiles", "--model", str(trained_model)]) == 0
    assert "bench-cell-7" in capsys.readouterr().out
    assert calibrated.size == 60


def test_evaluate_prints_the_table(
    trained_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(trained_model), "--mlp-epochs", "3", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "plain_mlp" in out
    assert "Lin-KK" in out
    result = json.loads(report.read_text())
    assert result["validity"]["pinn"]["finite_re_positive"] == 1.0
    assert {r["model"] for r in result["rows"]} == {"pinn", "plain_mlp"}


def test_train_command(
    small_spectra: SpectrumSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the CLI on the full data set (one epoch); skipped with the other data tests if it is absent."""
    out = tmp_path / "m"
    assert main(["train", "--out", str(out), "--epochs", "1"]) == 0
    assert (out / "model.keras").is_file()
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["profiles"] == ["rashid2023", "zhang2020"]
    # every cell trains (models are selected by grouped CV, evaluate --cv); the metrics are the fit
    assert set(meta["metrics"]) == {"train/rashid2023", "train/zhang2020"}
    assert meta["validation_cells"] == []
    assert "model written" in capsys.readouterr().out
