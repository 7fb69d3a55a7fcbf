"""The one reader of the text files a user hands in (scenarios, spectra CSV, operating points, frequency
lists): size-limited, UTF-8 (a BOM is allowed), and a file that is not text is one error naming the file,
the line and the byte, never a ``UnicodeDecodeError`` traceback.

    text = read_text(path)                  # TextFileError: "points.csv:3: not UTF-8 text (byte 0xff ...)"
    text = decode_text(data, str(path))     # bytes already read (the scenario loader)
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_TEXT_BYTES = 64 << 20
"""Largest text file read whole (64 MiB): a wrong file (an image, a capture) is refused, not loaded."""


class TextFileError(ValueError):
    """A text file cannot be read: ``path``, ``line`` (1-based, None when it is about the whole file) and
    ``message``; ``str()`` is ``path:line: message``."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")
        self.path = path
        self.line = line
        self.message = message


def decode_text(data: bytes, path: str) -> str:
    """``data`` as text; TextFileError naming the line of the first NUL byte or invalid UTF-8 sequence."""
    nul = data.find(b"\0")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if 0 <= nul < exc.start:
            raise _binary(data, nul, path) from None
        line = data[: exc.start].count(b"\n") + 1
        raise TextFileError(
            path, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None
    if nul >= 0:
        raise _binary(data, nul, path)
    return text


def _binary(data: bytes, at: int, path: str) -> TextFileError:
    line = data[:at].count(b"\n") + 1
    return TextFileError(path, line, f"binary data, not text (a NUL byte at offset {at})")


def not_a_file(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be read as an input file (missing, a directory, something else), or None."""
    file = Path(path)
    if file.is_file():
        return None
    if file.is_dir():
        return "is a directory, expected a file"
    return "file not found" if not file.exists() else "not a regular file"


def read_text(path: str | os.PathLike[str], limit: int = MAX_TEXT_BYTES) -> str:
    """The text of ``path``; TextFileError if it is missing, unreadable, larger than ``limit`` or not
    UTF-8 text."""
    where = str(path)
    try:
        with Path(path).open("rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise TextFileError(where, None, "file not found") from None
    except IsADirectoryError:
        raise TextFileError(where, None, "is a directory, expected a file") from None
    except OSError as exc:
        raise TextFileError(where, None, f"cannot read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise TextFileError(where, None, f"file larger than {limit} bytes: not a text file this reads")
    return decode_text(data, where)


__all__ = ["MAX_TEXT_BYTES", "TextFileError", "decode_text", "not_a_file", "read_text"]
