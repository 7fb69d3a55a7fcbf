"""The one place where command-line values are checked before a command starts: the range of every numeric
option (``LIMITS``) and every output path (``OUTPUTS``). ``main`` applies ``check_args`` to the parsed
options of every command; a problem is one line naming the option, and exit status 2.

The ranges are those of the matching scenario key or CONTROL argument (the constants are imported, not
copied): ``serve --speed`` takes what SET_SPEED takes, ``spectrum --soh`` what ``cells.soh`` takes.

An output is checked for what would make the command fail after its work: a file name that is a directory,
a directory that does not exist or is not one, a place that does not take a new file (probed by creating
and removing one), a name the file system cannot hold.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hil_server.scenario._loader import (
    CELL_TEMP_RANGE,
    FREQ_RANGE,
    MAX_CELLS,
    MAX_SEED,
    SOC_RANGE,
    SOH_RANGE,
)
from hil_server.scenario._reader import Range


class UsageError(ValueError):
    """Bad input on the command line or in a file it names: ``main`` prints the message, exit status 2 (a
    ValueError, so that the commands' own handlers of bad values catch it too)."""


PORT = Range(0, 65535, integer=True)
"""A port to listen on: 0 asks the OS for a free one."""
REMOTE_PORT = Range(1, 65535, integer=True)
"""A port to connect to."""
SPEED = Range(0, (2**63 - 1) / 1e6)
"""The speed factors a CONTROL SET_SPEED can carry (i64 parts per million, >= 0; SPEC.md)."""
POSITIVE = Range(0, lo_open=True)
NONNEG = Range(0)
AT_LEAST_1 = Range(1, integer=True)
NONNEG_INT = Range(0, integer=True)
SEED = Range(0, MAX_SEED, integer=True)
"""The scenario key ``seed``."""
DIVIDER = Range(1, 65535, integer=True)
"""SUBSCRIBE ``divider`` (u16, at least 1)."""
FRACTION_OPEN = Range(0, 1, lo_open=True)


@dataclasses.dataclass(frozen=True)
class Limit:
    range: Range
    source: str = ""
    """Where the same limit applies too (a scenario key, a CONTROL), for the message."""


FREQUENCY = Limit(FREQ_RANGE, "as the scenario key eis.frequencies_hz")
"""A frequency in Hz (``spectrum --freqs``)."""

ANY = "*"
LIMITS: dict[str, dict[str, Limit]] = {
    # option dest -> {command (or ANY) -> limit}; every value of a list option is checked
    "port": {
        "serve": Limit(PORT),
        "replay": Limit(PORT),
        "client": Limit(REMOTE_PORT),
        "record": Limit(REMOTE_PORT),
    },
    "speed": {ANY: Limit(SPEED, "as CONTROL SET_SPEED")},
    "max_clients": {ANY: Limit(AT_LEAST_1)},
    "seconds": {ANY: Limit(POSITIVE)},
    "count": {"record": Limit(AT_LEAST_1), "client": Limit(NONNEG_INT)},
    "plot_cells": {ANY: Limit(NONNEG_INT)},
    "loop": {"replay": Limit(NONNEG_INT)},
    "skip": {ANY: Limit(NONNEG)},
    "max_gap": {ANY: Limit(POSITIVE)},
    "max_s": {ANY: Limit(POSITIVE)},
    "seed": {ANY: Limit(SEED, "as the scenario key seed")},
    "seeds": {ANY: Limit(SEED, "as the scenario key seed")},
    "divider": {ANY: Limit(DIVIDER, "as SUBSCRIBE divider")},
    # labels of instrument files (convert, train, calibrate) have the data reader's ranges (_common.py)
    "soc": {"spectrum": Limit(SOC_RANGE, "as the scenario key cells.soc")},
    "soh": {"spectrum": Limit(SOH_RANGE, "as the scenario key cells.soh")},
    "temp_c": {"spectrum": Limit(CELL_TEMP_RANGE, "as the scenario key cells.temp_c")},
    "cells": {"demo": Limit(Range(1, MAX_CELLS, integer=True), "as the scenario key cells.count")},
    "epochs": {ANY: Limit(AT_LEAST_1)},
    "cv_epochs": {ANY: Limit(AT_LEAST_1)},
    "mlp_epochs": {ANY: Limit(AT_LEAST_1)},
    "cv": {ANY: Limit(Range(2, integer=True), "cross-validation needs at least 2 folds")},
    "workers": {ANY: Limit(AT_LEAST_1)},
    "timeout": {ANY: Limit(POSITIVE)},
    "baud": {ANY: Limit(AT_LEAST_1)},
    "bitrate": {ANY: Limit(AT_LEAST_1)},
    "data_bitrate": {ANY: Limit(AT_LEAST_1)},
    "eis_interval": {ANY: Limit(POSITIVE)},
    "queue_ms": {ANY: Limit(POSITIVE)},
    "reopen_timeout": {ANY: Limit(NONNEG)},
    "latency_timer_ms": {ANY: Limit(Range(1, 255, integer=True), "the FTDI latency timer")},
    "until": {ANY: Limit(POSITIVE)},
    "max_load": {ANY: Limit(FRACTION_OPEN)},
}
"""The range of each numeric option (by ``dest``), per command or for every command that has it."""

FILE = "file"
"""An output file: created or replaced; its directory must exist and take a new file."""
NEW_FILE = "new file"
"""An output file that must not exist yet (the command refuses to overwrite)."""
DIRECTORY = "directory"
"""An output directory: created (with its parents) if missing; must take a new file."""

OUTPUTS: dict[str, dict[str, str]] = {
    # command -> {option dest -> kind}
    "serve": {"record": NEW_FILE},
    "train": {"out": DIRECTORY},
    "evaluate": {"json": FILE},
    "spectrum": {"out": FILE},
    "export-tflite": {"out": FILE},
    "run": {"out": DIRECTORY},
    "sweep": {"out": DIRECTORY},
    "client": {"out": FILE},
    "record": {"out": FILE},
    "export": {"pcap": FILE},
    "can-bridge": {"log": FILE},
    "convert": {"output": FILE},
    "capture": {"repair": NEW_FILE},
}
"""Every output path of every command (``export --out`` is a directory or a .mf4 file: ``export.check``)."""

NAME_MAX = 255
"""Longest file name (bytes) on the file systems this runs on (ext4, xfs, btrfs, NTFS, APFS)."""


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_value(option: str, value: float, limit: Limit) -> str | None:
    """The problem with ``value`` of ``option``, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{option} {value}: not a finite number; expected {limit.range.describe()}"
    if limit.range.contains(value):
        return None
    source = f" ({limit.source})" if limit.source else ""
    shown = str(value) if isinstance(value, int) else f"{value:g}"  # an integer as typed, not 1.84467e+19
    return f"{option} {shown}: expected {limit.range.describe()}{source}"


def check_fields(command: str, where: str, values: dict[str, float]) -> str | None:
    """The first of ``values`` (option dest -> value, e.g. a row of ``spectrum --points``) outside the
    limit its option has in ``command``, as ``where: name value: expected ...``, or None."""
    for dest, value in values.items():
        by_command = LIMITS.get(dest, {})
        limit = by_command.get(command) or by_command.get(ANY)
        problem = None if limit is None else check_value(dest, value, limit)
        if problem:
            return f"{where}: {problem}"
    return None


def _probe(directory: Path) -> str | None:
    """Whether ``directory`` takes a new file (created and removed at once), as one problem or None."""
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".eis-hil-probe-"):
            pass
    except OSError as exc:
        return f"directory {directory} does not take a new file ({exc.strerror or exc})"
    return None


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path(".")


def check_output(path: Path, kind: str) -> str | None:
    """The problem with output ``path`` of ``kind`` (FILE, NEW_FILE, DIRECTORY), or None."""
    if "\0" in str(path):
        return f"{path!r}: a file name cannot hold a NUL byte"
    if any(len(os.fsencode(part)) > NAME_MAX for part in path.parts):
        return f"{path}: a name in it is longer than {NAME_MAX} bytes"
    if kind == DIRECTORY:
        if path.exists() and not path.is_dir():
            return f"{path}: is a file, expected a directory"
        base = _nearest_existing(path)
        if not base.is_dir():
            return f"{path}: {base} is a file, not a directory"
        problem = _probe(base)
        return f"{path}: {problem}" if problem else None
    if path.is_dir():
        return f"{path}: is a directory, expected a file name"
    if kind == NEW_FILE and path.exists():
        return f"{path}: exists; refusing to overwrite it"
    parent = path.parent
    if not parent.exists():
        return f"{path}: directory {parent} does not exist"
    if not parent.is_dir():
        return f"{path}: {parent} is not a directory"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path}: not writable"
    problem = _probe(parent)
    return f"{path}: {problem}" if problem else None


DISTINCT = frozenset({"seeds"})
"""List options whose values must differ: ``run --seeds 1 1`` ran two runs into the one directory
``seed=1``, each overwriting the other's files."""


def _values(value: object) -> Sequence[object]:
    return value if isinstance(value, list | tuple) else [value]


def option_names(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    """dest -> what the user typed for it in ``command``: ``--max-clients``, or ``PORT`` for a positional."""
    names: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            for sub in action.choices[command]._actions:
                if sub.option_strings:
                    names[sub.dest] = max(sub.option_strings, key=len)
                else:
                    names[sub.dest] = str(sub.metavar or sub.dest).upper()
    return names


def check_args(command: str, args: argparse.Namespace, names: dict[str, str] | None = None) -> str | None:
    """The first problem with the options of ``command`` (range, output), as one line, or None. ``names``:
    ``option_names`` of the command (default: ``--`` and the dest)."""
    names = names or {}
    for dest, by_command in LIMITS.items():
        limit = by_command.get(command) or by_command.get(ANY)
        value = getattr(args, dest, None)
        if limit is None or value is None:
            continue
        for item in _values(value):
            if isinstance(item, int | float) and not isinstance(item, bool):
                problem = check_value(names.get(dest, _flag(dest)), item, limit)
                if problem:
                    return problem
    for dest in DISTINCT:
        items = list(_values(getattr(args, dest, None) or []))
        repeated = sorted({str(v) for v in items if items.count(v) > 1})
        if repeated:
            return f"{names.get(dest, _flag(dest))}: {', '.join(repeated)} given more than once"
    for dest, kind in OUTPUTS.get(command, {}).items():
        value = getattr(args, dest, None)
        if value == "":
            return f"{names.get(dest, _flag(dest))}: an empty file name"
        if value:
            problem = check_output(Path(value), kind)
            if problem:
                return f"{names.get(dest, _flag(dest))} {problem}"
    return None


__all__ = [
    "LIMITS",
    "OUTPUTS",
    "UsageError",
    "check_args",
    "check_fields",
    "check_output",
    "check_value",
    "option_names",
]
