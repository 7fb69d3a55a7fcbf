"""Cell profiles: the model's built-in ones (one per data source) and calibrated ones made by
``eis-hil calibrate`` (a built-in profile plus the log-offsets, and optionally the aging rate, of one
physical cell).

``cell_latent`` is the one definition of what a profile adds to the network's output at an operating point:
zero for a built-in profile (its typical cell), ``offset + rate * (1 - SOH)`` for a calibrated one. The
stream (sim.source.PinnCircuitSource), ``eis-hil spectrum``, calibration and evaluation all go through it.

Calibrated profiles are JSON files in the profiles directory: ``$EIS_HIL_PROFILES`` or
``~/.local/share/eis-hil/profiles``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .circuit import N_PARAMS
from .store import ModelLoadError, ModelMetadata

ENV_VAR = "EIS_HIL_PROFILES"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""The one rule for a name: profiles, scenario names and labels, sweep names (a file-name-safe word)."""


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    base: str
    """The built-in profile whose network branch it uses."""
    latent: tuple[float, ...] | None
    """Log-offsets of the circuit parameters; None for a built-in profile (its typical cell: offset 0)."""
    model_sha256: str | None = None
    source_file: str | None = None
    aging: tuple[float, ...] | None = None
    """Aging rate (log-change per unit of SOH lost, beyond the typical cell's), when the calibration's spectra
    spanned enough SOH to show it; None: the cell ages like the typical cell."""

    def latents(self, soh: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """(n, N_PARAMS) what this profile adds to the network's raw output at each SOH."""
        return cell_latent(self.latent, self.aging, soh)


def cell_latent(
    offset: npt.ArrayLike | None, rate: npt.ArrayLike | None, soh: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """(n, N_PARAMS): ``offset + rate * (1 - soh)``; zeros for the typical cell (offset None)."""
    soh_arr = np.atleast_1d(np.asarray(soh, np.float64))
    out = np.zeros((soh_arr.size, N_PARAMS))
    if offset is not None:
        out += np.asarray(offset, np.float64)
    if rate is not None:
        out += np.asarray(rate, np.float64) * (1.0 - soh_arr)[:, None]
    return out


def profiles_dir() -> Path:
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path.home() / ".local" / "share" / "eis-hil" / "profiles"


def save_calibrated(profile: Profile, directory: Path | None = None) -> Path:
    if not NAME_RE.match(profile.name):
        raise ValueError(f"profile name {profile.name!r}: use letters, digits, '_', '.', '-' (at most 64)")
    target = (directory or profiles_dir()) / f"{profile.name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(dataclasses.asdict(profile), indent=1) + "\n", encoding="utf-8")
    return target


def list_profiles(meta: ModelMetadata, directory: Path | None = None) -> list[Profile]:
    found = [Profile(name, name, None) for name in meta.profiles]
    folder = directory or profiles_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            found.append(_read(path))
    return found


def _read(path: Path) -> Profile:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Profile(
            raw["name"],
            raw["base"],
            tuple(float(x) for x in raw["latent"]),
            raw.get("model_sha256"),
            raw.get("source_file"),
            tuple(float(x) for x in raw["aging"]) if raw.get("aging") is not None else None,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path}: not a calibrated profile ({exc})") from None


def resolve(name: str, meta: ModelMetadata, directory: Path | None = None) -> Profile:
    if name in meta.profiles:
        return Profile(name, name, None)
    path = (directory or profiles_dir()) / f"{name}.json"
    if not path.is_file():
        known = ", ".join(p.name for p in list_profiles(meta, directory))
        raise ModelLoadError(
            f"unknown profile {name!r} (known: {known}; calibrated profiles live in {path.parent})"
        )
    profile = _read(path)
    if profile.base not in meta.profiles:
        raise ModelLoadError(
            f"{path}: base profile {profile.base!r} is not in this model ({', '.join(meta.profiles)})"
        )
    if profile.model_sha256 and profile.model_sha256 != meta.model_sha256:
        raise ModelLoadError(
            f"{path}: calibrated against another model (sha256 {profile.model_sha256[:12]}..); "
            "calibrate again with this model"
        )
    return profile
