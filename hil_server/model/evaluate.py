"""Evaluation: accuracy on validation cells and validity on an extrapolation grid, for the PINN and, in the
same table, for a plain neural network (no physics) trained on the same split.

Accuracy per spectrum: NRMSE = sqrt(mean |Zpred - Zmeas|^2) / mean |Zmeas|; median and 90th percentile.
Validity over SOC 0..1 x T -30..60 C x SOH 0.5..1 per profile: the fraction of spectra that are finite with
Re(Z) > 0 everywhere, and the fraction passing Lin-KK (c = 0.85, max_M = 50, capacitive term, inductive
points dropped) with max residual under 2 %.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from ..eis_data import SpectrumSet, split_by_cell
from .calibrate import fit_latent, predict
from .dataset import Arrays, nrmse, to_arrays
from .linkk import lin_kk
from .store import ModelMetadata

log = structlog.get_logger(__name__)

GRID_SOC = np.linspace(0.0, 1.0, 11)
GRID_TEMP_C = np.linspace(-30.0, 60.0, 10)
GRID_SOH = np.linspace(0.5, 1.0, 6)
FIXED_M = 40
"""Lin-KK with this many RC elements and no mu criterion: a direct test of consistency (residual < 0.5 %).
The specified test's mu criterion can stop at a poor fit when a feature lies below the measured band, as
diffusion does at -30 C; this column tells such spectra from inconsistent ones."""


@dataclasses.dataclass
class Row:
    model: str
    metric: str
    source: str
    median: float
    p90: float
    n: int


def grid_arrays(profiles: list[str], grids: dict[str, npt.NDArray[np.float64]]) -> Arrays:
    rows = [
        (k, s, t, h)
        for k, prof in enumerate(profiles)
        for s in GRID_SOC
        for t in GRID_TEMP_C
        for h in GRID_SOH
    ]
    width = max(g.size for g in grids.values())
    freq = np.ones((len(rows), width), np.float32)
    mask = np.zeros((len(rows), width), np.float32)
    for i, (k, *_rest) in enumerate(rows):
        g = grids[profiles[k]]
        freq[i, : g.size] = g
        mask[i, : g.size] = 1
    zeros = np.zeros_like(freq)
    return Arrays(
        profile=np.array([r[0] for r in rows], np.int32),
        cell=np.zeros(len(rows), np.int32),
        op=np.array([r[1:] for r in rows], np.float32),
        freq_hz=freq,
        z_re=zeros,
        z_im=zeros,
        mask=mask,
        source=tuple(profiles[r[0]] for r in rows),
        cell_id=tuple("grid" for _ in rows),
    )


def validity(z_re: npt.NDArray[Any], z_im: npt.NDArray[Any], grid: Arrays) -> dict[str, float]:
    finite_pos, kk_pass, kk_fixed = [], [], []
    for i in range(len(grid)):
        m = grid.mask[i] > 0
        re, im, f = z_re[i][m].astype(np.float64), z_im[i][m].astype(np.float64), grid.freq_hz[i][m]
        ok = bool(np.all(np.isfinite(re)) and np.all(np.isfinite(im)) and np.all(re > 0))
        finite_pos.append(ok)
        kk_pass.append(ok and lin_kk(f, re + 1j * im).passed())
        kk_fixed.append(ok and lin_kk(f, re + 1j * im, fixed_m=FIXED_M).max_residual < 0.005)
    return {
        "finite_re_positive": float(np.mean(finite_pos)),
        "linkk_pass": float(np.mean(kk_pass)),
        "linkk_fixed_m_pass": float(np.mean(kk_fixed)),
        "n": len(grid),
    }


def train_plain_mlp(train: Arrays, n_profiles: int, seed: int, epochs: int = 400) -> Any:
    """The baseline: operating point -> Re, Im at every grid frequency, no physics."""
    import keras

    keras.utils.set_random_seed(seed)
    width = train.freq_hz.shape[1]
    scale = np.array(
        [
            np.mean(np.hypot(train.z_re, train.z_im)[train.profile == k][train.mask[train.profile == k] > 0])
            for k in range(n_profiles)
        ],
        np.float32,
    )
    x_in = keras.Input(shape=(n_profiles + 3,))
    h = keras.layers.Dense(64, activation="relu")(x_in)
    h = keras.layers.Dense(64, activation="relu")(h)
    y = keras.layers.Dense(2 * width)(h)
    model = keras.Model(x_in, y)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    x = _mlp_inputs(train, n_profiles)
    target = np.concatenate([train.z_re, train.z_im], axis=1) / scale[train.profile][:, None]
    model.fit(x, target, epochs=epochs, batch_size=128, verbose=0, shuffle=True)
    model.scale = scale  # used by mlp_predict
    return model


def _mlp_inputs(a: Arrays, n_profiles: int) -> npt.NDArray[np.float32]:
    onehot = np.eye(n_profiles, dtype=np.float32)[a.profile]
    op = a.op.copy()
    op[:, 1] = (op[:, 1] - 25.0) / 20.0
    return np.concatenate([onehot, op], axis=1)


def mlp_predict(model: Any, a: Arrays, n_profiles: int) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    y = np.asarray(model(_mlp_inputs(a, n_profiles), training=False)) * model.scale[a.profile][:, None]
    width = a.freq_hz.shape[1]
    return y[:, :width], y[:, width:]


def evaluate(
    model: Any, meta: ModelMetadata, spectra: SpectrumSet, *, mlp_epochs: int = 400
) -> dict[str, Any]:
    profiles = meta.profiles
    seed = int(meta.raw["config"]["seed"])
    val_fraction = float(meta.raw["config"]["val_fraction"])
    train_set, val_set = split_by_cell(spectra, val_fraction, seed)
    if sorted(val_set.cells()) != sorted(meta.raw["validation_cells"]):
        log.warning(
            "validation cells differ from training", now=val_set.cells(), trained=meta.raw["validation_cells"]
        )
    tr = to_arrays(train_set, profiles, meta.cells)
    va = to_arrays(val_set, profiles, {})  # every validation cell as the typical cell: uncalibrated
    rows: list[Row] = []

    def add(model_name: str, metric: str, a: Arrays, errors: npt.NDArray[np.float64]) -> None:
        for src in sorted(set(a.source)):
            sel = np.array([s == src for s in a.source])
            rows.append(
                Row(
                    model_name,
                    metric,
                    src,
                    float(np.median(errors[sel])),
                    float(np.percentile(errors[sel], 90)),
                    int(sel.sum()),
                )
            )

    add("pinn", "nrmse", va, nrmse(*predict(model, va), va))
    mlp = train_plain_mlp(tr, len(profiles), seed, mlp_epochs)
    add("plain_mlp", "nrmse", va, nrmse(*mlp_predict(mlp, va, len(profiles)), va))

    # zhang2020 calibrated on the cell's first full-charge spectrum, predicting the rest at SOC 0 and 1.
    calibrated: list[float] = []
    for cell in val_set.filter(source="zhang2020").cells():
        of_cell = val_set.filter(cells=[cell])
        full = sorted((s for s in of_cell if s.state == "V"), key=lambda s: s.cycle or 0)
        if not full:
            continue
        first = SpectrumSet.of([full[0]])
        rest = SpectrumSet.of(s for s in of_cell if s is not full[0])
        latent = fit_latent(model, to_arrays(first, profiles, {}))
        ra = to_arrays(rest, profiles, {})
        calibrated.extend(nrmse(*predict(model, ra, latent), ra).tolist())
    if calibrated:
        e = np.array(calibrated)
        rows.append(
            Row(
                "pinn",
                "nrmse_calibrated",
                "zhang2020",
                float(np.median(e)),
                float(np.percentile(e, 90)),
                e.size,
            )
        )

    grids = {p: spectra.filter(profile=p)[0].freq_hz for p in profiles}
    grid = grid_arrays(profiles, grids)
    valid = {
        "pinn": validity(*predict(model, grid), grid),
        "plain_mlp": validity(*mlp_predict(mlp, grid, len(profiles)), grid),
    }
    return {
        "rows": [dataclasses.asdict(r) for r in rows],
        "validity": valid,
        "validation_cells": val_set.cells(),
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        "Accuracy on validation cells (NRMSE per spectrum)",
        f"{'model':10} {'metric':17} {'source':11} {'median':>8} {'p90':>8} {'n':>6}",
    ]
    for r in result["rows"]:
        stats = f"{r['median']:8.2%} {r['p90']:8.2%} {r['n']:6d}"
        lines.append(f"{r['model']:10} {r['metric']:17} {r['source']:11} {stats}")
    lines.append("")
    lines.append("Validity on SOC 0..1 x T -30..60 C x SOH 0.5..1 (11 x 10 x 6 per profile)")
    lines.append(f"{'model':10} {'finite, Re>0':>13} {'Lin-KK < 2 %':>13} {'KK, M=40 < 0.5 %':>17} {'n':>6}")
    for name, v in result["validity"].items():
        lines.append(
            f"{name:10} {v['finite_re_positive']:13.1%} {v['linkk_pass']:13.1%} "
            f"{v['linkk_fixed_m_pass']:17.1%} {v['n']:6d}"
        )
    lines.append("")
    lines.append("validation cells: " + ", ".join(result["validation_cells"]))
    return "\n".join(lines)
