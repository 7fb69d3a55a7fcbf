"""Scenario format: every bundled scenario loads; a catalogue of bad files gets precise errors."""

from __future__ import annotations

import hashlib
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from hil_server.scenario import (
    FAULT_PARAMS,
    DriveCycleSegment,
    Issue,
    Repeat,
    ScenarioError,
    Sweep,
    load_scenario,
    scenario_hash,
    validate_files,
)
from protocol._constants import FaultKind

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
BUNDLED = sorted(SCENARIOS.glob("*.yaml"))


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_bundled_scenario_loads(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    assert scenario.sha256 == hashlib.sha256(path.read_bytes()).digest()
    assert scenario.timeline


def test_all_required_bundled_scenarios_present() -> None:
    assert {p.stem for p in BUNDLED} >= {
        "us06_25c",
        "udds_cold_soak_m10c",
        "temperature_sweep",
        "soc_sweep",
        "aging_sweep",
        "fault_showcase",
        "pack_96s_spread",
    }
    assert validate_files(BUNDLED) == []


def test_fault_showcase_covers_every_layer() -> None:
    kinds = {f.kind for f in load_scenario(SCENARIOS / "fault_showcase.yaml").faults}
    assert any(k < 0x20 for k in kinds)
    assert any(0x20 <= k < 0x40 for k in kinds)
    assert any(k >= 0x41 for k in kinds)
    assert FaultKind.CONTACT_RESISTANCE in kinds
    assert FaultKind.FROZEN in kinds


def test_every_fault_kind_has_a_parameter_table() -> None:
    assert set(FAULT_PARAMS) == set(FaultKind)


def test_pack_spread_and_drive_cycle_arrays() -> None:
    scenario = load_scenario(SCENARIOS / "pack_96s_spread.yaml")
    assert scenario.cells.count == 96
    assert scenario.cells.spread.resistance_rel_std == 0.05
    drive = next(s for s in scenario.timeline if isinstance(s, DriveCycleSegment))
    cycle = drive.cycle
    assert cycle.signal == "power"
    assert np.all(np.diff(cycle.time_s) > 0)
    assert cycle.value.max() == pytest.approx(43249.505)  # kW in the file, W here
    assert cycle.duration_s == pytest.approx(1800.0)
    with pytest.raises(ValueError, match="read-only"):
        cycle.value[0] = 1.0


def test_sweep_and_repeat_structure() -> None:
    aging = load_scenario(SCENARIOS / "aging_sweep.yaml")
    sweep = aging.timeline[0]
    assert isinstance(sweep, Sweep)
    assert sweep.values == (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
    soc = load_scenario(SCENARIOS / "soc_sweep.yaml")
    assert isinstance(soc.timeline[2], Repeat)
    assert soc.timeline[2].count == 9


MINIMAL = """\
name: t
cells: {count: 12, profile: zhang2020}
timeline:
  - rest: {duration_s: 60}
"""


def _write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults(tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, MINIMAL))
    assert scenario.seed == 0
    assert scenario.step_rate_hz == 10.0
    assert scenario.ambient_temp_c == 25.0
    assert scenario.cells.temp_c == 25.0
    assert scenario.cells.soc == 1.0
    assert scenario.eis.mode == "instant"
    assert scenario.eis.interval_s == 60.0
    freqs = scenario.eis.frequencies_hz
    assert len(freqs) == 61
    assert freqs[0] == pytest.approx(1e4)
    assert freqs[-1] == pytest.approx(1e-2)


def test_scenario_hash_is_sha256_of_bytes(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL)
    assert scenario_hash(path) == hashlib.sha256(path.read_bytes()).digest()
    assert len(scenario_hash(path)) == 32


def test_fault_defaults_and_derived_seed(tmp_path: Path) -> None:
    text = MINIMAL + "faults:\n  - {kind: noise, start_s: 10}\n  - {kind: noise, start_s: 10}\n"
    a = load_scenario(_write(tmp_path, text))
    b = load_scenario(_write(tmp_path, text, "again.yaml"))
    assert a.faults[0].params == {"signal": "impedance", "snr_db": 40.0}
    assert a.faults[0].cells == tuple(range(12))
    assert a.faults[0].seed != a.faults[1].seed
    assert [f.seed for f in a.faults] == [f.seed for f in b.faults]


def test_all_errors_of_a_file_are_collected(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        name: t
        seed: -1
        cells: {count: 0, profile: zhang2020}
        timeline:
          - rest: {duration_s: -1}
          - constant_current: {current_a: fast, duration_s: 10}
        """,
    )
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    paths = [(e.line, e.path) for e in info.value.errors]
    assert paths == [
        (2, "seed"),
        (3, "cells.count"),
        (5, "timeline[0].rest.duration_s"),
        (6, "timeline[1].constant_current.current_a"),
    ]
    assert str(info.value).startswith("4 errors in scenario\n")
    assert f"{path}:5: timeline[0].rest.duration_s: expected a number in (0, 1000000000], got '-1'" in str(
        info.value
    )


@dataclass(frozen=True)
class Bad:
    id: str
    text: str
    line: int | None
    path: str
    message: str
    files: tuple[tuple[str, str], ...] = ()
    """Extra files next to the scenario (relative name, content)."""


def _deep(levels: int) -> str:
    return MINIMAL + "description: " + "[" * levels + "]" * levels + "\n"


CATALOGUE = [
    Bad(
        "wrong_type",
        "name: t\ncells: {count: many, profile: zhang2020}\ntimeline: [rest: {duration_s: 1}]\n",
        2,
        "cells.count",
        "expected an integer in [1, 4096], got 'many'",
    ),
    Bad(
        "negative_duration",
        MINIMAL.replace("duration_s: 60", "duration_s: -5"),
        4,
        "timeline[0].rest.duration_s",
        "expected a number in (0, 1000000000], got '-5'",
    ),
    Bad(
        "unknown_key_suggestion",
        MINIMAL.replace("duration_s: 60", "durration_s: 60"),
        4,
        "timeline[0].rest.durration_s",
        "unknown key 'durration_s' (did you mean 'duration_s'?)",
    ),
    Bad("unknown_top_key", MINIMAL + "sed: 3\n", 5, "sed", "unknown key 'sed' (did you mean 'seed'?)"),
    Bad(
        "missing_required_key",
        MINIMAL.replace("profile: zhang2020", "soc: 0.5"),
        2,
        "cells.profile",
        "missing required key",
    ),
    Bad("missing_timeline", "name: t\ncells: {profile: zhang2020}\n", 1, "timeline", "missing required key"),
    Bad(
        "bad_profile_name",
        MINIMAL.replace("zhang2020", '"zhang 2020!"'),
        2,
        "cells.profile",
        "expected a name of letters, digits, '_', '.', '-' (at most 64), got 'zhang 2020!'",
    ),
    Bad(
        "bad_condition_syntax",
        MINIMAL.replace("duration_s: 60", 'until: {voltage_v: "=< 3.0"}'),
        4,
        "timeline[0].rest.until.voltage_v",
        'expected a condition like "<= 3.0"',
    ),
    Bad(
        "condition_out_of_range",
        MINIMAL.replace("duration_s: 60", 'until: {soc: "<= 40"}'),
        4,
        "timeline[0].rest.until.soc",
        "threshold must be a number in [0, 1], got 40",
    ),
    Bad(
        "unknown_condition",
        MINIMAL.replace("duration_s: 60", 'until: {voltage: "<= 3"}'),
        4,
        "timeline[0].rest.until.voltage",
        "(did you mean 'voltage_v'?)",
    ),
    Bad(
        "fault_cell_out_of_range",
        MINIMAL + "faults:\n  - {kind: frozen, start_s: 1, cells: [3, 12]}\n",
        6,
        "faults[0].cells[1]",
        "cell index 12 out of range: cells are numbered 0..11 (cells.count = 12)",
    ),
    Bad(
        "unknown_fault_kind",
        MINIMAL + "faults:\n  - kind: contact_resistence\n    start_s: 1\n",
        6,
        "faults[0].kind",
        "unknown fault kind 'contact_resistence' (did you mean 'contact_resistance'?)",
    ),
    Bad(
        "fault_param_of_other_kind",
        MINIMAL + "faults:\n  - {kind: gain, start_s: 1, snr_db: 20}\n",
        6,
        "faults[0].snr_db",
        "unknown key 'snr_db'",
    ),
    Bad(
        "offset_unit_mismatch",
        MINIMAL + "faults:\n  - {kind: offset, start_s: 1, signal: voltage, offset_ohm: 0.1}\n",
        6,
        "faults[0].offset_ohm",
        "a voltage signal takes offset_v, not offset_ohm",
    ),
    Bad(
        "transport_fault_with_cells",
        MINIMAL + "faults:\n  - {kind: drop_frames, start_s: 1, cells: [1]}\n",
        6,
        "faults[0].cells",
        "unknown key 'cells'",
    ),
    Bad(
        "fault_start_unknown_label",
        MINIMAL.replace("duration_s: 60", "duration_s: 60, label: soak")
        + "faults:\n  - {kind: nan, start: {segment: sok}}\n",
        6,
        "faults[0].start.segment",
        "no segment has label 'sok' (did you mean 'soak'?)",
    ),
    Bad(
        "fault_end_before_start",
        MINIMAL + "faults:\n  - {kind: nan, start_s: 100, end_s: 50}\n",
        6,
        "faults[0].end_s",
        "expected end_s after start_s (100), got 50",
    ),
    Bad("yaml_anchor_refused", MINIMAL + "description: &d hello\n", 5, "", "YAML anchor '&d' is not allowed"),
    Bad(
        "billion_laughs", 'a: &a ["lol", "lol"]\nb: [*a, *a, *a]\n', 1, "", "YAML anchor '&a' is not allowed"
    ),
    Bad("too_deep", _deep(40), 5, "", "nesting deeper than 24 levels"),
    Bad("too_large", MINIMAL + "#" * (1 << 20) + "\n", None, "", "file larger than 1048576 bytes"),
    Bad(
        "drive_cycle_escapes_dir",
        MINIMAL.replace("rest: {duration_s: 60}", "drive_cycle: {cycle: ../outside.csv, signal: current}"),
        4,
        "timeline[0].drive_cycle.cycle",
        "drive cycle path '../outside.csv' leaves the scenario's directory",
    ),
    Bad(
        "drive_cycle_absolute_path",
        MINIMAL.replace("rest: {duration_s: 60}", "drive_cycle: {cycle: /etc/x.csv, signal: current}"),
        4,
        "timeline[0].drive_cycle.cycle",
        "expected a path relative to the scenario's directory",
    ),
    Bad(
        "drive_cycle_missing_file",
        MINIMAL.replace("rest: {duration_s: 60}", "drive_cycle: {cycle: cycles/none.csv, signal: current}"),
        4,
        "timeline[0].drive_cycle.cycle",
        "drive cycle file not found: {dir}/cycles/none.csv",
    ),
    Bad(
        "drive_cycle_bad_scale",
        MINIMAL.replace("rest: {duration_s: 60}", "drive_cycle: {cycle: US06, scale: fast}"),
        4,
        "timeline[0].drive_cycle.scale",
        "expected a number > 0, got 'fast'",
    ),
    Bad(
        "unknown_bundled_cycle",
        MINIMAL.replace("rest: {duration_s: 60}", "drive_cycle: {cycle: US6}"),
        4,
        "timeline[0].drive_cycle.cycle",
        "unknown drive cycle 'US6' (did you mean 'US06'?)",
    ),
    Bad(
        "bundled_cycle_wrong_signal",
        MINIMAL.replace("rest: {duration_s: 60}", "drive_cycle: {cycle: WLTC, signal: current}"),
        4,
        "timeline[0].drive_cycle.signal",
        "bundled cycle WLTC is a power profile",
    ),
    Bad(
        "drive_cycle_time_not_increasing",
        MINIMAL.replace("rest: {duration_s: 60}", "drive_cycle: {cycle: c.csv, signal: power}"),
        4,
        "timeline[0].drive_cycle.cycle",
        "time must increase strictly (1 after 2)",
        files=(("c.csv", "# time_s,power_w\n0,1\n2,1\n1,1\n"),),
    ),
    Bad(
        "malformed_yaml",
        "name: t\ncells: {count: 2, profile: zhang2020\ntimeline: []\n",
        3,
        "",
        "YAML syntax error",
    ),
    Bad("duplicate_key", MINIMAL + "name: u\n", 5, "name", "duplicate key (first given on line 1)"),
    Bad("empty_file", "# nothing here\n", None, "", "empty file"),
    Bad(
        "not_a_mapping",
        "- rest: {duration_s: 1}\n",
        1,
        "",
        "expected a mapping (key: value lines), got a list",
    ),
    Bad(
        "unknown_segment_kind",
        MINIMAL.replace("rest:", "reset:"),
        4,
        "timeline[0].reset",
        "unknown segment kind 'reset' (did you mean 'rest'?)",
    ),
    Bad(
        "segment_without_end",
        MINIMAL.replace("rest: {duration_s: 60}", "constant_current: {current_a: 1}"),
        4,
        "timeline[0].constant_current",
        "needs duration_s or until",
    ),
    Bad(
        "cutoff_above_charge_current",
        MINIMAL.replace(
            "rest: {duration_s: 60}", "cc_cv_charge: {current_a: 0.1, voltage_v: 4.2, cutoff_current_a: 0.2}"
        ),
        4,
        "timeline[0].cc_cv_charge.cutoff_current_a",
        "expected a cut-off below the charge current (0.1 A)",
    ),
    Bad(
        "too_many_eis_points",
        MINIMAL + "eis: {frequencies: {min_hz: 0.001, max_hz: 1000000, points_per_decade: 60}}\n",
        5,
        "eis.frequencies",
        "at most 337 fit in one spectrum frame",
    ),
    Bad(
        "repeat_explosion",
        MINIMAL.replace(
            "rest: {duration_s: 60}",
            "repeat: {count: 1000, segments: [repeat: {count: 1001, segments: [rest: {duration_s: 1}]}]}",
        ),
        4,
        "timeline",
        "expands to 1e+06 segments (limit 1000000)",
    ),
    Bad(
        "python_tag_refused",
        MINIMAL + "description: !!python/object:os.system echo\n",
        5,
        "description",
        "YAML tag 'tag:yaml.org,2002:python/object:os.system' is not allowed",
    ),
    Bad(
        "nan_number",
        MINIMAL + "step_rate_hz: .nan\n",
        5,
        "step_rate_hz",
        "expected a number in (0, 10000], got '.nan'",
    ),
    Bad("bool_is_not_a_number", MINIMAL + "seed: yes\n", 5, "seed", "expected an integer in [0, "),
]


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda c: c.id)
def test_bad_input_catalogue(tmp_path: Path, case: Bad) -> None:
    scenario_dir = tmp_path / "scenarios"
    scenario_dir.mkdir()
    (tmp_path / "outside.csv").write_text("0,1\n1,1\n")
    for name, content in case.files:
        (scenario_dir / name).write_text(content)
    path = scenario_dir / "bad.yaml"
    path.write_text(case.text)
    issues = validate_files([path])
    message = case.message.format(dir=scenario_dir.resolve())
    matching = [i for i in issues if i.path == case.path and message in i.message]
    assert matching, f"no issue at {case.path!r} containing {message!r}; got:\n" + "\n".join(map(str, issues))
    issue = matching[0]
    if case.files:
        # errors inside a referenced CSV name that file and its line
        assert issue.file == str((scenario_dir / case.files[0][0]).resolve())
    else:
        assert issue.file == str(path)
    assert issue.line == case.line
    with pytest.raises(ScenarioError):
        load_scenario(path)


def test_catalogue_is_large_enough() -> None:
    assert len(CATALOGUE) >= 15


def test_issue_str() -> None:
    assert str(Issue("a.yaml", 3, "timeline[0].rest", "boom")) == "a.yaml:3: timeline[0].rest: boom"
    assert str(Issue("a.yaml", None, "", "empty file")) == "a.yaml: empty file"


def test_missing_scenario_file(tmp_path: Path) -> None:
    issues = validate_files([tmp_path / "nope.yaml"])
    assert len(issues) == 1
    assert "cannot read scenario" in issues[0].message
