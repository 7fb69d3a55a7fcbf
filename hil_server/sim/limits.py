"""Scenario values beyond the simulated cell's limits: errors with the scenario's file and line.

The scenario loader checks each key on its own (``current_a`` within ±1000 A for every cell); only here,
with the cell's constants (``profiles.PROFILES``), is 1000 A on a 45 mAh coin cell known to be nonsense.
The engine would clamp it to ``current_max_a`` and stream something else than the file says, so
``validate``, ``run`` and ``serve`` refuse it instead.

What stays a run-time clamp, flagged in CELL_STATES (``CURRENT_LIMIT``, ``VOLTAGE_HIGH_LIMIT``) and
documented in scenarios/README.md: drive cycles and constant power, whose current depends on the state of
the cell, and CONTROL load currents.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..scenario import CcCvCharge, ConstantCurrent, ConstantPower, Issue, Repeat, Scenario, Segment, Sweep
from .profiles import CellProfile


def _segments(segments: tuple[Segment, ...]) -> Iterator[Segment]:
    for seg in segments:
        yield seg
        if isinstance(seg, Repeat | Sweep):
            yield from _segments(seg.segments)


def limit_issues(scenario: Scenario, profile: CellProfile) -> list[Issue]:
    """Every segment whose set value the cell ``profile`` cannot take, as Issues (file, line, key)."""
    file = str(scenario.source)
    i_max = profile.current_max_a
    cell = f"the {profile.name} cell's limit ({profile.capacity_ah * 1000:g} mAh"
    issues: list[Issue] = []
    for seg in _segments(scenario.timeline):
        if isinstance(seg, ConstantCurrent) and abs(seg.current_a) > i_max:
            issues.append(
                Issue(
                    file,
                    seg.line,
                    "constant_current.current_a",
                    f"{seg.current_a:g} A is beyond {cell}, at most {i_max:g} A)",
                )
            )
        elif isinstance(seg, CcCvCharge):
            if seg.current_a > i_max:
                issues.append(
                    Issue(
                        file,
                        seg.line,
                        "cc_cv_charge.current_a",
                        f"{seg.current_a:g} A is beyond {cell}, at most {i_max:g} A)",
                    )
                )
            lo, hi = profile.voltage_min_v, profile.voltage_max_v
            if not lo < seg.voltage_v <= hi:
                issues.append(
                    Issue(
                        file,
                        seg.line,
                        "cc_cv_charge.voltage_v",
                        f"{seg.voltage_v:g} V is outside the {profile.name} cell's range ({lo:g}, {hi:g}] V",
                    )
                )
        elif isinstance(seg, ConstantPower):
            p_max = i_max * profile.voltage_max_v
            if abs(seg.power_w) > p_max:
                issues.append(
                    Issue(
                        file,
                        seg.line,
                        "constant_power.power_w",
                        f"{seg.power_w:g} W is beyond {cell}: {i_max:g} A at {profile.voltage_max_v:g} V "
                        f"is {p_max:g} W)",
                    )
                )
    return issues


__all__ = ["limit_issues"]
