"""Small pieces the command modules share: the shared secret from the command line, and a progress line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def read_secret(args: argparse.Namespace) -> bytes | None:
    """The shared secret of ``--secret-file`` (stripped) or ``--secret-env``; None if neither was given."""
    if getattr(args, "secret_file", None):
        return Path(args.secret_file).read_bytes().strip()
    env = getattr(args, "secret_env", None)
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ValueError(f"environment variable {env} is not set")
        return value.encode()
    return None


class StatusLine:
    """One line of progress on stderr, redrawn in place when stderr is a terminal, at most 4 times a second.
    ``show`` returns False when stderr is not a terminal and ``log_every_s`` has passed since the last time
    it did: the caller logs the progress instead (a log line every 10 s rather than a line per update)."""

    def __init__(self, log_every_s: float = 10.0) -> None:
        self.tty = sys.stderr.isatty()
        self.log_every_s = log_every_s
        self.last = 0.0
        self.last_log = time.monotonic()
        self.width = 0

    def show(self, text: str) -> bool:
        now = time.monotonic()
        if not self.tty:
            if now - self.last_log < self.log_every_s:
                return True  # nothing to do this time
            self.last_log = now
            return False
        if now - self.last >= 0.25:
            self.last = now
            sys.stderr.write("\r" + text.ljust(self.width))
            sys.stderr.flush()
            self.width = len(text)
        return True

    def close(self) -> None:
        if self.tty and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()
