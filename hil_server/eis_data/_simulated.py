"""The simulated source: PyBaMM frequency-domain EIS of an LG M50 cell (Chen2020 parameters), shipped as data.

`tools/gen_pybamm_eis.py` regenerates `simulated/pybamm_chen2020.npz` (the spectra, in the format of
`save_npz`) and `simulated/pybamm_chen2020.json` (how: command, PyBaMM version, parameter set, model options,
contact resistance, plausibility checks). Reading it needs neither PyBaMM nor anything outside the package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ._npz import load_npz
from ._schema import DataNotFoundError, EisDataError, SpectrumSet

SIMULATED_SOURCE = "pybamm_chen2020"
SIMULATED_PROFILE = "lgm50_pybamm"
SIMULATED_CELL = f"{SIMULATED_SOURCE}/lgm50-dfn"
SIMULATED_DIR = Path(__file__).resolve().parent / "simulated"
SIMULATED_PATH = SIMULATED_DIR / f"{SIMULATED_SOURCE}.npz"
REGENERATE = "python tools/gen_pybamm_eis.py  (needs the simdata extra: pip install 'eis-hil[simdata]')"


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The JSON description beside a simulated-spectra file: same name, suffix .json."""
    return Path(path).with_suffix(".json")


def read_simulated_metadata(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The generator's record (JSON sidecar) of the simulated spectra at ``path`` (default: shipped file)."""
    side = sidecar_path(SIMULATED_PATH if path is None else path)
    if not side.is_file():
        raise DataNotFoundError(f"simulated EIS description not found: {side} (regenerate: {REGENERATE})")
    try:
        raw = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EisDataError(f"not a readable JSON file ({exc})", path=str(side)) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("content_sha256"), str):
        raise EisDataError("expected a JSON object with a 'content_sha256' string", path=str(side))
    return raw


def read_pybamm_chen2020(path: str | os.PathLike[str] | None = None) -> SpectrumSet:
    """The simulated LG M50 spectra: source `pybamm_chen2020`, profile `lgm50_pybamm`, one cell, SOH 1.0.

    Checks the file's content hash, that its sidecar describes this very data, and that every spectrum is
    labelled as the simulated source (so a wrong file cannot land under this source by mistake).
    """
    target = SIMULATED_PATH if path is None else Path(path)
    if not target.is_file():
        raise DataNotFoundError(f"simulated EIS file not found: {target} (regenerate: {REGENERATE})")
    meta = read_simulated_metadata(target)
    spectra, digest = load_npz(target)
    where = str(target)
    if meta["content_sha256"] != digest:
        raise EisDataError(
            f"{sidecar_path(target).name} describes other data (content sha256 "
            f"{meta['content_sha256'][:12]}.., file has {digest[:12]}..); regenerate both with {REGENERATE}",
            path=where,
        )
    if not len(spectra):
        raise EisDataError("no spectra in the file", path=where)
    for s in spectra:
        if (s.source, s.profile, s.cell_id) != (SIMULATED_SOURCE, SIMULATED_PROFILE, SIMULATED_CELL):
            raise EisDataError(
                f"spectrum labelled source={s.source!r} profile={s.profile!r} cell={s.cell_id!r}; expected "
                f"{SIMULATED_SOURCE!r}, {SIMULATED_PROFILE!r}, {SIMULATED_CELL!r}",
                path=where,
            )
        if s.flags or s.soh != 1.0:
            raise EisDataError(
                f"spectrum at SOC {s.soc} / {s.temp_c} C: expected SOH 1.0 and no flags, got SOH {s.soh} "
                f"flags {list(s.flags)}",
                path=where,
            )
    return spectra
