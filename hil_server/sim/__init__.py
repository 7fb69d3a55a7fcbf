"""Cell and pack simulation: the scenario engine behind the HIL stream.

``Engine(scenario, source, seed)`` turns a loaded scenario into a deterministic sequence of ``StepOutput``:
cell states (true and as reported), spectra, sweep points, fault events and the active stream faults.

Cell model (vectorised over cells):

- SOC by coulomb counting, capacity = nominal x SOH (the spread's capacity factor is folded into SOH, so the
  reported SOH is capacity / nominal). An internal short adds ``V / R_short`` to the coulomb count only.
- Terminal voltage ``V = OCV(SOC) - R_inst I - sum(v_k)`` with the circuit of ``model.circuit`` in the time
  domain (``cell.py``): R0 plus the DC rest of the Warburg ladder instantaneous, L||R_L left out (~jwL ~ 0 at
  the step rate), each ZARC one RC with its tau and R (the CPE exponent is ignored), the finite-space
  Warburg its 3-term RC ladder (exact pole expansion for phi = 0.5; its capacitive term is the OCV's job).
  Each branch uses the exact exponential step ``v = v e^(-dt/tau) + R (1 - e^(-dt/tau)) I``.
  The parameters are re-evaluated when SOC, temperature or SOH moved beyond a tolerance (default 0.002,
  0.1 K, 0.0005); spectra always use the exact operating point.
- Lumped thermal model ``C dT/dt = Q - hA (T - T_amb)``, stepped exactly for constant Q over the step, with
  Q = Joule heat in R_inst and every branch resistor (+ short, + injected extra heat); no entropic term.
- Positive current = discharge. A series string: every cell carries the same current (constant power
  and CV solve for it), except cells under a ``set_load_current`` override.

Profiles (``profiles.py``; ``CellProfile`` lists each number and its source):

| profile | capacity | window | OCV | C (J/K) | hA (W/K) | I max |
|---|---|---|---|---|---|---|
| zhang2020 | 45 mAh (data README) | 3.0-4.2 V | generic LCO/graphite, to be replaced | 3 | 0.008 | 0.135 A |
| rashid2023 | 2.5 Ah (assumed) | 2.75-4.2 V | generic NMC, to be replaced | 40 | 0.042 | 10 A |

Thermal constants are estimates from cell mass and surface with natural convection (assumptions).

Limits (defined behaviour): a load segment ends when a discharging cell reaches the lower cut-off
(``cutoff_low``), a constant-current charge when a cell reaches the upper one (``cutoff_high``), any load
segment when a cell reaches the profile's maximum temperature. Charge pulses of drive cycles and
constant power are limited so no cell exceeds the upper voltage (VOLTAGE_HIGH_LIMIT flag). CC-CV: CC until
the highest cell would exceed the voltage, then CV (the current solved each step), ends at the cut-off
current. Currents beyond the profile's maximum are clipped (CURRENT_LIMIT). EXTRAPOLATED: the operating
point lies outside the source's trained range.
"""

from __future__ import annotations

from .cell import LADDER_REST, N_BRANCHES, dc_resistance, time_domain
from .engine import INJECTED_ID_BASE, Engine
from .output import CellColumns, FaultEvent, SegmentEvent, Spectrum, StepOutput, StreamFault, SweepPoints
from .profiles import PROFILES, CellProfile, OperatingRange
from .source import CircuitSource, FixedCircuitSource, PinnCircuitSource, PinnModel

__all__ = [
    "INJECTED_ID_BASE",
    "LADDER_REST",
    "N_BRANCHES",
    "PROFILES",
    "CellColumns",
    "CellProfile",
    "CircuitSource",
    "Engine",
    "FaultEvent",
    "FixedCircuitSource",
    "OperatingRange",
    "PinnCircuitSource",
    "PinnModel",
    "SegmentEvent",
    "Spectrum",
    "StepOutput",
    "StreamFault",
    "SweepPoints",
    "dc_resistance",
    "time_domain",
]
