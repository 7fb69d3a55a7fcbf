"""Per-profile constants of the cell model: OCV curve, capacity, limits, thermal constants, a typical circuit.

Every number here is documented with its source or marked as an assumption; see the package docstring.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hil_server.model.circuit import N_PARAMS, P

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class OperatingRange:
    """The operating points a model was trained on; outside it a spectrum is an extrapolation."""

    soc: tuple[float, float]
    temp_c: tuple[float, float]
    soh: tuple[float, float]

    def outside(self, soc: F64, temp_c: F64, soh: F64) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = (
            (soc < self.soc[0])
            | (soc > self.soc[1])
            | (temp_c < self.temp_c[0])
            | (temp_c > self.temp_c[1])
            | (soh < self.soh[0])
            | (soh > self.soh[1])
        )
        return out


@dataclass(frozen=True)
class CellProfile:
    name: str
    capacity_ah: float
    ocv_soc: tuple[float, ...]
    """Ascending SOC table points; OCV is linearly interpolated, and extrapolated with the end slopes."""
    ocv_v: tuple[float, ...]
    ocv_source: str
    voltage_min_v: float
    voltage_max_v: float
    current_max_a: float
    """Magnitude limit for charge and discharge; a larger request is clipped and flagged CURRENT_LIMIT."""
    temp_min_c: float
    temp_max_c: float
    heat_capacity_j_per_k: float
    convection_w_per_k: float
    thermal_source: str
    params_25c: tuple[float, ...]
    """Typical circuit at 25 C, SOC 0.5, SOH 1 (layout ``circuit.P``): FixedCircuitSource's base."""
    activation_j_per_mol: tuple[float, float, float, float]
    """Arrhenius activation energies of R0, R1, R2 and R_W (the Warburg also scales tau_W, as 1/D)."""
    trained_range: OperatingRange | None

    @functools.cached_property
    def _ocv_table(self) -> tuple[F64, F64]:
        xs = np.asarray(self.ocv_soc)
        ys = np.asarray(self.ocv_v)
        lo_slope = (ys[1] - ys[0]) / (xs[1] - xs[0])
        hi_slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        # beyond the table an over-discharged or overcharged cell keeps moving in the same direction (end
        # slopes), so a cut-off is always reached rather than the voltage sticking at the table end
        xs_ext = np.concatenate([[xs[0] - 10.0], xs, [xs[-1] + 10.0]])
        ys_ext = np.concatenate([[ys[0] - 10.0 * lo_slope], ys, [ys[-1] + 10.0 * hi_slope]])
        return xs_ext, ys_ext

    def ocv_v_at(self, soc: F64) -> F64:
        xs, ys = self._ocv_table
        out: F64 = np.interp(soc, xs, ys)
        return out


def _params(**values: float) -> tuple[float, ...]:
    out = [0.0] * N_PARAMS
    for key, value in values.items():
        out[P[key]] = value
    return tuple(out)


# Generic LiCoO2/graphite curve (shape as in common LCO datasheets, e.g. coin cells cycled 3.0-4.2 V);
# not measured on the zhang2020 cells: to be replaced by a pseudo-OCV from the raw cycling data.
_LCO_SOC = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_LCO_V = (3.00, 3.40, 3.55, 3.64, 3.71, 3.76, 3.80, 3.85, 3.91, 3.97, 4.04, 4.11, 4.15, 4.20)
# Generic NMC/graphite 18650 curve for a 2.75-4.2 V window; an assumption for the rashid2023 cells.
_NMC_SOC = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_NMC_V = (2.75, 3.20, 3.38, 3.48, 3.56, 3.62, 3.67, 3.73, 3.81, 3.90, 3.98, 4.07, 4.13, 4.20)

PROFILES: dict[str, CellProfile] = {
    "zhang2020": CellProfile(
        name="zhang2020",
        capacity_ah=0.045,
        ocv_soc=_LCO_SOC,
        ocv_v=_LCO_V,
        ocv_source="generic LiCoO2/graphite curve, to be replaced by one measured on the Eunicell LR2032",
        voltage_min_v=3.0,
        voltage_max_v=4.2,
        current_max_a=0.135,
        temp_min_c=-20.0,
        temp_max_c=60.0,
        # LR2032: about 3 g at ~1 J/(g K); 10 W/(m2 K) natural convection on ~8 cm2 of can
        heat_capacity_j_per_k=3.0,
        convection_w_per_k=0.008,
        thermal_source="estimate from coin-cell mass and surface, natural convection (assumption)",
        params_25c=_params(
            R0=0.40,
            R_L=0.05,
            TAU_L=1e-6,
            R1=0.15,
            TAU1=2e-4,
            A1=0.85,
            R2=0.50,
            TAU2=0.02,
            A2=0.8,
            R_W=1.5,
            TAU_W=200.0,
            PHI_W=0.45,
        ),
        activation_j_per_mol=(15e3, 45e3, 55e3, 30e3),
        trained_range=OperatingRange(soc=(0.0, 1.0), temp_c=(25.0, 45.0), soh=(0.239, 1.0)),
    ),
    "rashid2023": CellProfile(
        name="rashid2023",
        capacity_ah=2.5,
        ocv_soc=_NMC_SOC,
        ocv_v=_NMC_V,
        ocv_source="generic NMC/graphite 18650 curve (assumption: the data has no OCV), to be replaced",
        voltage_min_v=2.75,
        voltage_max_v=4.2,
        current_max_a=10.0,
        temp_min_c=-20.0,
        temp_max_c=60.0,
        # 18650: about 45 g at ~0.9 J/(g K); 10 W/(m2 K) on 42 cm2
        heat_capacity_j_per_k=40.0,
        convection_w_per_k=0.042,
        thermal_source="estimate from 18650 mass and surface, natural convection (assumption)",
        params_25c=_params(
            R0=0.035,
            R_L=0.005,
            TAU_L=1e-6,
            R1=0.008,
            TAU1=5e-4,
            A1=0.85,
            R2=0.02,
            TAU2=0.05,
            A2=0.8,
            R_W=0.03,
            TAU_W=300.0,
            PHI_W=0.45,
        ),
        activation_j_per_mol=(15e3, 45e3, 55e3, 30e3),
        trained_range=OperatingRange(soc=(0.05, 0.95), temp_c=(15.0, 35.0), soh=(0.8046, 1.0)),
    ),
}
"""Trained ranges copied from ``model/bundled/metadata.json`` (``input_ranges``)."""
