"""Constants of the PINN shared by the Keras model (``pinn.py``) and the numpy runtime (``runtime.py``).

Kept apart from ``pinn.py`` because that module imports Keras, and the runtime must not."""

from __future__ import annotations

from typing import Final

from .circuit import P

T_REF_K: Final = 298.15
KELVIN: Final = 273.15
LOG_MIN: Final = -25.0
LOG_MAX: Final = 12.0
ARRHENIUS: Final = (P.R0, P.R1, P.R2, P.R_W, P.TAU1)
"""Parameters with their own activation energy, in this order in the activation table."""
GAPS: Final = (P.TAU2, P.TAU_W)
