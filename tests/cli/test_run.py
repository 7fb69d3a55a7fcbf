"""eis-hil run: a scenario into files through the real CLI, with the bundled model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from hil_server.cli import main
from hil_server.eis_data import read_generic_csv

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_run_writes_csv_that_the_generic_reader_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "us06"
    assert main(["run", str(SCENARIOS / "us06_25c.yaml"), "--out", str(out), "--max-s", "600", "--csv"]) == 0
    assert "600.0 s simulated" in capsys.readouterr().out  # 300 s rest, then US06
    summary = json.loads((out / "run.json").read_text())
    assert summary["steps"] == 6000
    assert summary["rows"]["states"] == 6000 * summary["cells"]
    states = _csv_rows(out / "states.csv")
    assert 2.5 < float(states[-1]["voltage_v"]) < 4.3
    assert float(states[-1]["soc"]) < float(states[0]["soc"])  # US06 discharges
    spectra = read_generic_csv(out / "spectra.csv")  # the project's own format: feeds calibrate / train
    assert len(spectra) > 0
    assert all(s.z.real.min() > 0 for s in spectra)


def test_run_is_deterministic_and_parquet_by_default(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    for name in ("a", "b"):
        assert (
            main(
                [
                    "run",
                    str(SCENARIOS / "fault_showcase.yaml"),
                    "--out",
                    str(tmp_path / name),
                    "--max-s",
                    "700",
                ]
            )
            == 0
        )
    a = pq.read_table(tmp_path / "a" / "states.parquet")
    b = pq.read_table(tmp_path / "b" / "states.parquet")
    assert a.equals(b)
    faults = pq.read_table(tmp_path / "a" / "faults.parquet").to_pylist()
    assert any(
        f["kind"] == "contact_resistance" and f["phase"] == "start" and f["cells"] == "4" for f in faults
    )


def test_seed_sweep_writes_partitions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    assert (
        main(
            [
                "run",
                str(SCENARIOS / "pack_96s_spread.yaml"),
                "--out",
                str(out),
                "--max-s",
                "20",
                "--csv",
                "--seeds",
                "1",
                "2",
            ]
        )
        == 0
    )
    first = _csv_rows(out / "seed=1" / "states.csv")
    second = _csv_rows(out / "seed=2" / "states.csv")
    assert len(first) == len(second)
    assert [r["voltage_v"] for r in first] != [r["voltage_v"] for r in second]  # spread drawn from the seed
    assert len(json.loads((out / "sweep.json").read_text())) == 2
    assert capsys.readouterr().out.count("pack_96s_spread seed ") == 2


def test_run_reports_scenario_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nseed: 1\ncells:\n  count: 2\n  profile: zhang2020\ntimeline: []\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "eis-hil run: " + str(bad) + ":6: timeline" in capsys.readouterr().err  # errors on stderr
