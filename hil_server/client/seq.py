"""Sequence continuity of one sender (SPEC.md 2.3)."""

from __future__ import annotations

_SEQ_MOD = 2**32


class SeqTracker:
    """Sequence continuity of one sender (SPEC 2.3): each frame's seq is the previous one's plus 1, modulo
    2**32. A forward jump is a gap; the seqs it skipped are *missing* until they arrive late (reordered) or
    for good (lost). A seq seen before, or behind and not missing, is a duplicate."""

    MAX_MISSING = 65536
    """Missing seqs remembered individually; older ones count as lost straight away."""

    def __init__(self) -> None:
        self.expected: int | None = None
        self.gaps = 0
        self.late = 0
        self.duplicates = 0
        self.missing: dict[int, None] = {}
        self.forgotten = 0

    @property
    def lost(self) -> int:
        """Frames skipped by a gap that have not arrived (yet)."""
        return self.forgotten + len(self.missing)

    def see(self, seq: int) -> None:
        if self.expected is None:
            self.expected = (seq + 1) % _SEQ_MOD
            return
        ahead = (seq - self.expected) % _SEQ_MOD
        if ahead == 0:
            self.expected = (seq + 1) % _SEQ_MOD
        elif ahead < _SEQ_MOD // 2:
            self.gaps += 1
            if ahead > self.MAX_MISSING:
                self.forgotten += ahead - self.MAX_MISSING
            for k in range(max(0, ahead - self.MAX_MISSING), ahead):
                self.missing[(self.expected + k) % _SEQ_MOD] = None
            while len(self.missing) > self.MAX_MISSING:
                del self.missing[next(iter(self.missing))]
                self.forgotten += 1
            self.expected = (seq + 1) % _SEQ_MOD
        elif seq in self.missing:
            del self.missing[seq]
            self.late += 1
        else:
            self.duplicates += 1
