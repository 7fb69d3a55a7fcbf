"""Where the measured data lives: an explicit path, else $EIS_HIL_DATA, else <repo>/../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

from ._schema import DataNotFoundError

ENV_VAR = "EIS_HIL_DATA"
# The repository is checked out beside `shared/`, so the default is relative to the repo root.
_REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_ROOT = _REPO_ROOT.parent / "shared" / "data"


def data_root(path: str | os.PathLike[str] | None = None) -> Path:
    """The data directory (the one holding `eis/`). Raises DataNotFoundError naming the path tried."""
    if path is not None:
        root, why = Path(path), "given as a parameter"
    elif os.environ.get(ENV_VAR):
        root, why = Path(os.environ[ENV_VAR]), f"from ${ENV_VAR}"
    else:
        root, why = DEFAULT_DATA_ROOT, f"default; set ${ENV_VAR} to override"
    if not root.is_dir():
        raise DataNotFoundError(f"EIS data directory not found: {root} ({why})")
    return root


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataNotFoundError(f"EIS data file not found: {path}")
    return path
