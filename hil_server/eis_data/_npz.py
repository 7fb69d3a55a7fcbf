"""Compact training-set file: a SpectrumSet as a compressed .npz of flat arrays, with a content hash.

Layout (no pickled objects, so `allow_pickle=False` loads it): per-spectrum label arrays, string arrays, and
the ragged frequency/impedance data concatenated with an `offsets` array (spectrum i is
points[offsets[i]:offsets[i + 1]]). The hash is sha256 over the canonical arrays in a fixed order, each with
its dtype and shape, so it identifies the data independently of compression or file name.

The file itself is byte-for-byte reproducible (fixed zip timestamps and member order), so the sha256 of the
file is stable too and a provenance file can cite it.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ._schema import EisDataError, Spectrum, SpectrumSet

FORMAT_VERSION = 1
_STRING_FIELDS = ("source", "cell_id", "profile", "state", "flags", "origin")
_ARRAY_ORDER = (
    "offsets",
    "freq_hz",
    "z_re",
    "z_im",
    "soc",
    "temp_c",
    "soh",
    "cycle",
    *_STRING_FIELDS,
)
_NO_CYCLE = -1
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def _to_arrays(spectra: SpectrumSet) -> dict[str, NDArray[np.generic]]:
    lengths = np.array([s.n_points for s in spectra], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    empty = np.zeros(0)
    z = np.concatenate([s.z for s in spectra]) if len(spectra) else empty.astype(np.complex128)
    arrays: dict[str, NDArray[np.generic]] = {
        "offsets": offsets,
        "freq_hz": np.concatenate([s.freq_hz for s in spectra]) if len(spectra) else empty,
        "z_re": np.ascontiguousarray(z.real, dtype=np.float64),
        "z_im": np.ascontiguousarray(z.imag, dtype=np.float64),
        "soc": spectra.soc,
        "temp_c": spectra.temp_c,
        "soh": spectra.soh,
        "cycle": np.array([_NO_CYCLE if s.cycle is None else s.cycle for s in spectra], dtype=np.int64),
    }
    for name in _STRING_FIELDS:
        values = [_string_field(s, name) for s in spectra]
        arrays[name] = np.array(values, dtype=np.str_) if values else np.zeros(0, dtype="<U1")
    return arrays


def _string_field(s: Spectrum, name: str) -> str:
    if name == "flags":
        return ",".join(s.flags)
    if name == "state":
        return s.state or ""
    value = getattr(s, name)
    assert isinstance(value, str)
    return value


def _hash(arrays: dict[str, NDArray[np.generic]]) -> str:
    h = hashlib.sha256(f"eis-hil spectra v{FORMAT_VERSION}".encode())
    for name in _ARRAY_ORDER:
        arr = arrays[name]
        h.update(name.encode() + b"\0")
        if arr.dtype.kind == "U":
            # Fixed-width unicode pads to the longest string; hash the strings themselves instead.
            data = "\x1f".join(arr.tolist()).encode()
            h.update(f"str:{arr.shape}".encode() + b"\0" + data)
        else:
            canon = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
            h.update(f"{canon.dtype.str}:{canon.shape}".encode() + b"\0" + canon.tobytes())
    return h.hexdigest()


def content_hash(spectra: SpectrumSet) -> str:
    """sha256 (hex) of the canonical arrays of a SpectrumSet, the same that save_npz stores."""
    return _hash(_to_arrays(spectra))


def save_npz(spectra: SpectrumSet, path: str | os.PathLike[str]) -> str:
    """Write a compressed .npz and return its content hash (also stored in the file as `sha256`).

    Same layout as ``numpy.savez_compressed`` (``numpy.load`` reads it), but with a fixed timestamp on every
    member, so the same spectra always give the same bytes.
    """
    arrays = _to_arrays(spectra)
    digest = _hash(arrays)
    payload: dict[str, NDArray[np.generic]] = {
        **arrays,
        "sha256": np.array(digest),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
    }
    with zipfile.ZipFile(Path(path), "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, arr in payload.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue(), compresslevel=9)
    return digest


def load_npz(path: str | os.PathLike[str], *, verify: bool = True) -> tuple[SpectrumSet, str]:
    """(spectra, sha256) from a file written by save_npz; with verify, a hash mismatch raises EisDataError."""
    where = str(path)
    with np.load(where, allow_pickle=False) as data:
        missing = [name for name in (*_ARRAY_ORDER, "sha256", "format_version") if name not in data.files]
        if missing:
            raise EisDataError(f"not an eis-hil spectra file: missing arrays {missing}", path=where)
        if int(data["format_version"]) != FORMAT_VERSION:
            raise EisDataError(
                f"format version {int(data['format_version'])}, expected {FORMAT_VERSION}", path=where
            )
        arrays = {name: data[name] for name in _ARRAY_ORDER}
        stored = str(data["sha256"])
    digest = _hash(arrays)
    if verify and digest != stored:
        raise EisDataError(f"content hash mismatch: stored {stored}, computed {digest}", path=where)
    offsets = arrays["offsets"]
    z = arrays["z_re"] + 1j * arrays["z_im"]
    spectra: list[Spectrum] = []
    for i in range(offsets.size - 1):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        cycle = int(arrays["cycle"][i])
        flags = str(arrays["flags"][i])
        spectra.append(
            Spectrum(
                source=str(arrays["source"][i]),
                cell_id=str(arrays["cell_id"][i]),
                profile=str(arrays["profile"][i]),
                soc=float(arrays["soc"][i]),
                temp_c=float(arrays["temp_c"][i]),
                soh=float(arrays["soh"][i]),
                freq_hz=arrays["freq_hz"][lo:hi],
                z=z[lo:hi],
                cycle=None if cycle == _NO_CYCLE else cycle,
                state=str(arrays["state"][i]) or None,
                flags=tuple(flags.split(",")) if flags else (),
                origin=str(arrays["origin"][i]),
            )
        )
    return SpectrumSet(tuple(spectra)), digest
