#!/usr/bin/env python3
"""Regenerate the simulated EIS source: PyBaMM frequency-domain EIS of an LG M50 cell (Chen2020).

    .venv/bin/pip install 'pybamm>=26.10'        # the simdata extra; not a runtime dependency
    .venv/bin/python tools/gen_pybamm_eis.py     # hil_server/eis_data/simulated/pybamm_chen2020.{npz,json}

Model: DFN with a double layer ("surface form": "differential", needed for EIS) and PyBaMM's lumped contact
resistance ("contact resistance": "true"), isothermal at the grid temperature. Parameters: Chen2020 (LG M50),
except the transport properties, which in Chen2020 do not depend on temperature; they are replaced by the
Arrhenius versions of the same LG M50 functions from OKane2022 (electrolyte: Nyman2008 with Ecker2015's
activation energy, 17 kJ/mol; graphite diffusivity 30.3 kJ/mol after Ecker2015; NMC diffusivity 25 kJ/mol).
Without that, only the exchange-current densities change with temperature and the electrolyte (ohmic) part of
the spectrum would be the same at -20 C and at 50 C.

Deterministic: the same PyBaMM version gives the same spectra, and the .npz bytes are reproducible. Progress
on stderr; the summary (plausibility and temperature figures, also in the JSON sidecar) on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from hil_server.eis_data import Spectrum, SpectrumSet, save_npz
from hil_server.eis_data._simulated import (
    SIMULATED_CELL,
    SIMULATED_DIR,
    SIMULATED_PROFILE,
    SIMULATED_SOURCE,
    sidecar_path,
)
from hil_server.model.evaluate import FIXED_M
from hil_server.model.linkk import lin_kk

_log = structlog.get_logger("gen_pybamm_eis")

# 10 kHz .. 10 mHz, 10 points per decade: the band and density of rashid2023 (zhang2020: 20 kHz .. 20 mHz).
FREQ_HZ = np.logspace(4.0, -2.0, 61)
SOC_GRID = tuple(round(0.05 * k, 2) for k in range(1, 21))  # 0.05 .. 1.00
TEMP_GRID_C = tuple(float(t) for t in range(-20, 55, 5))  # -20 .. 50 C
# PyBaMM's DFN covers electrolyte, electrodes and interfaces, not the tabs, current collectors to terminal,
# can and welds, so its high-frequency intercept (2.8 mOhm at 25 C) is far below any measured 21700 cell.
# Measured cylindrical cells of a few Ah sit in the tens of mOhm (e.g. Gamry, "Low impedance batteries and the
# Interface 5000E"); 15 mOhm lifts the 25 C intercept to about 18 mOhm. An assumption, not an LG M50 fit.
CONTACT_RESISTANCE_OHM = 0.015
MODEL_OPTIONS = {"surface form": "differential", "contact resistance": "true"}
ARRHENIUS_OVERRIDES = {
    "Electrolyte conductivity [S.m-1]": "electrolyte_conductivity_Nyman2008_arrhenius",
    "Electrolyte diffusivity [m2.s-1]": "electrolyte_diffusivity_Nyman2008_arrhenius",
    "Negative particle diffusivity [m2.s-1]": "graphite_LGM50_diffusivity_Chen2020",
    "Positive particle diffusivity [m2.s-1]": "nmc_LGM50_diffusivity_Chen2020",
}
REFERENCES = [
    "Chen, C.-H., Brosa Planella, F., O'Regan, K., Gastol, D., Widanage, W. D., Kendrick, E. Development of "
    "experimental techniques for parameterization of multi-scale lithium-ion battery models. J. Electrochem. "
    "Soc. 167, 080534 (2020), doi:10.1149/1945-7111/ab9050 (parameter set Chen2020, LG M50)",
    "O'Kane, S. E. J. et al. Lithium-ion battery degradation: how to model it. Phys. Chem. Chem. Phys. 24, "
    "7909-7922 (2022), doi:10.1039/D2CP00417H (Arrhenius transport functions, parameter set OKane2022)",
    "Ecker, M. et al. Parameterization of a physico-chemical model of a lithium-ion battery I. "
    "J. Electrochem. Soc. 162, A1836 (2015), doi:10.1149/2.0551509jes (activation energies)",
    "Sulzer, V., Marquis, S. G., Timms, R., Robinson, M., Chapman, S. J. Python Battery Mathematical "
    "Modelling (PyBaMM). J. Open Res. Softw. 9, 14 (2021), doi:10.5334/jors.309",
]


def _parameter_values(pybamm: Any, temp_c: float) -> Any:
    okane2022 = importlib.import_module("pybamm.input.parameters.lithium_ion.OKane2022")
    values = pybamm.ParameterValues("Chen2020")
    values.update({key: getattr(okane2022, name) for key, name in ARRHENIUS_OVERRIDES.items()})
    kelvin = 273.15 + temp_c
    values.update(
        {
            "Ambient temperature [K]": kelvin,
            "Initial temperature [K]": kelvin,
            "Contact resistance [Ohm]": CONTACT_RESISTANCE_OHM,
        }
    )
    return values


def simulate(socs: tuple[float, ...], temps_c: tuple[float, ...]) -> list[Spectrum]:
    pybamm = importlib.import_module("pybamm")  # optional (simdata extra), untyped
    pybamm.set_logging_level("ERROR")
    spectra: list[Spectrum] = []
    started = time.monotonic()
    for k, temp_c in enumerate(temps_c):
        model = pybamm.lithium_ion.DFN(options=dict(MODEL_OPTIONS))
        sim = pybamm.EISSimulation(model, parameter_values=_parameter_values(pybamm, temp_c))
        for soc in socs:
            z = np.asarray(sim.solve(FREQ_HZ, initial_soc=soc).impedance, dtype=np.complex128)
            spectra.append(
                Spectrum(
                    source=SIMULATED_SOURCE,
                    cell_id=SIMULATED_CELL,
                    profile=SIMULATED_PROFILE,
                    soc=float(soc),
                    temp_c=float(temp_c),
                    soh=1.0,
                    freq_hz=FREQ_HZ,
                    z=z,
                    origin=f"pybamm EISSimulation DFN Chen2020 soc={soc:g} T={temp_c:g}C",
                )
            )
        _log.info(
            "temperature done",
            temp_c=temp_c,
            step=f"{k + 1}/{len(temps_c)}",
            spectra=len(spectra),
            seconds=round(time.monotonic() - started, 1),
        )
    return spectra


def check_sign(spectra: list[Spectrum]) -> str:
    """PyBaMM's convention, checked on the numbers: a model without inductance must be capacitive (Im < 0
    in the standard convention) at every frequency, and the diffusion tail at 10 mHz above all."""
    im = np.stack([s.z.imag for s in spectra])
    if not np.all(im[:, -1] < 0):
        raise SystemExit("PyBaMM returned Im(Z) >= 0 at the lowest frequency: sign convention changed?")
    if not np.all(im < 0):
        raise SystemExit(f"PyBaMM returned Im(Z) >= 0 at {int((im >= 0).sum())} points of an RC-only model")
    return (
        f"Im(Z) < 0 at all {im.size} points (the DFN has no inductance): PyBaMM already returns the standard "
        "convention (Im > 0 inductive), stored unchanged"
    )


def plausibility(spectra: list[Spectrum]) -> dict[str, Any]:
    re_min = min(float(s.z.real.min()) for s in spectra)
    residuals = np.array([lin_kk(s.freq_hz, s.z).max_residual for s in spectra])
    fixed = np.array([lin_kk(s.freq_hz, s.z, fixed_m=FIXED_M).max_residual for s in spectra])
    return {
        "min_re_ohm": re_min,
        "all_re_positive": bool(re_min > 0),
        "linkk": "hil_server.model.linkk.lin_kk defaults (c=0.85, max_M=50, capacitive term, Im>0 dropped)",
        "linkk_max_residual_median": float(np.median(residuals)),
        "linkk_max_residual_p90": float(np.percentile(residuals, 90)),
        "linkk_max_residual_max": float(residuals.max()),
        "linkk_pass_fraction_2pct": float(np.mean(residuals < 0.02)),
        "linkk_fixed_m": f"lin_kk with fixed_m={FIXED_M} (no mu criterion), as eis-hil evaluate",
        "linkk_fixed_m_max_residual_median": float(np.median(fixed)),
        "linkk_fixed_m_max_residual_max": float(fixed.max()),
        "linkk_fixed_m_pass_fraction_0.5pct": float(np.mean(fixed < 0.005)),
    }


def temperature_table(spectra: list[Spectrum], soc: float = 0.5) -> list[dict[str, float]]:
    """Per temperature at one SOC: high-frequency intercept, the arc (Re at 1 Hz minus intercept: charge
    transfer and double layer, mostly), the apex frequency of the arc and Re at 10 mHz."""
    rows = []
    for s in sorted((s for s in spectra if abs(s.soc - soc) < 1e-9), key=lambda s: s.temp_c):
        f, z = s.freq_hz, s.z
        i_1hz = int(np.argmin(np.abs(np.log10(f))))
        arc = f >= 0.1
        apex = int(np.argmax(-z.imag[arc]))
        rows.append(
            {
                "temp_c": s.temp_c,
                "re_10khz_ohm": float(z.real[0]),
                "arc_re_1hz_minus_hf_ohm": float(z.real[i_1hz] - z.real[0]),
                "arc_apex_hz": float(f[arc][apex]),
                "re_10mhz_ohm": float(z.real[-1]),
            }
        )
    return rows


def versions() -> dict[str, str]:
    found = {name: metadata.version(name) for name in ("pybamm", "casadi", "pybammsolvers", "scipy", "numpy")}
    return {**found, "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=SIMULATED_DIR / f"{SIMULATED_SOURCE}.npz")
    parser.add_argument("--soc", type=float, nargs="+", default=list(SOC_GRID), help="SOC grid (fractions)")
    parser.add_argument("--temp-c", type=float, nargs="+", default=list(TEMP_GRID_C), help="temperatures, C")
    args = parser.parse_args(argv)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    socs = tuple(sorted(set(args.soc)))
    temps = tuple(sorted(set(args.temp_c)))
    if not all(0.0 < s <= 1.0 for s in socs):
        parser.error(f"--soc values must be in (0, 1], got {socs}")
    try:
        importlib.import_module("pybamm")
    except ImportError:
        sys.stderr.write("error: PyBaMM is not installed; pip install 'pybamm>=26.10' (the simdata extra)\n")
        return 2
    _log.info("simulating", spectra=len(socs) * len(temps), socs=len(socs), temps=len(temps))
    spectra = simulate(socs, temps)
    sign = check_sign(spectra)
    checks = plausibility(spectra)
    table = temperature_table(spectra)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    digest = save_npz(SpectrumSet.of(spectra), args.out)
    data = args.out.read_bytes()
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python tools/gen_pybamm_eis.py", *given])
    meta: dict[str, Any] = {
        "source": SIMULATED_SOURCE,
        "profile": SIMULATED_PROFILE,
        "cell_id": SIMULATED_CELL,
        "file": args.out.name,
        "content_sha256": digest,
        "file_sha256": hashlib.sha256(data).hexdigest(),
        "file_bytes": len(data),
        "generator": command,
        "versions": versions(),
        "simulation": "pybamm.EISSimulation (frequency domain, linearised about the rest state at each SOC)",
        "model": "pybamm.lithium_ion.DFN",
        "model_options": MODEL_OPTIONS,
        "parameter_set": "Chen2020 (LG M50 21700, NMC811 / graphite-SiOx)",
        "parameter_overrides": {
            key: f"OKane2022.{name} (Arrhenius temperature dependence)"
            for key, name in ARRHENIUS_OVERRIDES.items()
        },
        "contact_resistance_ohm": CONTACT_RESISTANCE_OHM,
        "contact_resistance_reason": (
            "the DFN's high-frequency intercept (2.8 mOhm at 25 C) leaves out tabs, collectors-to-terminal, "
            "can and welds; measured few-Ah cylindrical cells sit in the tens of mOhm (Gamry application "
            "note 'Low impedance batteries and the Interface 5000E'). 15 mOhm, temperature-independent "
            "(metallic), is an assumption, not a fit to an LG M50 measurement"
        ),
        "thermal": "isothermal at the grid temperature (ambient = initial temperature)",
        "soh": "1.0 only: no degradation mapping is simulated",
        "grid": {"soc": list(socs), "temp_c": list(temps), "n_spectra": len(spectra)},
        "freq_hz": {"max": float(FREQ_HZ[0]), "min": float(FREQ_HZ[-1]), "points": int(FREQ_HZ.size)},
        "sign_check": sign,
        "plausibility": checks,
        "temperature_effect_soc_0.5": table,
        "references": REFERENCES,
        "licence": "generated by this project with PyBaMM (BSD-3-Clause); parameters from the references",
    }
    sidecar_path(args.out).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    out = sys.stdout.write
    out(f"wrote {args.out} ({len(data) / 1e3:.0f} kB, {len(spectra)} spectra, content sha256 {digest})\n")
    out(f"sign: {sign}\n")
    out(
        f"plausibility: min Re {checks['min_re_ohm'] * 1e3:.2f} mOhm; Lin-KK max residual median "
        f"{checks['linkk_max_residual_median']:.2%}, p90 {checks['linkk_max_residual_p90']:.2%}, max "
        f"{checks['linkk_max_residual_max']:.2%}; pass < 2 %: {checks['linkk_pass_fraction_2pct']:.1%}\n"
        f"  Lin-KK with M={FIXED_M} fixed: max residual median "
        f"{checks['linkk_fixed_m_max_residual_median']:.3%}, "
        f"max {checks['linkk_fixed_m_max_residual_max']:.3%}; pass < 0.5 %: "
        f"{checks['linkk_fixed_m_pass_fraction_0.5pct']:.1%}\n"
    )
    out("SOC 0.5:  T C   Re(10 kHz) mOhm   arc Re(1 Hz)-HF mOhm   apex Hz   Re(10 mHz) mOhm\n")
    for row in table:
        out(
            f"        {row['temp_c']:5.0f}   {row['re_10khz_ohm'] * 1e3:15.2f}   "
            f"{row['arc_re_1hz_minus_hf_ohm'] * 1e3:20.2f}   {row['arc_apex_hz']:7.3g}   "
            f"{row['re_10mhz_ohm'] * 1e3:15.2f}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
