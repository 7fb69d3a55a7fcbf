"""Where the circuit parameters come from: a fixed table with simple dependences, or the trained PINN."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from hil_server.model.circuit import N_PARAMS, P
from hil_server.model.constants import KELVIN, T_REF_K
from hil_server.model.profiles import cell_latent

from .profiles import PROFILES, CellProfile, OperatingRange

F64 = npt.NDArray[np.float64]
GAS_CONSTANT_J_PER_MOL_K = 8.314462618


@runtime_checkable
class CircuitSource(Protocol):
    """Circuit parameters (n, 12) in physical units (``circuit.P``) for n operating points of one profile."""

    def params(self, profile: str, soc: F64, temp_c: F64, soh: F64) -> F64: ...

    def input_range(self, profile: str) -> OperatingRange | None:
        """The range the source is valid in (None = unknown); outside it cells are flagged EXTRAPOLATED."""
        ...


class FixedCircuitSource:
    """A typical circuit per profile with documented, deliberately simple dependences:

    - temperature: R0, R1, R2, R_W times ``exp(Ea/R (1/T - 1/T_ref))`` (Ea per element, ``CellProfile``);
      tau1 and tau2 scale with R1 and R2 (constant capacitances); tau_W with R_W's Arrhenius factor (1/D);
    - SOC: R2 and R_W rise towards empty, ``1 + 0.8 exp(-soc / 0.1)``; R2 also ``+ 0.3 (soc - 0.5)^2``;
    - SOH: every resistance times ``1 + 2 (1 - soh)`` (R1, the SEI, ``1 + 3 (1 - soh)``).

    ``input_range`` returns the profile's trained range so the flags match what the PINN would report.
    """

    def __init__(
        self, profiles: Mapping[str, CellProfile] | None = None, *, with_ranges: bool = True
    ) -> None:
        self._profiles = dict(PROFILES if profiles is None else profiles)
        self._with_ranges = with_ranges

    def profile(self, name: str) -> CellProfile:
        try:
            return self._profiles[name]
        except KeyError:
            raise ValueError(
                f"unknown profile {name!r} (known: {', '.join(sorted(self._profiles))})"
            ) from None

    def params(self, profile: str, soc: F64, temp_c: F64, soh: F64) -> F64:
        prof = self.profile(profile)
        n = np.shape(soc)[0]
        out = np.empty((n, N_PARAMS))
        out[:] = prof.params_25c
        inv_t = 1.0 / (np.asarray(temp_c) + KELVIN) - 1.0 / T_REF_K
        ea0, ea1, ea2, eaw = prof.activation_j_per_mol
        k = 1.0 / GAS_CONSTANT_J_PER_MOL_K
        aged = 1.0 + 2.0 * (1.0 - soh)
        low_soc = 1.0 + 0.8 * np.exp(-soc / 0.1)
        f0 = np.exp(ea0 * k * inv_t) * aged
        f1 = np.exp(ea1 * k * inv_t) * (1.0 + 3.0 * (1.0 - soh))
        f2 = np.exp(ea2 * k * inv_t) * aged * (low_soc + 0.3 * (soc - 0.5) ** 2)
        fw = np.exp(eaw * k * inv_t) * aged * low_soc
        out[:, P.R0] *= f0
        out[:, P.R_L] *= f0
        out[:, P.R1] *= f1
        out[:, P.TAU1] *= f1
        out[:, P.R2] *= f2
        out[:, P.TAU2] *= f2
        out[:, P.R_W] *= fw
        out[:, P.TAU_W] *= np.exp(eaw * k * inv_t)
        return out

    def input_range(self, profile: str) -> OperatingRange | None:
        return self.profile(profile).trained_range if self._with_ranges else None


class PinnModel(Protocol):
    """The planned ``NumpyPinn`` API (``hil_server/model/runtime.py``): only these two members are used."""

    @property
    def profiles(self) -> Sequence[str]: ...

    def params(self, profile_idx: int, op: npt.ArrayLike, latent: npt.ArrayLike | None = None) -> F64: ...


class PinnCircuitSource:
    """Adapts a PINN runtime: ``op`` rows are ``[soc, temp_c, soh]``. ``latents`` maps calibrated profile
    names to (base profile, log-offsets) or (base profile, log-offsets, aging rate); what they add at each
    SOH is ``model.profiles.cell_latent``, the definition ``eis-hil spectrum`` uses too. A built-in profile
    is its typical cell (offset 0). ``input_ranges`` comes from the model metadata if known."""

    def __init__(
        self,
        model: PinnModel,
        *,
        input_ranges: Mapping[str, OperatingRange] | None = None,
        latents: Mapping[
            str, tuple[str, Sequence[float]] | tuple[str, Sequence[float], Sequence[float] | None]
        ]
        | None = None,
    ) -> None:
        self._model = model
        self._ranges = dict(input_ranges or {})
        self._latents: dict[str, tuple[str, F64, F64 | None]] = {}
        for name, entry in (latents or {}).items():
            rate = entry[2] if len(entry) > 2 else None
            self._latents[name] = (
                entry[0],
                np.asarray(entry[1], dtype=np.float64),
                None if rate is None else np.asarray(rate, dtype=np.float64),
            )

    def _resolve(self, profile: str) -> tuple[int, tuple[F64, F64 | None] | None, str]:
        base, cell = profile, None
        if profile in self._latents:
            base, offset, rate = self._latents[profile]
            cell = (offset, rate)
        names = list(self._model.profiles)
        if base not in names:
            raise ValueError(f"unknown profile {profile!r} (the model knows: {', '.join(names)})")
        return names.index(base), cell, base

    def params(self, profile: str, soc: F64, temp_c: F64, soh: F64) -> F64:
        idx, cell, _ = self._resolve(profile)
        op = np.column_stack([soc, temp_c, soh])
        latent: F64 | None = None
        if cell is not None:
            offset, rate = cell
            latent = offset if rate is None else cell_latent(offset, rate, op[:, 2])
        out = np.asarray(self._model.params(idx, op, latent), dtype=np.float64)
        if out.shape != (op.shape[0], N_PARAMS):
            raise ValueError(f"PINN returned shape {out.shape}, expected {(op.shape[0], N_PARAMS)}")
        return out

    def input_range(self, profile: str) -> OperatingRange | None:
        _, _, base = self._resolve(profile)
        return self._ranges.get(profile, self._ranges.get(base))
