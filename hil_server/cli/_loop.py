"""Which asyncio event loop the long-running commands use: uvloop when installed (lower per-send overhead,
faster timers), else the default loop. ``--event-loop`` on the command line overrides the choice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
LOOP_CHOICES = ("auto", "uvloop", "asyncio")


def loop_factory(name: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """None means asyncio's default loop."""
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise ValueError(
                "uvloop is not installed: pip install 'eis-hil[fast]' or use --event-loop asyncio"
            ) from None
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(main)
