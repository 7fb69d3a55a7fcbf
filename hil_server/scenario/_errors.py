"""Validation findings and the exception that carries them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Issue:
    """One problem in one file. ``line`` is 1-based; None when there is no position (e.g. file too large)."""

    file: str
    line: int | None
    path: str
    """Key path inside the document, e.g. ``timeline[3].drive_cycle.scale``; empty for the whole file."""
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


def sort_key(issue: Issue) -> tuple[str, int, str]:
    return (issue.file, issue.line if issue.line is not None else 0, issue.path)


class ScenarioError(Exception):
    """A scenario file that cannot be used; ``errors`` lists every problem found, sorted by file and line."""

    def __init__(self, errors: list[Issue]) -> None:
        self.errors = sorted(errors, key=sort_key)
        super().__init__(self.errors)

    def __str__(self) -> str:
        n = len(self.errors)
        head = f"{n} error{'s' if n != 1 else ''} in scenario"
        return "\n".join([head, *(f"  {issue}" for issue in self.errors)])
