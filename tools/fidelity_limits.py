"""What limits the PINN on rashid2023, measured on the data itself (the figures quoted in the model README).

    .venv/bin/python tools/fidelity_limits.py [--model DIR] [--data DIR]
    .venv/bin/python tools/fidelity_limits.py --train-fit epochs=600 [w_monotonic=0 w_observable=0 ...]

Default (no training, about a minute): per SOC of rashid2023's grid,
- ``model``: the model's NRMSE on the training spectra themselves (the bundled model saw every cell);
- ``circuit floor``: the circuit fitted to each spectrum alone by least squares (scipy), started from the
  model's parameters: what the circuit can represent at all;
- predictions from the other cells at the same (SOC, T), leaving the spectrum's own cell out: ``nearest cell``
  (the other cell nearest in SOH: what a lookup gets when a sibling cell exists), ``linear in SOH`` and
  ``kernel in SOH`` (smooth functions of SOH fitted per frequency), ``mean`` (ignores SOH);
then the measured SOH dependence at SOC 0.05 and 0.2: |Z| at the lowest frequency per cell, ordered by SOH;
then for zhang2020 how far each cell's spectra move from its first one over its life (what one spectrum at
the start of life leaves to be predicted): mean |Z| against the first, and the first spectrum used as the
prediction of every later one of the same state.

``--train-fit KEY=VALUE ...`` trains the PINN on every rashid2023 cell with TrainConfig overrides and prints
its fit to those same cells per SOC (under-fit vs constraint: compare w_monotonic=0 w_observable=0 with the
defaults at the same epochs; runs take minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hil_server.eis_data import Spectrum, SpectrumSet, load_all
from hil_server.model.circuit import N_PARAMS, P, impedance

SOURCE = "rashid2023"
EXPONENTS = (P.A1, P.A2, P.PHI_W)
LOG_COLS = [int(i) for i in P if i not in EXPONENTS]
KERNEL_WIDTH = 0.03
AGING_SOH = (0.95, 0.9, 0.85, 0.8, 0.7, 0.6)


def nrmse(pred: npt.NDArray[Any], meas: npt.NDArray[Any]) -> float:
    return float(np.sqrt(np.mean(np.abs(pred - meas) ** 2)) / np.mean(np.abs(meas)))


def circuit_floor(s: Spectrum, start: npt.NDArray[np.float64]) -> float:
    """NRMSE of the circuit fitted to this spectrum alone (log-parameters, exponents in their ranges)."""
    from scipy.optimize import least_squares  # type: ignore[import-untyped]

    lo = np.full(N_PARAMS, -30.0)
    hi = np.full(N_PARAMS, 15.0)
    lo[[P.A1, P.A2]], hi[[P.A1, P.A2]] = 0.5, 1.0
    lo[P.PHI_W], hi[P.PHI_W] = 0.3, 0.5
    x0 = start.copy()
    x0[LOG_COLS] = np.log(start[LOG_COLS])
    x0 = np.clip(x0, lo + 1e-6, hi - 1e-6)
    scale = float(np.mean(np.abs(s.z)))

    def params(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        p = x.copy()
        p[LOG_COLS] = np.exp(x[LOG_COLS])
        return p

    def residual(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        d = (impedance(params(x)[None], s.freq_hz[None])[0] - s.z) / scale
        return np.concatenate([d.real, d.imag])

    fit = least_squares(residual, x0, bounds=(lo, hi), max_nfev=400)
    return nrmse(impedance(params(fit.x)[None], s.freq_hz[None])[0], s.z)


def by_soc(spectra: SpectrumSet) -> dict[float, list[int]]:
    out: dict[float, list[int]] = {}
    for i, s in enumerate(spectra):
        out.setdefault(round(s.soc, 2), []).append(i)
    return out


def lookups(spectra: SpectrumSet) -> dict[str, list[float]]:
    """Per spectrum, predicted from the *other* cells at the same (SOC, T) (leave one cell out): the cell
    nearest in SOH, a line in SOH fitted per frequency, a Gaussian kernel in SOH (width 0.03), the mean."""
    out: dict[str, list[float]] = {"nearest cell": [], "linear in SOH": [], "kernel in SOH": [], "mean": []}
    for s in spectra:
        others = [
            o
            for o in spectra
            if o.cell_id != s.cell_id
            and round(o.soc, 2) == round(s.soc, 2)
            and o.temp_c == s.temp_c
            and o.z.shape == s.z.shape
        ]
        if len(others) < 2:
            for v in out.values():
                v.append(np.nan)
            continue
        soh = np.array([o.soh for o in others])
        z = np.array([o.z for o in others])
        out["nearest cell"].append(nrmse(others[int(np.argmin(np.abs(soh - s.soh)))].z, s.z))
        design = np.stack([np.ones_like(soh), soh], axis=1)
        coef = np.linalg.lstsq(design, z, rcond=None)[0]
        out["linear in SOH"].append(nrmse(coef[0] + coef[1] * s.soh, s.z))
        w = np.exp(-0.5 * ((soh - s.soh) / KERNEL_WIDTH) ** 2) + 1e-12
        out["kernel in SOH"].append(nrmse((w[:, None] * z).sum(axis=0) / w.sum(), s.z))
        out["mean"].append(nrmse(z.mean(axis=0), s.z))
    return out


def data_report(spectra: SpectrumSet, model_dir: Path) -> None:
    from hil_server.model.runtime import NumpyPinn

    pinn = NumpyPinn.load(model_dir)
    model_err, floor = [], []
    for s in spectra:
        prof = pinn.profile_index(s.profile)
        op = [[s.soc, s.temp_c, s.soh]]
        model_err.append(nrmse(pinn.impedance([prof], op, s.freq_hz)[0], s.z))
        floor.append(circuit_floor(s, pinn.params([prof], op).astype(np.float64)[0]))
    cols = {"model": model_err, "circuit floor": floor, **lookups(spectra)}
    print(f"{SOURCE}: median NRMSE per SOC ({len(spectra)} spectra, {len(spectra.cells())} cells)")
    print(f"{'SOC':>5} {'n':>4}" + "".join(f"{k:>15}" for k in cols))
    groups = by_soc(spectra)
    for soc, idx in sorted(groups.items()):
        row = "".join(f"{np.nanmedian(np.asarray(v)[idx]):15.2%}" for v in cols.values())
        print(f"{soc:5.2f} {len(idx):4d}{row}")
    row = "".join(f"{np.nanmedian(v):15.2%}" for v in cols.values())
    print(f"{'all':>5} {len(spectra):4d}{row}")
    print()
    print("|Z| at the lowest frequency (mOhm) per cell, SOH ascending: does it rise as the cell ages?")
    for soc in (0.05, 0.2):
        for temp in sorted({s.temp_c for s in spectra}):
            cells = sorted(
                (s for s in spectra if round(s.soc, 2) == soc and s.temp_c == temp), key=lambda s: s.soh
            )
            values = "  ".join(f"{s.soh:.2f}:{1000 * abs(s.z[-1]):.0f}" for s in cells)
            print(f"SOC {soc:.2f} {temp:4.0f} C  {values}")


def aging_report(spectra: SpectrumSet) -> None:
    """zhang2020: how much each cell's spectra change over its life, against its own first spectrum."""
    print("zhang2020: mean |Z| against the cell's first spectrum of the same state, at SOH")
    print(f"{'cell':18} {'SOC':>4}" + "".join(f"{t:>7.2f}" for t in AGING_SOH))
    copy: dict[str, list[float]] = {}
    for cell in spectra.cells():
        for soc in (1.0, 0.0):
            life = sorted(
                (s for s in spectra.filter(cells=[cell]) if round(s.soc, 2) == soc), key=lambda s: -s.soh
            )
            if not life:
                continue
            first = life[0]
            ratios = []
            for target in AGING_SOH:
                near = [s for s in life if abs(s.soh - target) < 0.02]
                ratios.append(
                    f"{np.mean(np.abs(near[0].z)) / np.mean(np.abs(first.z)):7.2f}" if near else "      -"
                )
            print(f"{cell:18} {soc:4.1f}" + "".join(ratios))
            copy.setdefault(cell, []).extend(
                nrmse(first.z, s.z) for s in life[1:] if s.soh >= 0.5 and s.z.shape == first.z.shape
            )
    print()
    print("zhang2020: the cell's first spectrum of the same state as the prediction of the rest of its life")
    print("(SOH >= 0.5; no model, no aging; median / p90 NRMSE)")
    for cell, errs in copy.items():
        print(f"{cell:18} {np.median(errs):7.2%} {np.quantile(errs, 0.9):7.2%} {len(errs):6d}")
    every = [e for errs in copy.values() for e in errs]
    print(f"{'all':18} {np.median(every):7.2%} {np.quantile(every, 0.9):7.2%} {len(every):6d}")


def train_fit(spectra: SpectrumSet, overrides: list[str]) -> None:
    from hil_server.model.calibrate import predict
    from hil_server.model.dataset import nrmse as batch_nrmse
    from hil_server.model.dataset import to_arrays
    from hil_server.model.train import TrainConfig, fit

    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    kwargs: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            sys.exit(f"--train-fit: {item!r} is not KEY=VALUE with a TrainConfig field ({', '.join(fields)})")
        kwargs[key] = int(value) if fields[key] in (int, "int") else float(value)
    config = TrainConfig(**kwargs)
    fitted = fit(spectra, spectra.profiles(), config)
    arrays = to_arrays(spectra, fitted.profiles, fitted.cells)
    re, im = predict(fitted.model, arrays)
    err = batch_nrmse(re, im, arrays)
    parts = [f"{soc:.2f}: {np.median(err[idx]):.2%}" for soc, idx in sorted(by_soc(spectra).items())]
    print(
        f"train fit {' '.join(overrides) or 'defaults'} ({fitted.seconds} s): median {np.median(err):.2%}, "
        f"p90 {np.quantile(err, 0.9):.2%}; per SOC " + ", ".join(parts)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("hil_server/model/bundled"))
    parser.add_argument("--data", type=Path, default=None, help="data directory (default: as eis-hil train)")
    parser.add_argument("--train-fit", nargs="*", metavar="KEY=VALUE", default=None)
    args = parser.parse_args()
    every = load_all(args.data)
    spectra = every.filter(source=SOURCE)
    if args.train_fit is not None:
        train_fit(spectra, args.train_fit)
    else:
        data_report(spectra, args.model)
        print()
        aging_report(every.filter(source="zhang2020"))


if __name__ == "__main__":
    main()
