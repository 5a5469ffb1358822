"""Client-side moves on a gRPC response stream, as a test's client makes them."""

from __future__ import annotations

from typing import Any


async def cancel_after(call: Any, responses: int) -> None:
    """Read ``responses`` messages of the streaming ``call``, then cancel it (a client that leaves)."""
    seen = 0
    async for _ in call:
        seen += 1
        if seen == responses:
            call.cancel()
            return
