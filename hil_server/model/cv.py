"""Model selection by grouped cross-validation over whole cells (``eis-hil evaluate --cv K``).

Neighbouring spectra of one cell are near copies, so a model is only scored on cells it never saw: the cells
of every source are dealt into K folds, each fold is predicted by a PINN trained on the other K - 1, and in
the same run by the two simplest baselines trained on the same cells:

- nearest neighbour: the training spectrum of the same profile nearest in (SOC, T, SOH), distances scaled by
  ``NN_SCALE`` (0.1 SOC ~ 10 C ~ 0.05 SOH);
- plain MLP: operating point -> Re, Im at every grid frequency, no physics (evaluate.train_plain_mlp).

Per source and per cell: median and p90 NRMSE, and the bias (mean signed error of Re Z and Im Z over the
cell's spectra, as a share of its mean |Z|). For cells with measured aging (zhang2020: SOH down to 0.24 in
one cell), the PINN is also calibrated the way a bench engineer would: on the cell's first full-charge
spectrum (offsets only: one spectrum cannot show how the cell ages), and on every spectrum of its first 10 %
of cycles (offsets and aging rate), each scored on the rest of the cell's life with SOH >= 0.5.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from ..eis_data import Spectrum, SpectrumSet, temperature_strata
from .calibrate import fit_cell, predict
from .dataset import Arrays, every_nth_cycle, nrmse, to_arrays

log = structlog.get_logger(__name__)

NN_SCALE = np.array([0.1, 10.0, 0.05])
"""Scale of (SOC, temp_c, SOH) in the nearest-neighbour distance."""
CALIBRATION_MIN_SOH = 0.5
EARLY_LIFE_SHARE = 0.1
"""Calibration on "the first 10 % of the cell's cycles"."""


def cell_folds(spectra: SpectrumSet, k: int, seed: int) -> list[list[str]]:
    """Whole cells dealt into ``k`` folds, each cell in exactly one.

    Per source, cells are grouped by the set of temperatures they were measured at (zhang2020's lone 45 C
    cell is its own group) and each group is shuffled with a stream keyed by the seed and the group, then
    dealt round-robin, continuing where the previous group stopped, so every fold gets cells of every source
    as evenly as the counts allow. Deterministic for a given seed and set of cells.
    """
    if k < 2:
        raise ValueError(f"--cv needs at least 2 folds, got {k}")
    for source in spectra.sources():
        n = len(spectra.filter(source=source).cells())
        if n < k:
            raise ValueError(f"--cv {k}: source {source} has only {n} cells; use at most {n} folds")
    folds: list[list[str]] = [[] for _ in range(k)]
    turn = 0
    for source in spectra.sources():
        for key, cells in sorted(temperature_strata(spectra, source).items()):
            rng = np.random.default_rng([seed, zlib.crc32(f"{source}|{key}".encode())])
            for i in rng.permutation(len(cells)):
                folds[turn % k].append(cells[int(i)])
                turn += 1
    return [sorted(f) for f in folds]


def nearest_neighbour(train: SpectrumSet, test: SpectrumSet) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """(z_re, z_im) of ``test`` as padded arrays: each the nearest training spectrum of its profile."""
    width = max(s.n_points for s in test)
    re = np.zeros((len(test), width), np.float64)
    im = np.zeros((len(test), width), np.float64)
    by_profile: dict[str, tuple[list[Spectrum], npt.NDArray[np.float64]]] = {}
    for prof in train.profiles():
        of = list(train.filter(profile=prof))
        by_profile[prof] = (of, np.array([[s.soc, s.temp_c, s.soh] for s in of]) / NN_SCALE)
    for i, s in enumerate(test):
        cands, x = by_profile[s.profile]
        j = int(np.argmin(np.linalg.norm(x - np.array([s.soc, s.temp_c, s.soh]) / NN_SCALE, axis=1)))
        z = np.interp(np.log(s.freq_hz[::-1]), np.log(cands[j].freq_hz[::-1]), cands[j].z.real[::-1])[::-1]
        zi = np.interp(np.log(s.freq_hz[::-1]), np.log(cands[j].freq_hz[::-1]), cands[j].z.imag[::-1])[::-1]
        re[i, : s.n_points], im[i, : s.n_points] = z, zi
    return re, im


def _bias(pred_re: npt.ArrayLike, pred_im: npt.ArrayLike, a: Arrays) -> tuple[float, float]:
    """Mean signed error of Re and Im over a cell's points, as a share of its mean |Z|."""
    m = a.mask > 0
    mag = float(np.mean(np.hypot(a.z_re, a.z_im)[m]))
    d_re = float(np.mean((np.asarray(pred_re) - a.z_re)[m])) / mag
    d_im = float(np.mean((np.asarray(pred_im) - a.z_im)[m])) / mag
    return d_re, d_im


@dataclasses.dataclass
class CellResult:
    cell: str
    source: str
    fold: int
    soh: tuple[float, float]
    errors: dict[str, list[float]]
    """Per model ("pinn", "plain_mlp", "nearest"): NRMSE of each of the cell's spectra."""
    bias: dict[str, tuple[float, float]]
    calibrated: dict[str, list[float]]
    """"one_spectrum" and "early_life": NRMSE over the rest of life (SOH >= 0.5) after calibration."""


def _early_life(spectra: SpectrumSet) -> tuple[list[Spectrum], list[Spectrum], list[Spectrum]]:
    """(first full-charge spectrum, spectra of the first 10 % of cycles, the rest with SOH >= 0.5)."""
    ordered = sorted(spectra, key=lambda s: s.cycle or 0)
    full = [s for s in ordered if s.soc >= 0.999]
    if not full or ordered[-1].cycle is None:
        return [], [], []
    last = max(s.cycle or 0 for s in ordered)
    first = min(s.cycle or 0 for s in ordered)
    cut = first + EARLY_LIFE_SHARE * (last - first)
    early = [s for s in ordered if (s.cycle or 0) <= cut]
    rest = [s for s in ordered if (s.cycle or 0) > cut and s.soh >= CALIBRATION_MIN_SOH]
    return [full[0]], early, rest


def cross_validate(
    spectra: SpectrumSet,
    k: int,
    *,
    config: Any,
    mlp_epochs: int,
    seed: int = 0,
    calibrate: bool = True,
    progress: Callable[[str], None] | None = None,
    save_dir: Path | None = None,
) -> dict[str, Any]:
    """Grouped K-fold CV of the PINN (``config``: a train.TrainConfig) and both baselines."""
    from .evaluate import mlp_predict, train_plain_mlp
    from .train import fit

    folds = cell_folds(spectra, k, seed)
    profiles = spectra.profiles()
    results: list[CellResult] = []
    for f, held in enumerate(folds):
        # all three models see the same training spectra (the PINN's cycle stride applied once here)
        train_set = every_nth_cycle(
            spectra.filter(lambda s, held=set(held): s.cell_id not in held),  # type: ignore[misc]
            config.cycle_stride,
        )
        if progress:
            progress(f"fold {f + 1}/{k}: training on {len(train_set.cells())} cells, holding out {len(held)}")
        fitted = fit(train_set, profiles, dataclasses.replace(config, cycle_stride=1))
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
            fitted.model.save(save_dir / f"fold{f}.keras")
        tr = to_arrays(train_set, profiles, fitted.cells)
        mlp = train_plain_mlp(tr, len(profiles), seed, mlp_epochs)
        for cell in held:
            test = spectra.filter(cells=[cell])
            a = to_arrays(test, profiles, {})  # as the typical cell: what an unseen cell gets
            preds = {
                "pinn": predict(fitted.model, a),
                "plain_mlp": mlp_predict(mlp, a, len(profiles)),
                "nearest": nearest_neighbour(train_set, test),
            }
            soh = [s.soh for s in test]
            res = CellResult(
                cell,
                test[0].source,
                f,
                (min(soh), max(soh)),
                {m: nrmse(*p, a).tolist() for m, p in preds.items()},
                {m: _bias(*p, a) for m, p in preds.items()},
                {},
            )
            first, early, rest = _early_life(test)
            if calibrate and first and rest:
                ra = to_arrays(SpectrumSet.of(rest), profiles, {})
                one = fit_cell(fitted.model, to_arrays(SpectrumSet.of(first), profiles, {}))
                res.calibrated["one_spectrum"] = nrmse(*predict(fitted.model, ra, one), ra).tolist()
                many = fit_cell(fitted.model, to_arrays(SpectrumSet.of(early), profiles, {}))
                res.calibrated["early_life"] = nrmse(*predict(fitted.model, ra, many), ra).tolist()
            results.append(res)
            log.info(
                "cv cell",
                cell=cell,
                fold=f,
                **{m: round(float(np.median(e)), 4) for m, e in res.errors.items()},
                **{m: round(float(np.median(e)), 4) for m, e in res.calibrated.items()},
            )
    return {"k": k, "seed": seed, "folds": folds, "cells": [dataclasses.asdict(r) for r in results]}


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows (source, model, metric, median, p90, n) over every spectrum of every held-out cell."""
    rows = []
    cells = result["cells"]
    for source in sorted({c["source"] for c in cells}):
        of = [c for c in cells if c["source"] == source]
        for metric, key in (("uncalibrated", "errors"), ("calibrated", "calibrated")):
            models = sorted({m for c in of for m in c[key]})
            for m in models:
                e = np.array([x for c in of for x in c[key].get(m, [])])
                if e.size:
                    rows.append(
                        {
                            "source": source,
                            "model": m if metric == "uncalibrated" else f"pinn {m.replace('_', ' ')}",
                            "median": float(np.median(e)),
                            "p90": float(np.percentile(e, 90)),
                            "n": int(e.size),
                        }
                    )
    return rows


def format_cv(result: dict[str, Any]) -> str:
    lines = [
        f"Grouped {result['k']}-fold cross-validation over whole cells (seed {result['seed']}): "
        "each cell predicted by models that never saw it",
        f"{'source':11} {'model':26} {'median':>8} {'p90':>8} {'n':>6}",
    ]
    for r in summary(result):
        lines.append(f"{r['source']:11} {r['model']:26} {r['median']:8.2%} {r['p90']:8.2%} {r['n']:6d}")
    lines += [
        "",
        "Per cell: median NRMSE (PINN / plain MLP / nearest), PINN bias of Re and Im (share of mean |Z|),",
        "and PINN calibrated on one spectrum / on the first 10 % of cycles",
        f"{'cell':20} {'fold':>4} {'SOH':>11} {'pinn':>7} {'mlp':>7} {'nearest':>7} {'bias Re':>8} "
        f"{'bias Im':>8} {'cal 1':>7} {'cal 10%':>7}",
    ]
    for c in result["cells"]:
        med = {m: float(np.median(e)) for m, e in c["errors"].items()}
        cal = {m: f"{float(np.median(e)):7.2%}" for m, e in c["calibrated"].items()}
        b_re, b_im = c["bias"]["pinn"]
        lines.append(
            f"{c['cell']:20} {c['fold']:4d} {c['soh'][0]:5.2f}-{c['soh'][1]:4.2f} {med['pinn']:7.2%} "
            f"{med['plain_mlp']:7.2%} {med['nearest']:7.2%} {b_re:+8.2%} {b_im:+8.2%} "
            f"{cal.get('one_spectrum', '      -'):>7} {cal.get('early_life', '      -'):>7}"
        )
    return "\n".join(lines)
