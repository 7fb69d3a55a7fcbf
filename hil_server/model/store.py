"""Loading a trained model directory (model.keras + metadata.json) with errors that say which file and why."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent / "bundled"


class ModelLoadError(Exception):
    """A model directory that cannot be used: the message names the file and the reason."""


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    path: Path
    profiles: list[str]
    cells: dict[str, int]
    input_ranges: dict[str, dict[str, list[float]]]
    model_sha256: str
    raw: dict[str, Any]

    def profile_index(self, profile: str) -> int:
        try:
            return self.profiles.index(profile)
        except ValueError:
            raise ModelLoadError(
                f"unknown profile {profile!r}; this model has {', '.join(self.profiles)}"
            ) from None


def read_metadata(model_dir: Path) -> ModelMetadata:
    meta_path = model_dir / "metadata.json"
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(
            f"{meta_path}: missing (a model directory holds model.keras and metadata.json)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{meta_path}: unreadable or not JSON ({exc})") from None
    try:
        meta = ModelMetadata(
            path=model_dir / raw["model_file"],
            profiles=list(raw["profiles"]),
            cells=dict(raw["cells"]),
            input_ranges=dict(raw["input_ranges"]),
            model_sha256=str(raw["model_sha256"]),
            raw=raw,
        )
    except (KeyError, TypeError) as exc:
        raise ModelLoadError(f"{meta_path}: missing or malformed field {exc}") from None
    if not meta.path.is_file():
        raise ModelLoadError(f"{meta.path}: missing (named by {meta_path})")
    digest = hashlib.sha256(meta.path.read_bytes()).hexdigest()
    if digest != meta.model_sha256:
        raise ModelLoadError(
            f"{meta.path}: sha256 {digest[:12]}.. does not match metadata.json ({meta.model_sha256[:12]}..): "
            "the file is corrupt or belongs to another training run"
        )
    return meta


def load_keras_model(model_dir: Path) -> tuple[Any, ModelMetadata]:
    """The Keras model and its metadata. Imports TensorFlow (seconds): training, evaluation, export only."""
    meta = read_metadata(model_dir)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    import keras

    from . import physics, pinn  # noqa: F401  (registers the custom layers)

    try:
        model = keras.saving.load_model(meta.path, compile=False)
    except Exception as exc:  # keras raises many types for a bad archive; all mean the same to the user
        raise ModelLoadError(
            f"{meta.path}: not a loadable Keras model ({type(exc).__name__}: {exc})"
        ) from None
    net = model.get_layer("param_net")
    if net.n_profiles != len(meta.profiles) or net.n_cells != len(meta.cells):
        raise ModelLoadError(
            f"{meta.path}: model has {net.n_profiles} profiles and {net.n_cells} cells, metadata.json lists "
            f"{len(meta.profiles)} and {len(meta.cells)}"
        )
    return model, meta
