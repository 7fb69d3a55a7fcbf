"""The PINN: equivalent circuit (numpy), Lin-KK validity test, Keras model, training, evaluation."""

from .circuit import N_PARAMS, P, impedance
from .linkk import LinKKResult, lin_kk

__all__ = ["N_PARAMS", "LinKKResult", "P", "impedance", "lin_kk"]
