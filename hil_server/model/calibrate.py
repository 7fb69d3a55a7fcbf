"""Calibration: a latent vector for one physical cell, fitted to its measured spectra with the network frozen.

The network was trained with one latent vector per training cell (and latent 0 = the profile's typical
cell), so a new cell is another point in the same latent space: a few hundred gradient steps on 4 numbers,
seconds on a CPU, no retraining.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from .dataset import Arrays


def fit_latent(
    model: Any, data: Arrays, *, steps: int = 300, learning_rate: float = 0.05, l2: float = 1e-3
) -> npt.NDArray[np.float32]:
    """The latent vector that best explains ``data`` (spectra of one cell, one profile)."""
    import keras
    import tensorflow as tf

    net = model.get_layer("param_net")
    circuit = model.get_layer("circuit")
    latent = tf.Variable(tf.zeros((1, net.latent_dim)), name="calibration_latent")
    optimizer = keras.optimizers.Adam(learning_rate)
    profile = tf.constant(data.profile)
    op = tf.constant(data.op)
    freq = tf.constant(data.freq_hz)
    z_re, z_im, mask = tf.constant(data.z_re), tf.constant(data.z_im), tf.constant(data.mask)
    n = tf.reduce_sum(mask, axis=1)
    mag = tf.reduce_sum(tf.sqrt(z_re**2 + z_im**2) * mask, axis=1) / n

    @tf.function  # type: ignore[untyped-decorator]
    def step() -> Any:
        with tf.GradientTape() as tape:
            lat = tf.repeat(latent, tf.shape(profile)[0], axis=0)
            raw = net.raw(profile, tf.zeros_like(profile), op[:, 0], op[:, 2], op[:, 1], latent=lat)
            params = net.transform(raw, profile, op[:, 1])
            pre, pim = circuit([params, freq])
            err2 = ((pre - z_re) ** 2 + (pim - z_im) ** 2) * mask
            loss = tf.reduce_mean(tf.reduce_sum(err2, axis=1) / n / mag**2) + l2 * tf.reduce_sum(latent**2)
        optimizer.apply_gradients([(tape.gradient(loss, latent), latent)])
        return loss

    for _ in range(steps):
        step()
    return np.asarray(latent.numpy()[0], np.float32)


def predict(
    model: Any, data: Arrays, latent: npt.ArrayLike | None = None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(z_re, z_im) at ``data``'s operating points: with its cell indices, or one latent vector for all."""
    import tensorflow as tf

    if latent is None:
        out = model(
            {"profile": data.profile, "cell": data.cell, "op": data.op, "freq_hz": data.freq_hz},
            training=False,
        )
        return np.asarray(out["z_re"]), np.asarray(out["z_im"])
    net = model.get_layer("param_net")
    circuit = model.get_layer("circuit")
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
