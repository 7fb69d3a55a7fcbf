"""The equivalent circuit of ``hil_server.model.circuit`` in the time domain, vectorised over cells.

Approximations (documented in the package docstring too):

- ``L || R_L``: at the step rate (<= 10 kHz) ``w tau_L << 1``, so the element is ``~ jwL ~ 0``; it carries
  no DC voltage and is left out of the time-domain voltage.
- ZARC ``R / (1 + (jw tau)^a)``: one RC branch with the same R and tau (exact for a = 1). It keeps the DC
  resistance and the characteristic time; a < 1 spreads the relaxation over a wider band, which a single RC
  makes slightly too sharp around tau.
- Finite-space Warburg ``R_W coth(s)/s``: for phi = 0.5 its exact partial-fraction expansion is
  ``R_W / (jw tau_W) + sum_k 2 R_W / (k^2 pi^2) / (1 + jw tau_W / (k^2 pi^2))``. The first term is the
  capacitance ``tau_W / R_W`` that stores charge, i.e. the SOC change: the OCV curve already represents it,
  so it is not integrated twice. The ladder keeps k = 1..3 as RC branches and adds the rest of
  ``R_W / 3`` (the DC diffusion resistance) to the instantaneous resistance. phi != 0.5 uses the same ladder.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from hil_server.model.circuit import P

F64 = npt.NDArray[np.float64]

LADDER_TERMS = 3
_K2PI2 = (np.arange(1, LADDER_TERMS + 1) ** 2) * np.pi**2
LADDER_R = 2.0 / _K2PI2
"""Branch resistances as fractions of R_W."""
LADDER_TAU = 1.0 / _K2PI2
"""Branch time constants as fractions of tau_W."""
LADDER_REST = 1.0 / 3.0 - float(LADDER_R.sum())
"""Fraction of R_W left over by the truncated ladder, added to the instantaneous resistance."""
N_BRANCHES = 2 + LADDER_TERMS


def time_domain(params: F64) -> tuple[F64, F64, F64]:
    """(r_inst (n,), r_branch (n, B), tau_branch (n, B)) for params (n, 12)."""
    r_inst = params[:, P.R0] + LADDER_REST * params[:, P.R_W]
    r_b = np.empty((params.shape[0], N_BRANCHES))
    tau_b = np.empty_like(r_b)
    r_b[:, 0] = params[:, P.R1]
    tau_b[:, 0] = params[:, P.TAU1]
    r_b[:, 1] = params[:, P.R2]
    tau_b[:, 1] = params[:, P.TAU2]
    r_b[:, 2:] = params[:, P.R_W, None] * LADDER_R
    tau_b[:, 2:] = params[:, P.TAU_W, None] * LADDER_TAU
    return r_inst, r_b, tau_b


def dc_resistance(params: F64) -> F64:
    """The resistance seen by a slow current (every branch settled): R0 + R1 + R2 + R_W / 3."""
    out: F64 = params[:, P.R0] + params[:, P.R1] + params[:, P.R2] + params[:, P.R_W] / 3.0
    return out
