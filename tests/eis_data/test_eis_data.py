"""The EIS data pipeline: readers on the real files, signs, labels, defects, generic CSV, split, npz."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from hil_server.eis_data import (
    ENV_VAR,
    FLAG_DUPLICATE,
    FLAG_NO_CAPACITY,
    FLAG_SOC20_LIKE_SOC5,
    SIMULATED_CELL,
    SIMULATED_SOURCE,
    SOURCE_INFO,
    TRAINING_SET_PATH,
    DataNotFoundError,
    EisDataError,
    RashidDefect,
    Spectrum,
    SpectrumSet,
    ZhangReadReport,
    _aggregate,
    collect,
    content_hash,
    data_root,
    format_report,
    load_all,
    load_npz,
    load_training_set,
    measured_data_available,
    provenance_path,
    read_capacity,
    read_generic_csv,
    read_pybamm_chen2020,
    read_rashid2023,
    read_zhang2020,
    save_npz,
    split_by_cell,
    verify_zhang_pairing,
    write_generic_csv,
    write_training_set,
)


def _root_or_skip() -> Path:
    try:
        return data_root()
    except DataNotFoundError as exc:
        pytest.skip(f"real EIS data not available ({exc}); set ${ENV_VAR} to run these tests")


@pytest.fixture(scope="module")
def root() -> Path:
    return _root_or_skip()


@pytest.fixture(scope="module")
def zhang_all(root: Path) -> SpectrumSet:
    return read_zhang2020(root, include_flagged=True)


@pytest.fixture(scope="module")
def rashid_read(root: Path) -> tuple[SpectrumSet, list[RashidDefect]]:
    defects: list[RashidDefect] = []
    return read_rashid2023(root, include_flagged=True, defects=defects), defects


@pytest.fixture(scope="module")
def training(zhang_all: SpectrumSet, rashid_read: tuple[SpectrumSet, list[RashidDefect]]) -> SpectrumSet:
    return zhang_all.clean() + rashid_read[0].clean()


# --- data location -------------------------------------------------------------------------------------


def test_missing_data_dir_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError, match=re.escape(str(missing))):
        data_root(missing)
    monkeypatch.setenv(ENV_VAR, str(missing))
    with pytest.raises(DataNotFoundError, match=rf"{re.escape(str(missing))}.*EIS_HIL_DATA"):
        data_root()
    with pytest.raises(DataNotFoundError, match=r"rashid_eis_long_train_cells\.csv"):
        read_rashid2023(tmp_path)


# --- zhang2020 -----------------------------------------------------------------------------------------


def test_zhang_schema_and_signs(zhang_all: SpectrumSet) -> None:
    clean = zhang_all.clean()
    assert clean.cells() == [
        f"zhang2020/{c}" for c in ("25C01", "25C02", "25C03", "25C04", "25C06", "25C07", "25C08", "45C01")
    ]
    assert {s.state for s in zhang_all} == {"I", "V", "IX"}
    freq, z = clean.stacked()
    assert freq.shape == (60,)
    assert z.shape == (len(clean), 60)
    assert freq[0] == pytest.approx(20004.453)
    assert freq[-1] == pytest.approx(0.019999, rel=1e-3)
    assert np.all(np.diff(freq) < 0)
    assert np.all(z.real > 0)
    # Standard sign: capacitive (Im < 0) at the lowest frequency, inductive (Im > 0) at 20 kHz.
    assert np.all(z[:, -1].imag < 0)
    assert np.mean(z[:, 0].imag > 0) > 0.95


def test_zhang_sign_is_negated_fifth_column(root: Path, zhang_all: SpectrumSet) -> None:
    first = (root / "eis/zhang2020/EIS/EIS_state_V_25C01.txt").read_text().splitlines()[1].split()
    s = next(s for s in zhang_all if s.cell_id == "zhang2020/25C01" and s.state == "V" and s.cycle == 1)
    assert s.z[0].real == float(first[3])
    assert s.z[0].imag == -float(first[4])


def test_zhang_labels(root: Path, zhang_all: SpectrumSet) -> None:
    soc_by_state = {s.state: s.soc for s in zhang_all}
    assert soc_by_state == {"I": 0.0, "V": 1.0, "IX": 0.0}
    assert set(zhang_all.temp_c.tolist()) == {25.0, 45.0}
    capacity = read_capacity("25C02", root)
    for s in zhang_all.filter(cells=["zhang2020/25C02"]):
        assert s.cycle is not None
        if s.cycle <= capacity.size:
            assert s.soh == capacity[s.cycle - 1] / capacity[0]
            assert s.ok
        else:
            assert math.isnan(s.soh)
            assert s.flags == (FLAG_NO_CAPACITY,)
    # Q0 is the first capacity line, so every cell starts at SOH exactly 1.
    for cell in zhang_all.cells():
        first = min((s for s in zhang_all.filter(cells=[cell])), key=lambda s: s.cycle or 0)
        assert first.cycle == 1
        assert first.soh == 1.0


def test_zhang_file_name_typo_maps_to_25c04(root: Path) -> None:
    vi = read_zhang2020(root, states=("VI",), include_flagged=True)
    assert "zhang2020/25C04" in vi.cells()
    assert all(s.origin.startswith("EIS_state_VI_25C42.txt") for s in vi.filter(cells=["zhang2020/25C04"]))
    assert "zhang2020/25C42" not in vi.cells()
    assert read_zhang2020(root, states=("VI",)).cells() == []  # no SOC label: excluded by default


def test_zhang_pairing_verified_against_mrs_sp22(root: Path) -> None:
    check = verify_zhang_pairing(root)
    assert check.rows == 1068
    assert check.cells == ("25C01", "25C02", "25C03", "25C04", "25C06", "25C07", "25C08")
    # Capacity line cycle-1 equals mrs Q to the 5 decimals of the txt files; other offsets are mAh off.
    assert check.best_offset == -1
    assert check.offset_errors[-1] < 1e-5
    assert all(err > 0.5 for off, err in check.offset_errors.items() if off != -1)
    assert check.max_abs_soh_error < 1e-6  # q = Q / Q(cycle 1)
    assert check.max_abs_z_error_ohm == 0.0  # mrs rows are the state-V spectra of the same cycle
    assert check.verified


def test_zhang_drops_incomplete_groups_and_reads_headerless_files(tmp_path: Path) -> None:
    eis = tmp_path / "eis/zhang2020/EIS"
    cap = tmp_path / "eis/zhang2020/capacity"
    eis.mkdir(parents=True)
    cap.mkdir(parents=True)
    (cap / "Capacity_data_25C09.txt").write_text("40.0\n38.0\n36.0\n")
    freqs = np.logspace(np.log10(20000), np.log10(0.02), 60)
    rows = []
    for cycle, n in ((1, 60), (2, 60), (3, 59)):
        rows += [
            f"{i}\t{cycle:.5f}\t{f:.5f}\t0.5\t{0.1 if f < 100 else -0.01}\t0\t0"
            for i, f in enumerate(freqs[:n])
        ]
    (eis / "EIS_state_V_25C09.txt").write_text("\n".join(rows) + "\n")  # no header, like the 45C01 files
    reports: list[ZhangReadReport] = []
    # capture_logs isolates this test from whatever structlog configuration other tests left behind.
    with capture_logs() as logs:
        spectra = read_zhang2020(tmp_path, report=reports)
    assert [e["event"] for e in logs] == ["zhang2020_dropped_incomplete"]
    assert [s.cycle for s in spectra] == [1, 2]
    assert [s.soh for s in spectra] == [1.0, 0.95]
    assert spectra[0].z[-1].imag == -0.1
    assert reports[0].incomplete == (("EIS_state_V_25C09.txt", "25C09", 3),)


# --- rashid2023 ----------------------------------------------------------------------------------------


def test_rashid_schema_and_signs(rashid_read: tuple[SpectrumSet, list[RashidDefect]]) -> None:
    spectra = rashid_read[0]
    assert len(spectra) == 285
    assert len(spectra.cells()) == 19
    freq, z = spectra.stacked()
    assert freq.shape == (61,)
    assert freq[0] == 10000.0
    assert freq[-1] == pytest.approx(0.01)
    assert np.all(z.real > 0)
    assert np.all(z[:, -1].imag < 0)
    assert set(spectra.soc.tolist()) == {0.05, 0.2, 0.5, 0.7, 0.95}
    assert set(spectra.temp_c.tolist()) == {15.0, 25.0, 35.0}
    # soh_actual_pct, not the nominal group: cell 17 is nominal 85 % but measured 80.46 %.
    assert {s.soh for s in spectra.filter(cells=["rashid2023/cell17"])} == {0.8046}


def test_rashid_soc20_defect_flags(rashid_read: tuple[SpectrumSet, list[RashidDefect]]) -> None:
    spectra, defects = rashid_read
    soc20 = {(d.cell_id.split("/")[1], d.temp_c) for d in defects if d.flag == FLAG_SOC20_LIKE_SOC5}
    at_15 = {c for c, t in soc20 if t == 15.0}
    # The known defect: at 15 C these cells' 20 % spectra look like 5 %; cell03 and the aged cells do not.
    assert at_15 == {"cell02", "cell04", "cell05", "cell28", "cell29", "cell30", "cell31"}
    assert {c for c, t in soc20 if t == 25.0} == {
        "cell02",
        "cell03",
        "cell04",
        "cell05",
        "cell28",
        "cell29",
        "cell30",
        "cell31",
    }
    assert not {c for c, t in soc20 if t == 35.0}
    for s in spectra.filter(lambda s: s.soc == 0.2 and s.temp_c == 15.0):
        assert (FLAG_SOC20_LIKE_SOC5 in s.flags) == (s.cell_id.split("/")[1] in at_15)
    clean = read_rashid2023(data_root())
    assert len(clean) == 260
    assert all(s.ok for s in clean)


def test_rashid_duplicates_flagged(rashid_read: tuple[SpectrumSet, list[RashidDefect]]) -> None:
    dups = {(d.cell_id.split("/")[1], d.temp_c, d.soc) for d in rashid_read[1] if d.flag == FLAG_DUPLICATE}
    expected = {(f"cell0{i}", 25.0, soc) for i in (2, 3, 4, 5) for soc in (0.05, 0.5)}
    assert dups == expected | {("cell02", 35.0, 0.05), ("cell31", 35.0, 0.05)}


# --- generic CSV ---------------------------------------------------------------------------------------

HEADER = "spectrum_id,soc,temp_c,soh,freq_hz,z_re_ohm,z_im_ohm"
GOOD = [HEADER, "a,0.5,25,0.9,1000,0.05,0.001", "a,0.5,25,0.9,1,0.06,-0.01", "b,0.2,10,0.9,10,0.07,-0.002"]


def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "lab.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_generic_good_file(tmp_path: Path) -> None:
    spectra = read_generic_csv(_write(tmp_path, GOOD))
    assert [s.cell_id for s in spectra] == ["generic/a", "generic/b"]
    assert spectra[0].freq_hz.tolist() == [1000.0, 1.0]
    assert spectra[0].z[1] == complex(0.06, -0.01)
    assert spectra[1].soc == 0.2
    assert spectra[1].temp_c == 10.0
    assert spectra[1].profile == "generic"


BAD_CASES = [
    # (lines, line number, column, fragment of the message)
    ([HEADER.replace(",soh", ""), "a,0.5,25,1000,0.05,0.001"], 1, "soh", "missing column"),
    ([HEADER, "a,0.5,25,0.9,1000,abc,0.001"], 2, "z_re_ohm", "expected a number"),
    ([HEADER, "a,0.5,25,0.9,1000,0.05,0.001", "a,1.5,25,0.9,10,0.05,0.001"], 3, "soc", "fraction in 0..1"),
    ([HEADER, "a,50,25,0.9,1000,0.05,0.001"], 2, "soc", "percent?"),
    ([HEADER, "a,0.5,25,90,1000,0.05,0.001"], 2, "soh", "fraction in 0..1"),
    ([HEADER, "a,0.5,25,0.9,0,0.05,0.001"], 2, "freq_hz", "frequency > 0"),
    ([HEADER, "a,0.5,25,0.9,-5,0.05,0.001"], 2, "freq_hz", "frequency > 0"),
    ([HEADER, "a,0.5,25,0.9,1000,0.05,0.001", "a,0.5,26,0.9,10,0.05,0.001"], 3, "temp_c", "must agree"),
    (
        [HEADER, "a,0.5,25,0.9,1000,0.05,0.001", "b,0.5,25,0.9,1,0.05,0.001", "a,0.5,25,0.8,1,0.05,0.001"],
        4,
        "soh",
        "line 2",
    ),
    (
        [HEADER, "a,0.5,25,0.9,1000,0.05,0.001", "a,0.5,25,0.9,1000.0,0.06,0.001"],
        3,
        "freq_hz",
        "duplicate frequency",
    ),
    ([HEADER, "a,0.5,25,0.9,1000,nan,0.001"], 2, "z_re_ohm", "finite"),
    ([HEADER, "a,0.5,25,0.9,1000,0.05,NaN"], 2, "z_im_ohm", "finite"),
    ([HEADER, "a,0.5,298.15,0.9,1000,0.05,0.001"], 2, "temp_c", "Kelvin"),
    ([HEADER, "a,0.5,25,0.9,1000,0.05,"], 2, "z_im_ohm", "expected a number"),
    ([HEADER, ",0.5,25,0.9,1000,0.05,0.001"], 2, "spectrum_id", "non-empty"),
    (
        [HEADER + ",cell_id", "a,0.5,25,0.9,1000,0.05,0.001,c1", "a,0.5,25,0.9,1,0.05,0.001,c2"],
        3,
        "cell_id",
        "must agree",
    ),
]


@pytest.mark.parametrize(("lines", "line", "column", "fragment"), BAD_CASES)
def test_generic_errors_name_line_and_column(
    tmp_path: Path, lines: list[str], line: int, column: str, fragment: str
) -> None:
    path = _write(tmp_path, lines)
    with pytest.raises(EisDataError) as info:
        read_generic_csv(path)
    err = info.value
    assert (err.line, err.column) == (line, column)
    message = str(err)
    assert f"{path}:{line}" in message
    assert f"column '{column}'" in message
    assert fragment in message


def test_generic_errors_without_column(tmp_path: Path) -> None:
    with pytest.raises(EisDataError, match=r"lab.csv:3: expected 7 fields, got 6"):
        read_generic_csv(_write(tmp_path, [*GOOD[:2], "a,0.5,25,0.9,1,0.05"]))
    with pytest.raises(EisDataError, match=r"lab.csv:2: no data rows"):
        read_generic_csv(_write(tmp_path, [HEADER]))


def test_generic_round_trip(tmp_path: Path, training: SpectrumSet) -> None:
    sample = SpectrumSet(training.spectra[::400])
    path = tmp_path / "out.csv"
    write_generic_csv(sample, path)
    back = read_generic_csv(path)
    assert len(back) == len(sample)
    for a, b in zip(sample, back, strict=True):
        assert (a.source, a.cell_id, a.soc, a.temp_c, a.soh) == (b.source, b.cell_id, b.soc, b.temp_c, b.soh)
        assert np.array_equal(a.freq_hz, b.freq_hz)
        assert np.array_equal(a.z, b.z)


# --- split and npz -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_by_cell(training: SpectrumSet, seed: int) -> None:
    train, val = split_by_cell(training, 0.2, seed)
    assert len(train) + len(val) == len(training)
    assert not set(train.cells()) & set(val.cells())
    assert set(val.sources()) == set(training.sources())  # every source has validation cells
    assert "zhang2020/45C01" in train.cells()  # the only 45 C cell keeps its temperature in training
    again_train, again_val = split_by_cell(training, 0.2, seed)
    assert again_val.cells() == val.cells()
    assert again_train.cells() == train.cells()


def test_split_rejects_bad_fraction(training: SpectrumSet) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_cell(training, 1.0, 0)


def test_npz_round_trip(tmp_path: Path, training: SpectrumSet) -> None:
    path = tmp_path / "train.npz"
    digest = save_npz(training, path)
    assert path.stat().st_size < 5e6
    back, loaded = load_npz(path)
    assert loaded == digest == content_hash(back)
    assert len(back) == len(training)
    for a, b in zip(training.spectra[::97], back.spectra[::97], strict=True):
        assert (a.cell_id, a.profile, a.soc, a.temp_c, a.soh, a.cycle, a.state, a.flags, a.origin) == (
            b.cell_id,
            b.profile,
            b.soc,
            b.temp_c,
            b.soh,
            b.cycle,
            b.state,
            b.flags,
            b.origin,
        )
        assert np.array_equal(a.z, b.z)
        assert np.array_equal(a.freq_hz, b.freq_hz)
    assert content_hash(SpectrumSet(training.spectra[1:])) != digest


def test_npz_detects_tampering(tmp_path: Path) -> None:
    s = Spectrum(
        "generic", "generic/x", "generic", 0.5, 25.0, 0.9, np.array([10.0, 1.0]), np.array([1 + 0j, 1 - 1j])
    )
    path = tmp_path / "one.npz"
    save_npz(SpectrumSet((s,)), path)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["z_re"] = arrays["z_re"] * 2
    np.savez_compressed(path, **arrays)
    with pytest.raises(EisDataError, match="content hash mismatch"):
        load_npz(path)


# --- schema and report ---------------------------------------------------------------------------------


def test_spectrum_validation() -> None:
    f, z = np.array([10.0, 1.0]), np.array([1 + 0j, 1 - 1j])
    with pytest.raises(EisDataError, match="descending"):
        Spectrum("g", "g/x", "g", 0.5, 25.0, 0.9, f[::-1], z)
    with pytest.raises(EisDataError, match=r"soc=1\.5"):
        Spectrum("g", "g/x", "g", 1.5, 25.0, 0.9, f, z)
    with pytest.raises(EisDataError, match="NaN on an unflagged"):
        Spectrum("g", "g/x", "g", 0.5, 25.0, float("nan"), f, z)
    s = Spectrum("g", "g/x", "g", 0.5, 25.0, 0.9, f, z)
    assert not s.z.flags.writeable


def test_report_mentions_exclusions(root: Path) -> None:
    text = format_report(collect(root, all_zhang_states=False))
    assert "zhang2020 / profile zhang2020: 8 cells, 4276 spectra" in text
    assert "rashid2023 / profile rashid2023: 19 cells, 260 spectra" in text
    assert "soc20_like_soc5: 15" in text
    assert "VERIFIED" in text


# --- shipped training set and fallback -------------------------------------------------------------------


def test_npz_file_bytes_are_reproducible(tmp_path: Path) -> None:
    s = Spectrum(
        "generic", "generic/x", "generic", 0.5, 25.0, 0.9, np.array([10.0, 1.0]), np.array([1 + 0j, 1 - 1j])
    )
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert save_npz(SpectrumSet((s,)), a) == save_npz(SpectrumSet((s,)), b)
    assert a.read_bytes() == b.read_bytes()
    with np.load(a, allow_pickle=False) as data:  # still a plain numpy archive
        assert data["z_im"].tolist() == [0.0, -1.0]


@pytest.fixture(scope="module")
def shipped() -> SpectrumSet:
    return load_training_set()


def test_shipped_training_set_and_provenance(shipped: SpectrumSet) -> None:
    record = json.loads(provenance_path(TRAINING_SET_PATH).read_text(encoding="utf-8"))
    assert TRAINING_SET_PATH.stat().st_size == record["file_bytes"] < 5e6
    assert record["content_sha256"] == content_hash(shipped)
    assert record["spectra"] == len(shipped)
    assert all(s.ok for s in shipped)
    counted = {(g["source"], g["profile"]): (g["spectra"], g["cells"]) for g in record["groups"]}
    actual = {
        (src, prof): (len(g := shipped.filter(source=src, profile=prof)), len(g.cells()))
        for src in shipped.sources()
        for prof in shipped.filter(source=src).profiles()
    }
    assert counted == actual
    assert set(record["sources"]) == {"zhang2020", "rashid2023", SIMULATED_SOURCE} == set(shipped.sources())
    data_md = (Path(TRAINING_SET_PATH).parent / "DATA.md").read_text(encoding="utf-8")
    for name, info in record["sources"].items():
        assert info == SOURCE_INFO[name]
        for doi in re.findall(r"doi:(\S+?)[),]?(?:\s|$)", info["citation"]):
            assert doi in data_md, f"{name}: {doi} cited in the provenance but not in DATA.md"
    assert record["sources"]["zhang2020"]["licence"].startswith("not verified")


def test_shipped_measured_part_is_what_the_readers_give(root: Path, shipped: SpectrumSet) -> None:
    measured = shipped.filter(lambda s: s.source != SIMULATED_SOURCE)
    assert content_hash(measured) == content_hash(load_all(root))
    assert content_hash(shipped.filter(source=SIMULATED_SOURCE)) == content_hash(read_pybamm_chen2020())


def test_shipped_set_keeps_the_bundled_split(shipped: SpectrumSet) -> None:
    """Training from the shipped set (simulated source included) holds out the same whole cells as the
    bundled model (none, when it was trained on every cell and selected by grouped CV); the one simulated
    'cell' stays in training."""
    bundled = Path(TRAINING_SET_PATH).parents[1] / "model" / "bundled" / "metadata.json"
    meta = json.loads(bundled.read_text(encoding="utf-8"))
    measured = shipped.filter(lambda s: s.source != SIMULATED_SOURCE)
    assert content_hash(measured) == meta["training_data_sha256"]
    if meta["config"]["val_fraction"] == 0:
        assert meta["validation_cells"] == []
        return
    train, val = split_by_cell(shipped, meta["config"]["val_fraction"], meta["config"]["seed"])
    assert val.cells() == meta["validation_cells"]
    assert not set(train.cells()) & set(val.cells())
    assert SIMULATED_CELL in train.cells()


def test_load_all_falls_back_to_the_shipped_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shipped: SpectrumSet
) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(_aggregate, "DEFAULT_DATA_ROOT", tmp_path / "no-shared-data")
    assert not measured_data_available()
    with capture_logs() as logs:
        measured = load_all()
    assert any("shipped training set" in entry["event"] for entry in logs)
    assert measured.sources() == ["rashid2023", "zhang2020"]
    assert content_hash(measured) == content_hash(shipped.filter(lambda s: s.source != SIMULATED_SOURCE))
    everything = load_all(simulated=True)
    assert content_hash(everything) == content_hash(shipped)
    # A directory that was asked for explicitly never falls back silently.
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "asked-for"))
    assert measured_data_available()
    with pytest.raises(DataNotFoundError, match="asked-for"):
        load_all()
    with pytest.raises(DataNotFoundError, match="elsewhere"):
        load_all(tmp_path / "elsewhere")


def test_training_set_checked_against_its_provenance(tmp_path: Path) -> None:
    f = np.array([10.0, 1.0])
    spectra = SpectrumSet.of(
        Spectrum("generic", f"generic/{i}", "generic", 0.5, 25.0, 0.9, f, np.array([1 + 0j, 1 - 1j * i]))
        for i in range(1, 4)
    )
    path = tmp_path / "set.npz"
    record = write_training_set(spectra, path, generator="test")
    assert record["sources"]["generic"]["kind"] == "generic CSV"
    assert content_hash(load_training_set(path)) == record["content_sha256"]
    save_npz(spectra[:2], path)  # the file changes, its provenance does not
    with pytest.raises(EisDataError, match=r"set\.npz.*set\.provenance\.json"):
        load_training_set(path)
    provenance_path(path).unlink()
    with pytest.raises(DataNotFoundError, match="provenance"):
        load_training_set(path)
    with pytest.raises(DataNotFoundError, match="ingest_eis"):
        load_training_set(tmp_path / "missing.npz")
