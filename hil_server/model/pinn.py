"""The physics-informed network: operating point -> circuit parameters (physical by construction) -> Z(f).

    inputs: profile (int), cell (int, 0 = the profile's typical cell), op = [soc, temp_c, soh], freq_hz (B, F)
    ParamNet: MLP([onehot(profile), soc, soh, temp]) + bias(profile) + offset(cell)  ->  raw (B, N_PARAMS)
    transforms (all at the reference temperature, then Arrhenius):
        resistances, tau_L      exp(raw)                                   > 0
        tau1                    exp(raw)                                   > 0
        tau2 = tau1 * exp(softplus(.)), tau_W = tau2 * exp(softplus(.))    ordered tau1 < tau2 < tau_W
        a1, a2                  0.5 + 0.5 sigmoid(raw)                     in (0.5, 1)
        phi_W                   0.3 + 0.2 sigmoid(raw)                     in (0.3, 0.5)
        R0, R1, R2, R_W, tau1   * exp(Ea/R_gas * (1/T - 1/T_ref)),  Ea = softplus(learned) per profile  >= 0
    CircuitLayer: parameters -> (Re Z, Im Z) at the requested frequencies.

A cell is its profile's typical cell plus constant log-offsets of its circuit parameters (``offset(cell)``):
manufacturing spread in contact resistance or electrode area shifts parameters for the whole life of a cell,
so calibrating the offsets on one spectrum carries over to the rest of its life. (A latent vector fed into
the MLP fitted one spectrum equally well but moved the whole aging trajectory.) The typical cell (index 0)
is offset 0 exactly: its row of the offset table is masked out, so "this profile's typical cell" has one
definition everywhere (the stream, ``eis-hil spectrum``, calibration's starting point, evaluation, TFLite),
and training keeps the training cells' offsets centred and uncorrelated with their SOH (train.py), so that
offset 0 is the population's centre at every SOH rather than one more cell.

Temperature enters twice: through the Arrhenius factors, and as a network input so that the data can show
effects Arrhenius alone cannot (the SOC dependence changing with temperature). With two or three measured
temperatures per source that input could extrapolate arbitrarily, so a loss on collocation points across
-30..60 C holds the network's own temperature dependence near zero (train.py): outside the data, the
temperature behaviour is Arrhenius with positive learned activation energies. SOH monotonicity and SOC
smoothness are taught by losses on collocation points as well.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from .circuit import N_PARAMS, P
from .constants import ARRHENIUS, GAPS, KELVIN, LOG_MAX, LOG_MIN, T_REF_K
from .physics import CircuitLayer


def inverse_temperature(temp_c: Any) -> Any:
    """1/T - 1/T_ref in 1/K."""
    return 1.0 / (temp_c + KELVIN) - 1.0 / T_REF_K


@keras.saving.register_keras_serializable(package="eis_hil")
class ParamNet(keras.layers.Layer):  # type: ignore[misc]
    """[profile (B,), cell (B,), op (B, 3)] -> circuit parameters (B, N_PARAMS) in physical units."""

    def __init__(self, n_profiles: int, n_cells: int, hidden: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_profiles = n_profiles
        self.n_cells = n_cells
        self.latent_dim = N_PARAMS
        """Size of a cell's offset vector (one log-offset per circuit parameter)."""
        self.hidden = hidden
        self.latent = keras.layers.Embedding(
            n_cells + 1, N_PARAMS, embeddings_initializer="zeros", name="latent"
        )
        self.h1 = keras.layers.Dense(hidden, activation="tanh", name="h1")
        self.h2 = keras.layers.Dense(hidden, activation="tanh", name="h2")
        self.out = keras.layers.Dense(
            N_PARAMS, kernel_initializer=keras.initializers.RandomNormal(stddev=1e-3), name="out"
        )

    def build(self, input_shape: Any) -> None:
        self.bias = self.add_weight(
            shape=(self.n_profiles, N_PARAMS), initializer="zeros", name="profile_bias"
        )
        self.activation = self.add_weight(
            shape=(self.n_profiles, len(ARRHENIUS)),
            initializer=keras.initializers.Constant(1.0),
            name="activation_raw",
        )
        self.gap_temp = self.add_weight(
            shape=(self.n_profiles, len(GAPS)), initializer="zeros", name="gap_temp"
        )
        in_dim = self.n_profiles + 3
        self.latent.build((None,))
        self.h1.build((None, in_dim))
        self.h2.build((None, self.hidden))
        self.out.build((None, self.hidden))

    def activation_energy_k(self) -> Any:
        """Ea / R_gas in kelvin, (n_profiles, len(ARRHENIUS)); 1000 K ~ 8.3 kJ/mol."""
        return 1000.0 * ops.softplus(self.activation)

    def raw(self, profile: Any, cell: Any, soc: Any, soh: Any, temp_c: Any, latent: Any | None = None) -> Any:
        onehot = ops.one_hot(ops.cast(profile, "int32"), self.n_profiles)
        if latent is None:
            cell = ops.cast(cell, "int32")
            # Row 0 (the typical cell) never contributes, so it stays at its zero initial value.
            offset = self.latent(cell) * ops.cast(cell > 0, self.compute_dtype)[:, None]
        else:
            offset = latent
        t = (temp_c[:, None] - 25.0) / 20.0
        x = ops.concatenate([onehot, soc[:, None], soh[:, None], t], axis=-1)
        bias = ops.take(self.bias, ops.cast(profile, "int32"), axis=0)
        return self.out(self.h2(self.h1(x))) + bias + offset

    def transform(self, raw: Any, profile: Any, temp_c: Any) -> Any:
        profile = ops.cast(profile, "int32")
        inv_t = inverse_temperature(temp_c)[:, None]
        ea = ops.take(self.activation_energy_k(), profile, axis=0) * inv_t
        gap_t = ops.take(self.gap_temp, profile, axis=0) * inv_t * 1000.0
        log = ops.clip(raw, LOG_MIN, LOG_MAX)
        cols = [log[:, i] for i in range(N_PARAMS)]
        for k, i in enumerate(ARRHENIUS):
            cols[i] = cols[i] + ea[:, k]
        cols[P.TAU2] = cols[P.TAU1] + ops.softplus(raw[:, P.TAU2] + gap_t[:, 0])
        cols[P.TAU_W] = cols[P.TAU2] + ops.softplus(raw[:, P.TAU_W] + gap_t[:, 1])
        out = []
        for i in P:
            if i in (P.A1, P.A2):
                out.append(0.5 + 0.5 * ops.sigmoid(raw[:, i]))
            elif i == P.PHI_W:
                out.append(0.3 + 0.2 * ops.sigmoid(raw[:, i]))
            else:
                out.append(ops.exp(ops.clip(cols[i], LOG_MIN, LOG_MAX)))
        return ops.stack(out, axis=-1)

    def call(self, inputs: list[Any]) -> Any:
        profile, cell, op = inputs
        raw = self.raw(profile, cell, op[:, 0], op[:, 2], op[:, 1])
        return self.transform(raw, profile, op[:, 1])

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(n_profiles=self.n_profiles, n_cells=self.n_cells, hidden=self.hidden)
        return config


def build_pinn(n_profiles: int, n_cells: int, hidden: int = 64) -> keras.Model:
    """The Keras model: inputs profile, cell, op, freq_hz; outputs z_re, z_im, params."""
    profile = keras.Input(shape=(), dtype="int32", name="profile")
    cell = keras.Input(shape=(), dtype="int32", name="cell")
    op = keras.Input(shape=(3,), name="op")
    freq = keras.Input(shape=(None,), name="freq_hz")
    params = ParamNet(n_profiles, n_cells, hidden, name="param_net")([profile, cell, op])
    z_re, z_im = CircuitLayer(name="circuit")([params, freq])
    return keras.Model(
        inputs={"profile": profile, "cell": cell, "op": op, "freq_hz": freq},
        outputs={"z_re": z_re, "z_im": z_im, "params": params},
        name="eis_pinn",
    )
