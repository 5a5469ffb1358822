"""Waiting in a test for what a server does after its answer (a status read in the background,
an access line written once the call is done)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(condition: Callable[[], object], seconds: float = 5.0) -> None:
    """Return once ``condition()`` is true; fail the test if it is still false after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.02)
