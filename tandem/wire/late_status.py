"""The status of a call whose answer is already whole, read off the caller's path.

A stream's final message (the one with a finish reason) completes the answer; its status follows
a round trip later. The gateway (calls to a language replica) and the Python client (calls to the
gateway) end their streams at the final message and hand the call here: a task awaits its status
and logs one that is not OK. Cancelling the call instead would count a served answer as cancelled
on the server, so ``close`` first gives the pending statuses ``GRACE_SECONDS`` to arrive.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

GRACE_SECONDS = 1.0


class LateStatuses:
    """The pending status reads of one client (a channel's owner); ``log`` gets the failures."""

    def __init__(self, log: logging.Logger):
        self.log = log
        self._pending: set[asyncio.Future[None]] = set()

    def read(self, call: Any, sender: str) -> None:
        """Await ``call``'s status in the background; ``sender`` names the server in the log."""
        task = asyncio.ensure_future(self._status(call, sender))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _status(self, call: Any, sender: str) -> None:
        try:
            code = await call.code()
        except asyncio.CancelledError:
            call.cancel()
            raise
        if code != grpc.StatusCode.OK:
            details = await call.details()
            self.log.warning(
                "%s sent a whole answer, then ended the call with %s: %s", sender, code.name, details
            )

    async def close(self, grace_seconds: float = GRACE_SECONDS) -> None:
        """Let the pending statuses arrive for up to ``grace_seconds``, then cancel the rest."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=grace_seconds)
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
