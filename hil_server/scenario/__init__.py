"""Scenario files: the YAML format of ``scenarios/README.md``, loaded into typed frozen dataclasses.

``load_scenario`` checks everything a run needs (including drive-cycle files) and raises ScenarioError listing
every problem with file, line and key path; ``validate_files`` returns the same problems without raising.
"""

from __future__ import annotations

from ._drive_cycles import BUNDLED as BUNDLED_DRIVE_CYCLES
from ._drive_cycles import BUNDLED_DIR as DRIVE_CYCLES_DIR
from ._errors import Issue, ScenarioError
from ._faults import PARAMS as FAULT_PARAMS
from ._faults import SIGNAL_UNIT, STREAM_KINDS, UNIT_PARAM_PREFIX, kind_name
from ._loader import load_edited, load_scenario, scenario_hash, validate_files
from ._model import (
    Ambient,
    CcCvCharge,
    Cells,
    Condition,
    ConstantCurrent,
    ConstantPower,
    DriveCycle,
    DriveCycleSegment,
    EisRequest,
    EisSchedule,
    Fault,
    MeasuredEis,
    Repeat,
    Rest,
    Scenario,
    Segment,
    Soh,
    Spread,
    Sweep,
    Until,
)

__all__ = [
    "BUNDLED_DRIVE_CYCLES",
    "DRIVE_CYCLES_DIR",
    "FAULT_PARAMS",
    "SIGNAL_UNIT",
    "STREAM_KINDS",
    "UNIT_PARAM_PREFIX",
    "Ambient",
    "CcCvCharge",
    "Cells",
    "Condition",
    "ConstantCurrent",
    "ConstantPower",
    "DriveCycle",
    "DriveCycleSegment",
    "EisRequest",
    "EisSchedule",
    "Fault",
    "Issue",
    "MeasuredEis",
    "Repeat",
    "Rest",
    "Scenario",
    "ScenarioError",
    "Segment",
    "Soh",
    "Spread",
    "Sweep",
    "Until",
    "kind_name",
    "load_edited",
    "load_scenario",
    "scenario_hash",
    "validate_files",
]
