"""Evaluation: accuracy on validation cells and validity on an extrapolation grid, for the PINN and, in the
same table, for a plain neural network (no physics) trained on the same split.

Accuracy per spectrum: NRMSE = sqrt(mean |Zpred - Zmeas|^2) / mean |Zmeas|; median and 90th percentile.
Validity over SOC 0..1 x T -30..60 C x SOH 0.5..1 per profile: the fraction of spectra that are finite with
Re(Z) > 0 everywhere, and the fraction passing Lin-KK (c = 0.85, max_M = 50, capacitive term, inductive
points dropped) with max residual under 2 %.

Physical behaviour on the same grid (``monotonicity``): at fixed SOC and SOH, the series resistance (the
minimum of Re Z over the profile's band) and |Z(0.1 Hz)| must not fall as the cell gets colder (each 10 C
step down); at fixed SOC and T they must not fall as the cell ages (each 0.1 SOH step down). The share of
grid steps that satisfy each is reported; 100 % is the target.

Accuracy on unseen cells is measured by grouped cross-validation (cv.py, ``eis-hil evaluate --cv K``); the
single-split table below appears only for a model trained with held-out validation cells.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from ..eis_data import SpectrumSet, split_by_cell
from .calibrate import predict
from .dataset import Arrays, nrmse, to_arrays
from .linkk import lin_kk
from .store import ModelMetadata

log = structlog.get_logger(__name__)

LOW_FREQ_HZ = 0.1
MONOTONE_RTOL = 1e-6
"""A step "falls" when the quantity drops by more than this share (float32 evaluation noise)."""
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


def monotonicity(model: Any, grid: Arrays) -> dict[str, float]:
    """Shares of grid steps where series resistance and |Z(0.1 Hz)| do not fall with cold and with age."""
    re, _im = predict(model, grid)
    series = np.where(grid.mask > 0, re, np.inf).min(axis=1)
    low = dataclasses.replace(
        grid,
        freq_hz=np.full((len(grid), 1), LOW_FREQ_HZ, np.float32),
        z_re=np.zeros((len(grid), 1), np.float32),
        z_im=np.zeros((len(grid), 1), np.float32),
        mask=np.ones((len(grid), 1), np.float32),
    )
    lre, lim = predict(model, low)
    z_low = np.hypot(lre[:, 0], lim[:, 0])
    shape = (-1, GRID_SOC.size, GRID_TEMP_C.size, GRID_SOH.size)
    out: dict[str, float] = {}
    for name, values in (("series_resistance", series), ("abs_z_0p1hz", z_low)):
        q = np.asarray(values, np.float64).reshape(shape)
        # colder: T index i -> i - 1 (GRID_TEMP_C ascends); older: SOH index j -> j - 1 (GRID_SOH ascends)
        colder_ok = q[:, :, :-1, :] >= q[:, :, 1:, :] * (1 - MONOTONE_RTOL)
        older_ok = q[:, :, :, :-1] >= q[:, :, :, 1:] * (1 - MONOTONE_RTOL)
        out[f"{name}_colder"] = float(np.mean(colder_ok))
        out[f"{name}_older"] = float(np.mean(older_ok))
    out["all"] = min(out.values())
    out["n_temp_steps"] = int(np.prod(q[:, :, :-1, :].shape))
    out["n_soh_steps"] = int(np.prod(q[:, :, :, :-1].shape))
    return out


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
    model.width = width
    return model


def _mlp_inputs(a: Arrays, n_profiles: int) -> npt.NDArray[np.float32]:
    onehot = np.eye(n_profiles, dtype=np.float32)[a.profile]
    op = a.op.copy()
    op[:, 1] = (op[:, 1] - 25.0) / 20.0
    return np.concatenate([onehot, op], axis=1)


def mlp_predict(model: Any, a: Arrays, n_profiles: int) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """(z_re, z_im) at the frequency index of each training grid point, cut to ``a``'s width."""
    y = np.asarray(model(_mlp_inputs(a, n_profiles), training=False)) * model.scale[a.profile][:, None]
    width, cut = model.width, a.freq_hz.shape[1]
    if cut > width:
        raise ValueError(f"the plain MLP was trained on {width} frequencies, asked for {cut}")
    return y[:, :cut], y[:, width : width + cut]


def evaluate(
    model: Any, meta: ModelMetadata, spectra: SpectrumSet, *, mlp_epochs: int = 400
) -> dict[str, Any]:
    """Validity and physical behaviour of ``model`` on the extrapolation grid; with validation cells in its
    metadata (a model trained with val_fraction > 0), also accuracy on them against a plain MLP."""
    profiles = meta.profiles
    seed = int(meta.raw["config"]["seed"])
    val_fraction = float(meta.raw["config"].get("val_fraction", 0.0))
    rows: list[Row] = []
    grids = {p: np.asarray(meta.raw["freq_grids"][p]) for p in profiles}
    grid = grid_arrays(profiles, grids)
    valid = {"pinn": validity(*predict(model, grid), grid)}
    if val_fraction > 0:
        train_set, val_set = split_by_cell(spectra, val_fraction, seed)
        if sorted(val_set.cells()) != sorted(meta.raw["validation_cells"]):
            log.warning(
                "validation cells differ from training",
                now=val_set.cells(),
                trained=meta.raw["validation_cells"],
            )
        tr = to_arrays(train_set, profiles, meta.cells)
        va = to_arrays(val_set, profiles, {})  # every validation cell as the typical cell: uncalibrated

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
        valid["plain_mlp"] = validity(*mlp_predict(mlp, grid, len(profiles)), grid)
        validation_cells = val_set.cells()
    else:
        validation_cells = []
    return {
        "rows": [dataclasses.asdict(r) for r in rows],
        "validity": valid,
        "monotonicity": monotonicity(model, grid),
        "validation_cells": validation_cells,
    }


def format_grid_checks(result: dict[str, Any]) -> list[str]:
    lines = ["Validity on SOC 0..1 x T -30..60 C x SOH 0.5..1 (11 x 10 x 6 per profile)"]
    lines.append(f"{'model':10} {'finite, Re>0':>13} {'Lin-KK < 2 %':>13} {'KK, M=40 < 0.5 %':>17} {'n':>6}")
    for name, v in result["validity"].items():
        lines.append(
            f"{name:10} {v['finite_re_positive']:13.1%} {v['linkk_pass']:13.1%} "
            f"{v['linkk_fixed_m_pass']:17.1%} {v['n']:6d}"
        )
    m = result["monotonicity"]
    lines += [
        "",
        "Physical behaviour on the same grid (PINN, typical cell): share of steps that do not fall",
        f"{'':28} {'10 C colder':>12} {'0.1 SOH older':>14}",
        f"{'series resistance (min Re)':28} {m['series_resistance_colder']:12.1%} "
        f"{m['series_resistance_older']:14.1%}",
        f"{'|Z(0.1 Hz)|':28} {m['abs_z_0p1hz_colder']:12.1%} {m['abs_z_0p1hz_older']:14.1%}",
        f"steps: {m['n_temp_steps']} in temperature, {m['n_soh_steps']} in SOH",
    ]
    return lines


def format_table(result: dict[str, Any]) -> str:
    lines: list[str] = []
    if result["rows"]:
        lines += [
            "Accuracy on validation cells (NRMSE per spectrum)",
            f"{'model':10} {'metric':17} {'source':11} {'median':>8} {'p90':>8} {'n':>6}",
        ]
        for r in result["rows"]:
            stats = f"{r['median']:8.2%} {r['p90']:8.2%} {r['n']:6d}"
            lines.append(f"{r['model']:10} {r['metric']:17} {r['source']:11} {stats}")
        lines.append("")
    lines += format_grid_checks(result)
    if result["validation_cells"]:
        lines += ["", "validation cells: " + ", ".join(result["validation_cells"])]
    return "\n".join(lines)
