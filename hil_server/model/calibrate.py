"""Calibration: one physical cell's offsets (and, given spectra at several ages, its aging rate), fitted to
its measured spectra with the network frozen.

A cell is the profile's typical cell plus constant log-offsets of its circuit parameters (pinn.py), plus, when
it ages unlike the typical cell, a rate: the log-parameters move by ``rate * (1 - SOH)`` beyond what the
network's SOH input does (profiles.cell_latent). What the spectra can determine:

- one spectrum, or spectra all at one age: the offsets only. How this cell will age cannot be seen in them;
  it ages like the profile's typical cell;
- spectra spanning at least ``MIN_SOH_SPAN`` of SOH: offsets and rate, the rate held towards 0 (the typical
  cell's aging) by an L2 prior, so a few spectra close in age cannot extrapolate a wild trend.

A few hundred gradient steps on at most 24 numbers: seconds on a CPU, no retraining.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt

from .dataset import Arrays
from .profiles import cell_latent

MIN_SOH_SPAN = 0.02
"""Spectra spanning less SOH than this cannot show an aging rate: only offsets are fitted."""
L2_OFFSET = 1e-3
L2_RATE = 1e-3


@dataclasses.dataclass(frozen=True)
class CellFit:
    """A calibrated cell: log-offsets (N_PARAMS,) and, if its spectra spanned enough SOH, an aging rate."""

    offset: npt.NDArray[np.float32]
    rate: npt.NDArray[np.float32] | None

    def latents(self, soh: npt.ArrayLike) -> npt.NDArray[np.float32]:
        return cell_latent(self.offset, self.rate, soh).astype(np.float32)


def fit_cell(
    model: Any,
    data: Arrays,
    *,
    aging: bool | None = None,
    steps: int = 300,
    learning_rate: float = 0.05,
    l2: float = L2_OFFSET,
    l2_rate: float = L2_RATE,
) -> CellFit:
    """The offsets that best explain ``data`` (spectra of one cell, one profile), and with ``aging`` the aging
    rate too (default: when the spectra span ``MIN_SOH_SPAN`` of SOH)."""
    import keras
    import tensorflow as tf

    soh_np = data.op[:, 2].astype(np.float32)
    if aging is None:
        aging = float(np.ptp(soh_np)) >= MIN_SOH_SPAN
    net = model.get_layer("param_net")
    circuit = model.get_layer("circuit")
    offset = tf.Variable(tf.zeros((1, net.latent_dim)), name="calibration_offset")
    rate = tf.Variable(tf.zeros((1, net.latent_dim)), name="calibration_rate")
    variables = [offset, rate] if aging else [offset]
    optimizer = keras.optimizers.Adam(learning_rate)
    profile = tf.constant(data.profile)
    op = tf.constant(data.op)
    age = tf.constant((1.0 - soh_np)[:, None])
    freq = tf.constant(data.freq_hz)
    z_re, z_im, mask = tf.constant(data.z_re), tf.constant(data.z_im), tf.constant(data.mask)
    n = tf.reduce_sum(mask, axis=1)
    mag = tf.reduce_sum(tf.sqrt(z_re**2 + z_im**2) * mask, axis=1) / n

    @tf.function  # type: ignore[untyped-decorator]
    def step() -> Any:
        with tf.GradientTape() as tape:
            lat = offset + rate * age
            raw = net.raw(profile, tf.zeros_like(profile), op[:, 0], op[:, 2], op[:, 1], latent=lat)
            params = net.transform(raw, profile, op[:, 1])
            pre, pim = circuit([params, freq])
            err2 = ((pre - z_re) ** 2 + (pim - z_im) ** 2) * mask
            loss = (
                tf.reduce_mean(tf.reduce_sum(err2, axis=1) / n / mag**2)
                + l2 * tf.reduce_sum(offset**2)
                + l2_rate * tf.reduce_sum(rate**2)
            )
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    for _ in range(steps):
        step()
    return CellFit(
        np.asarray(offset.numpy()[0], np.float32), np.asarray(rate.numpy()[0], np.float32) if aging else None
    )


def fit_latent(model: Any, data: Arrays, **kwargs: Any) -> npt.NDArray[np.float32]:
    """Offsets only (one spectrum's worth of information): the calibration's first half."""
    return fit_cell(model, data, aging=False, **kwargs).offset


def predict(
    model: Any, data: Arrays, latent: npt.ArrayLike | CellFit | None = None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(z_re, z_im) at ``data``'s operating points: with its cell indices, or one calibrated cell (offsets, or
    a CellFit whose latent follows each point's SOH) for all."""
    import tensorflow as tf

    if latent is None:
        out = model(
            {"profile": data.profile, "cell": data.cell, "op": data.op, "freq_hz": data.freq_hz},
            training=False,
        )
        return np.asarray(out["z_re"]), np.asarray(out["z_im"])
    net = model.get_layer("param_net")
    circuit = model.get_layer("circuit")
    if isinstance(latent, CellFit):
        lat = tf.constant(latent.latents(data.op[:, 2]))
    else:
        lat = tf.repeat(tf.constant(np.asarray(latent, np.float32)[None, :]), len(data), axis=0)
    raw = net.raw(
        data.profile, np.zeros_like(data.profile), data.op[:, 0], data.op[:, 2], data.op[:, 1], latent=lat
    )
    params = net.transform(raw, data.profile, data.op[:, 1])
    re, im = circuit([params, data.freq_hz])
    return np.asarray(re), np.asarray(im)


def predict_with_latents(
    model: Any, profile: npt.ArrayLike, op: npt.ArrayLike, latents: npt.ArrayLike, freq_hz: npt.ArrayLike
) -> npt.NDArray[np.complex128]:
    """Z (n, F) for n operating points, each with its own profile index, [soc, temp_c, soh] and latent vector,
    at the frequencies ``freq_hz`` (F,)."""
    import tensorflow as tf

    net = model.get_layer("param_net")
    circuit = model.get_layer("circuit")
    prof = np.asarray(profile, np.int32)
    ops = np.asarray(op, np.float32).reshape(-1, 3)
    lat = tf.constant(np.asarray(latents, np.float32).reshape(len(prof), net.latent_dim))
    raw = net.raw(prof, np.zeros_like(prof), ops[:, 0], ops[:, 2], ops[:, 1], latent=lat)
    params = net.transform(raw, prof, ops[:, 1])
    freq = np.broadcast_to(np.asarray(freq_hz, np.float32), (len(prof), np.size(freq_hz)))
    re, im = circuit([params, freq])
    return np.asarray(re, np.float64) + 1j * np.asarray(im, np.float64)


# ---- the calibrate command's checks and report ------------------------------------------------------------

MOHM_RATIO = 100.0
"""Measured |Z| this many times the profile's typical cell: the Ohm columns probably hold mOhm."""
SOH_BAND = 0.05
"""Width of the SOH bands of the leave-later-out report."""
MAX_LATER_OUT = 6


class CalibrationInputError(ValueError):
    """Spectra a calibration cannot use; the message names the file and the spectrum."""


def check_calibration_input(
    data: Arrays, path: str, spectrum_ids: list[str], typical: tuple[Any, Any] | None, *, force: bool
) -> None:
    """Refuse what would fit nonsense: too few points, Re(Z) <= 0, a sign-flipped Im, values in mOhm."""
    from .circuit import N_PARAMS

    for i, sid in enumerate(spectrum_ids):
        m = data.mask[i] > 0
        where = f"{path}: spectrum_id {sid}"
        if int(m.sum()) < N_PARAMS:
            raise CalibrationInputError(
                f"{where}: {int(m.sum())} points; a spectrum needs at least {N_PARAMS} (the circuit has "
                f"{N_PARAMS} parameters)"
            )
        re, im, f = data.z_re[i][m], data.z_im[i][m], data.freq_hz[i][m]
        bad = np.flatnonzero(re <= 0)
        if bad.size:
            j = int(bad[0])
            raise CalibrationInputError(
                f"{where}: Re(Z) = {float(re[j]):.6g} Ohm at {float(f[j]):.6g} Hz; a cell's Re(Z) is positive"
            )
        low = f < 100.0
        if low.sum() >= 3 and np.mean(im[low] > 0) > 0.8:
            raise CalibrationInputError(
                f"{where}: Im(Z) > 0 at {int(np.sum(im[low] > 0))} of {int(low.sum())} points below 100 Hz: "
                "a capacitive arc with Im > 0 means the sign is flipped (the generic CSV uses Im > 0 for "
                "inductive, Im < 0 for capacitive; negate z_im_ohm)"
            )
    if typical is not None and not force:
        t_re, t_im = typical
        ratio = float(np.median(np.hypot(data.z_re, data.z_im)[data.mask > 0])) / float(
            np.median(np.hypot(t_re, t_im)[data.mask > 0])
        )
        if ratio > MOHM_RATIO:
            raise CalibrationInputError(
                f"{path}: |Z| is {ratio:.0f} times the profile's typical cell: are z_re_ohm/z_im_ohm in "
                "mOhm? Convert to Ohm, or pass --force if the cell really is that different"
            )


@dataclasses.dataclass
class CalibrationReport:
    fit: CellFit
    before: npt.NDArray[np.float64]
    """NRMSE per given spectrum with the typical cell."""
    after: npt.NDArray[np.float64]
    """NRMSE per given spectrum with the calibrated cell."""
    soh_span: tuple[float, float]
    later_out: list[tuple[float, float, int, float]]
    """(SOH band low, high, spectra, median NRMSE) of each later band predicted from the earlier ones."""


def calibrate_cell(model: Any, data: Arrays) -> CalibrationReport:
    """Fit one cell and measure how well the fit predicts its later life (leave-later-out per SOH band)."""
    from .dataset import nrmse

    before = nrmse(*predict(model, data), data)
    fit = fit_cell(model, data)
    after = nrmse(*predict(model, data, fit), data)
    soh = data.op[:, 2].astype(np.float64)
    band = np.floor((1.0 - soh) / SOH_BAND + 1e-9).astype(int)
    later: list[tuple[float, float, int, float]] = []
    bands = sorted(set(band.tolist()))
    for b in bands[1:][-MAX_LATER_OUT:]:
        earlier, target = np.flatnonzero(band < b), np.flatnonzero(band == b)
        part = fit_cell(model, data.take(earlier))
        t = data.take(target)
        err = nrmse(*predict(model, t, part), t)
        hi = 1.0 - b * SOH_BAND
        later.append((round(hi - SOH_BAND, 4), round(hi, 4), int(target.size), float(np.median(err))))
    return CalibrationReport(fit, before, after, (float(soh.min()), float(soh.max())), later)


def format_report(report: CalibrationReport, n_spectra: int) -> str:
    lo, hi = report.soh_span
    lines = [
        f"fit on the {n_spectra} given spectra (SOH {lo:.3f}..{hi:.3f}): NRMSE median "
        f"{float(np.median(report.before)):.2%} with the typical cell -> "
        f"{float(np.median(report.after)):.2%} calibrated (p90 {float(np.percentile(report.after, 90)):.2%})"
    ]
    if report.fit.rate is None:
        lines.append(
            f"fitted: the cell's offsets. Not determined: how this cell ages. Its spectra span {hi - lo:.3f} "
            f"of SOH (less than {MIN_SOH_SPAN}), so it will age like the profile's typical cell; give "
            "spectra at several ages to fit its aging rate too"
        )
    else:
        lines.append(
            "fitted: the cell's offsets and its aging rate (held towards the typical cell's by a prior); "
            "beyond the SOH range given, the aging is extrapolated"
        )
    if report.later_out:
        lines.append("leave-later-out (fit on the earlier spectra, predict each later SOH band):")
        for b_lo, b_hi, n, med in report.later_out:
            lines.append(f"  SOH {b_lo:.2f}..{b_hi:.2f}: {n:4d} spectra, NRMSE median {med:.2%}")
    return "\n".join(lines)
