"""Training of the PINN: data loss on measured spectra plus physics losses on collocation points.

Losses (each documented with its test in tests/test_model.py):
- data: per spectrum NRMSE^2 = mean |Z_pred - Z_meas|^2 / (mean |Z_meas|)^2, averaged with equal total weight
  per source (zhang2020 has 16x the spectra of rashid2023);
- SOH monotonicity: on random operating points (SOC 0..1, T -30..60 C, SOH 0.5..1, every profile, typical and
  training cells), ReLU(log R(soh) - log R(soh - 0.05)) for R0, R1, R2, R_W: resistances must not fall as
  the cell ages;
- SOC smoothness: squared second difference of the log-parameters over SOC steps of 0.05 at the same points;
- Arrhenius: the network's own change of every raw parameter over 5 C steps at the same points, squared:
  outside the data, temperature acts only through the learned Arrhenius law (Ea > 0), and the shape
  parameters (CPE and Warburg exponents, inductance) stay put instead of drifting with the extrapolation;
- observables: the quantities a user checks, not only the parameters: on the same points, the series
  resistance (min Re Z over the profile's band) and |Z(0.1 Hz)| must not fall as the cell gets 10 C colder
  or 0.1 SOH older (ReLU of the log-decrease, squared). Parameter-level Arrhenius alone does not give that:
  a time constant growing faster than its resistance lowers Re Z at a fixed frequency;
- offsets: L2 on the per-cell parameter offsets, and per source their projection on [1, SOH of the cell]
  (TrainConfig.w_centre): the offsets of the training cells stay centred on the typical cell and carry no
  trend with SOH. Without it, rashid2023 (one SOH per cell) put 60-90 % of the SOH effect in the offsets
  (r = +0.95 with SOH for R2), and offset 0, what an unseen cell gets, had an SOH behaviour no cell has.
  With cell dropout (TrainConfig.cell_dropout) the network also learns to predict spectra from offset 0.

Requires TensorFlow (the Keras backend); the server's inference path does not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from ..eis_data import SpectrumSet, content_hash, split_by_cell
from .circuit import RESISTANCES, P
from .dataset import Arrays, every_nth_cycle, nrmse, to_arrays

log = structlog.get_logger(__name__)

SOH_STEP = 0.05
SOC_STEP = 0.05
TEMP_STEP = 5.0
COLLOCATION_RANGES = {"soc": (0.0, 1.0), "temp_c": (-30.0, 60.0), "soh": (0.5, 1.0)}
OBSERVABLE_TEMP_STEP = 10.0
"""The extrapolation grid's temperature step (evaluate.GRID_TEMP_C)."""
OBSERVABLE_SOH_STEP = 0.1
"""The extrapolation grid's SOH step (evaluate.GRID_SOH)."""
OBSERVABLE_POINTS = 40
OBSERVABLE_MARGIN = 2e-3
"""Log-margin the observables must rise by in training, so float32 rounding cannot make them fall."""
LOW_FREQ_HZ = 0.1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    epochs: int = 400
    batch_size: int = 256
    learning_rate: float = 5e-3
    hidden: int = 64
    val_fraction: float = 0.0
    """Share of cells held out (split_by_cell) for the metrics in metadata.json; 0 trains on every cell.
    Models are selected by grouped cross-validation over whole cells (``eis-hil evaluate --cv K``), not by
    one split, so the bundled model uses every measured cell."""
    w_monotonic: float = 10.0
    w_smooth: float = 1e-3
    w_latent: float = 1e-3
    w_arrhenius: float = 0.1
    w_observable: float = 1000.0
    w_centre: float = 1.0
    n_collocation: int = 256
    cell_dropout: float = 0.3
    cell_dropout_single_age: float = 1.0
    """Cell dropout for sources whose cells were each measured at one SOH (rashid2023). There a cell's offset
    cannot be told from its SOH group's effect, and an offset that takes the group effect leaves offset 0
    without it: at 1.0 such cells train the network only, as the typical cell (grouped CV: see the model
    README)."""
    cycle_stride: int = 4
    """Train on every n-th cycle of cells measured over their life (dataset.every_nth_cycle): zhang2020's
    neighbouring cycles are near copies, and a quarter of them makes grouped CV of this very configuration
    affordable (eis-hil evaluate --cv)."""
    """Probability that a training spectrum is shown as the typical cell (latent 0), so that latent 0 learns
    the population's prediction: what an uncalibrated cell gets."""


def _initial_bias(data: Arrays, profile: int) -> np.ndarray:
    """A plausible circuit per profile from its spectra, so training starts near the data's scale."""
    sel = data.profile == profile
    re = np.where(data.mask[sel] > 0, data.z_re[sel], np.nan)
    r0 = float(np.nanmedian(np.nanmin(re, axis=1)))
    span = max(float(np.nanmedian(np.nanmax(re, axis=1))) - r0, 0.1 * r0)
    f_max = float(np.max(data.freq_hz[sel]))
    bias = np.zeros(len(P), np.float32)
    bias[P.R0] = np.log(0.9 * r0)
    bias[P.R_L] = np.log(0.3 * r0)
    bias[P.TAU_L] = np.log(1 / (2 * np.pi * f_max))
    bias[P.R1] = np.log(0.2 * span)
    bias[P.TAU1] = np.log(1e-3)
    bias[P.R2] = np.log(0.3 * span)
    bias[P.TAU2] = 4.0  # softplus(4) ~ log-gap of 4: tau2 ~ 55 tau1
    bias[P.R_W] = np.log(0.3 * span)
    bias[P.TAU_W] = 6.0
    bias[P.A1] = bias[P.A2] = 1.0
    bias[P.PHI_W] = 1.0
    return bias


@dataclasses.dataclass
class Fitted:
    """A trained Keras model with the cell table it was trained with."""

    model: Any
    profiles: list[str]
    cells: dict[str, int]
    history: list[dict[str, float]]
    seconds: float


def _centring_projections(spectra: SpectrumSet, cells: dict[str, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per source: (indices into the offset table, projection onto span{1, cell SOH - mean}) of its cells."""
    out = []
    for source in spectra.sources():
        names = [c for c in spectra.filter(source=source).cells() if c in cells]
        if not names:
            continue
        soh = np.array([np.mean([s.soh for s in spectra.filter(cells=[c])]) for c in names])
        x = np.column_stack([np.ones(len(names)), soh - soh.mean()])
        proj = x @ np.linalg.pinv(x)
        out.append((np.array([cells[c] for c in names], np.int32), proj.astype(np.float32)))
    return out


def _observable_grids(data: Arrays, n_profiles: int) -> np.ndarray:
    """(n_profiles, OBSERVABLE_POINTS + 1) frequencies: the profile's band, log-spaced, then 0.1 Hz."""
    grids = np.empty((n_profiles, OBSERVABLE_POINTS + 1), np.float32)
    for k in range(n_profiles):
        sel = data.profile == k
        f = data.freq_hz[sel][data.mask[sel] > 0] if sel.any() else np.array([1e4, 1e-2])
        grids[k, :-1] = np.geomspace(float(f.max()), float(f.min()), OBSERVABLE_POINTS)
        grids[k, -1] = LOW_FREQ_HZ
    return grids


def fit(
    spectra: SpectrumSet,
    profiles: list[str],
    config: TrainConfig,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> Fitted:
    """Train the PINN on every spectrum of ``spectra`` (clean, labelled); ``profiles`` fixes the one-hot
    order. ``stop`` (interrupt.StopOnSignal): asked after each epoch; True ends the training there."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    import keras
    import tensorflow as tf

    from .physics import circuit_impedance
    from .pinn import build_pinn

    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    spectra = every_nth_cycle(spectra, config.cycle_stride)
    cells = {cell: i + 1 for i, cell in enumerate(spectra.cells())}
    tr = to_arrays(spectra, profiles, cells)
    model = build_pinn(len(profiles), len(cells), config.hidden)
    net = model.get_layer("param_net")
    present = sorted(set(tr.profile.tolist()))
    fallback = _initial_bias(tr, present[0])
    net.bias.assign(
        np.stack([_initial_bias(tr, k) if k in present else fallback for k in range(len(profiles))])
    )
    optimizer = keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(
            config.learning_rate, config.epochs * (len(tr) // config.batch_size + 1), alpha=0.02
        )
    )
    single_age = {
        src
        for src in spectra.sources()
        if all(
            np.ptp([s.soh for s in spectra.filter(cells=[c])]) < 1e-9
            for c in spectra.filter(source=src).cells()
        )
    }
    dropout = np.array(
        [config.cell_dropout_single_age if src in single_age else config.cell_dropout for src in tr.source]
    )
    # Equal total weight per source.
    sources = sorted(set(tr.source))
    counts = {s: tr.source.count(s) for s in sources}
    weight = np.array([1.0 / (len(sources) * counts[s]) for s in tr.source], np.float32) * len(tr)
    n_profiles = len(profiles)
    rng = np.random.default_rng(config.seed)
    res_idx = [int(i) for i in RESISTANCES]
    centring = [(tf.constant(i), tf.constant(m)) for i, m in _centring_projections(spectra, cells)]
    obs_grids = tf.constant(_observable_grids(tr, n_profiles))

    def log_params(profile: Any, cell: Any, soc: Any, temp: Any, soh: Any) -> Any:
        return tf.math.log(net.transform(net.raw(profile, cell, soc, soh, temp), profile, temp))

    def net_raw(profile: Any, cell: Any, soc: Any, temp: Any, soh: Any) -> Any:
        return net.raw(profile, cell, soc, soh, temp)

    def observables(profile: Any, cell: Any, soc: Any, temp: Any, soh: Any) -> Any:
        """log(series resistance), log|Z(0.1 Hz)|: (n, 2)."""
        params = net.transform(net.raw(profile, cell, soc, soh, temp), profile, temp)
        re, im = circuit_impedance(params, tf.gather(obs_grids, profile))
        series = tf.reduce_min(re[:, :-1], axis=1)
        low = tf.sqrt(re[:, -1] ** 2 + im[:, -1] ** 2)
        return tf.math.log(tf.stack([series, low], axis=1))

    @tf.function(reduce_retracing=True)  # type: ignore[untyped-decorator]
    def step(batch: dict[str, Any], w: Any, col: dict[str, Any]) -> dict[str, Any]:
        with tf.GradientTape() as tape:
            inputs = {k: batch[k] for k in ("profile", "cell", "op", "freq_hz")}
            out = model(inputs, training=True)
            err2 = ((out["z_re"] - batch["z_re"]) ** 2 + (out["z_im"] - batch["z_im"]) ** 2) * batch["mask"]
            n = tf.reduce_sum(batch["mask"], axis=1)
            mag = tf.reduce_sum(tf.sqrt(batch["z_re"] ** 2 + batch["z_im"] ** 2) * batch["mask"], axis=1) / n
            data = tf.reduce_mean(w * (tf.reduce_sum(err2, axis=1) / n) / mag**2)
            p, c, soc, t, soh = col["profile"], col["cell"], col["soc"], col["temp_c"], col["soh"]
            lp = log_params(p, c, soc, t, soh)
            lp_aged = log_params(p, c, soc, t, soh - SOH_STEP)
            mono = tf.reduce_mean(tf.nn.relu(tf.gather(lp - lp_aged, res_idx, axis=1)) ** 2)
            lp_up = log_params(p, c, tf.minimum(soc + SOC_STEP, 1.0), t, soh)
            lp_dn = log_params(p, c, tf.maximum(soc - SOC_STEP, 0.0), t, soh)
            smooth = tf.reduce_mean((lp_up - 2 * lp + lp_dn) ** 2)
            raw_warm = net_raw(p, c, soc, t + TEMP_STEP, soh)
            arrhenius = tf.reduce_mean((raw_warm - net_raw(p, c, soc, t, soh)) ** 2)
            ob = observables(p, c, soc, t, soh)
            ob_cold = observables(p, c, soc, t - OBSERVABLE_TEMP_STEP, soh)
            ob_aged = observables(p, c, soc, t, soh - OBSERVABLE_SOH_STEP)
            observable = tf.reduce_mean(tf.nn.relu(ob - ob_cold + OBSERVABLE_MARGIN) ** 2) + tf.reduce_mean(
                tf.nn.relu(ob - ob_aged + OBSERVABLE_MARGIN) ** 2
            )
            table = net.latent.embeddings
            latent = tf.reduce_mean(table**2)
            centre = tf.constant(0.0)
            for idx, proj in centring:
                centre += tf.reduce_mean(tf.matmul(proj, tf.gather(table, idx)) ** 2)
            loss = (
                data
                + config.w_monotonic * mono
                + config.w_smooth * smooth
                + config.w_latent * latent
                + config.w_arrhenius * arrhenius
                + config.w_observable * observable
                + config.w_centre * centre
            )
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return {
            "loss": loss,
            "data": data,
            "monotonic": mono,
            "smooth": smooth,
            "arrhenius": arrhenius,
            "observable": observable,
            "centre": centre,
        }

    def collocation() -> dict[str, Any]:
        n = config.n_collocation
        lo, hi = COLLOCATION_RANGES["soh"]
        t_lo, t_hi = COLLOCATION_RANGES["temp_c"]
        return {
            "profile": rng.integers(0, n_profiles, n).astype(np.int32),
            "cell": np.where(rng.random(n) < 0.5, 0, rng.integers(1, len(cells) + 1, n)).astype(np.int32),
            # a quarter at the SOC ends, where the data stop and the grid check looks (SOC 0 and 1)
            "soc": np.where(
                rng.random(n) < 0.25, rng.integers(0, 2, n), rng.uniform(*COLLOCATION_RANGES["soc"], n)
            ).astype(np.float32),
            "temp_c": rng.uniform(t_lo + OBSERVABLE_TEMP_STEP, t_hi, n).astype(np.float32),
            "soh": rng.uniform(lo + OBSERVABLE_SOH_STEP, hi, n).astype(np.float32),
        }

    started = time.monotonic()
    history: list[dict[str, float]] = []
    for epoch in range(config.epochs):
        order = rng.permutation(len(tr))
        sums: dict[str, float] = {}
        batches = 0
        for start in range(0, len(tr), config.batch_size):
            idx = order[start : start + config.batch_size]
            b = tr.take(idx)
            cell = np.where(rng.random(len(idx)) < dropout[idx], 0, b.cell).astype(np.int32)
            batch = {
                "profile": b.profile,
                "cell": cell,
                "op": b.op,
                "freq_hz": b.freq_hz,
                "z_re": b.z_re,
                "z_im": b.z_im,
                "mask": b.mask,
            }
            step_metrics = step(batch, weight[idx], collocation())
            for k, v in step_metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            batches += 1
        epoch_metrics = {k: v / batches for k, v in sums.items()}
        history.append(epoch_metrics)
        if progress is not None:
            progress(epoch, epoch_metrics)
        if stop is not None and stop():
            break
    return Fitted(model, profiles, cells, history, round(time.monotonic() - started, 1))


def train(
    spectra: SpectrumSet,
    out_dir: Path,
    config: TrainConfig,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Train on ``spectra`` (clean, labelled), write model.keras and metadata.json to ``out_dir``. When
    ``stop`` ends the training early, the model of the last whole epoch is written, marked ``interrupted``
    with ``epochs_trained`` in the metadata."""
    import keras
    import tensorflow as tf

    from .calibrate import predict

    if config.val_fraction > 0:
        train_set, val_set = split_by_cell(spectra, config.val_fraction, config.seed)
    else:
        train_set, val_set = spectra, SpectrumSet.of([])
    profiles = spectra.profiles()
    log.info(
        "training data",
        train_spectra=len(train_set),
        val_spectra=len(val_set),
        train_cells=len(train_set.cells()),
        val_cells=len(val_set.cells()),
        profiles=profiles,
    )
    fitted = fit(train_set, profiles, config, progress, stop)
    model, cells = fitted.model, fitted.cells
    metrics: dict[str, Any] = {}
    for name, part in (("train", train_set), ("val", val_set)):
        if not len(part):
            continue
        a = to_arrays(part, profiles, cells)
        e = nrmse(*predict(model, a), a)
        for src in sorted(set(a.source)):
            sel = np.array([s == src for s in a.source])
            metrics[f"{name}/{src}"] = {
                "median": float(np.median(e[sel])),
                "p90": float(np.percentile(e[sel], 90)),
                "n": int(sel.sum()),
            }
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "model.keras"
    model.save(model_path)
    ranges = {
        prof: {
            key: [float(np.min(col)), float(np.max(col))]
            for key, col in zip(
                ("soc", "temp_c", "soh"), np.asarray(spectra.filter(profile=prof).labels()).T, strict=True
            )
        }
        for prof in profiles
    }
    metadata = {
        "format": 1,
        "model_file": model_path.name,
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "training_data_sha256": content_hash(spectra),
        "profiles": profiles,
        "cells": cells,
        "validation_cells": val_set.cells(),
        "input_ranges": ranges,
        "freq_grids": {prof: spectra.filter(profile=prof)[0].freq_hz.tolist() for prof in profiles},
        "config": dataclasses.asdict(config),
        "metrics": metrics,
        "train_seconds": fitted.seconds,
        "final_losses": fitted.history[-1] if fitted.history else {},
        "versions": {"keras": keras.__version__, "tensorflow": tf.__version__, "numpy": np.__version__},
        "epochs_trained": len(fitted.history),
        "interrupted": len(fitted.history) < config.epochs,
    }
    (out_dir / "metadata.json").write_text(json.dumps(metadata, indent=1) + "\n", encoding="utf-8")
    log.info("model written", path=str(model_path), seconds=metadata["train_seconds"], metrics=metrics)
    return metadata
