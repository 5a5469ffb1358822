"""Waiting requests, admitted fairly across tenants.

One FIFO per tenant; admission goes round robin over the tenants with waiting work, so a tenant
that queued a hundred requests does not make another's one request wait behind them. A tenant
already running ``cap`` sequences is passed over while another tenant has work waiting, so it
cannot hold every batch slot (unless every waiting tenant is at its cap: then slots are not
left idle, and the round robin goes on). With one tenant (a deployment without API keys, where
every request's tenant is "") this is plain FIFO.

The queue is not thread-safe: the scheduler guards it with its condition's lock.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterator

from llm_service.engine.sequence import Sequence


class FairQueue:
    """Per-tenant FIFOs, taken round robin (see the module docstring).

    The round is kept as each tenant's last admission (a step count; tenants are few): the
    waiting tenant admitted longest ago goes next, one never admitted first.
    """

    def __init__(self) -> None:
        self._queues: dict[str, deque[Sequence]] = {}
        self._served: dict[str, int] = {}  # tenant -> the admission count when last admitted
        self._admissions = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[Sequence]:
        return (seq for queue in self._queues.values() for seq in queue)

    def append(self, seq: Sequence) -> None:
        self._queues.setdefault(seq.request.tenant, deque()).append(seq)
        self._size += 1

    def drain(self) -> list[Sequence]:
        """Every waiting sequence (oldest first per tenant); the queue is empty afterwards."""
        seqs = list(self)
        self._queues.clear()
        self._size = 0
        return seqs

    def pop(self, running: Counter[str], cap: int, cancelled: Callable[[Sequence], None]) -> Sequence | None:
        """The next sequence to admit, given how many each tenant runs; cancelled sequences met
        on the way are removed and handed to ``cancelled``."""
        self._drop_cancelled(cancelled)
        if not self._queues:
            return None
        tenant = min(self._queues, key=lambda t: (running[t] >= cap, self._served.get(t, -1)))
        self._admissions += 1
        self._served[tenant] = self._admissions
        queue = self._queues[tenant]
        seq = queue.popleft()
        self._size -= 1
        if not queue:
            del self._queues[tenant]
        return seq

    def _drop_cancelled(self, cancelled: Callable[[Sequence], None]) -> None:
        for tenant, queue in list(self._queues.items()):
            for seq in [s for s in queue if s.cancelled]:
                queue.remove(seq)
                self._size -= 1
                cancelled(seq)
            if not queue:
                del self._queues[tenant]
