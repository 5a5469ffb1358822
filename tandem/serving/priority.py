"""A service's CPU priority (``--nice``): yield the cores to a model that shares the machine.

``tandem up`` runs the gateway and both workers on one machine. The language worker's decode
step runs on every core (one OpenMP thread each) and waits at each parallel region for its
slowest thread, so a gateway thread that wakes for a token and takes a core for a millisecond
delays the whole step, once per token. At a higher niceness the gateway runs in the gaps the
model leaves (its serial parts) instead. Measured on a 2-core machine (bench/README.md): one
stream 3 % more tokens/s with the gateway at 10, but under load it is the gateway that waits (4
streams: TTFT p50 +31 %; 16 streams: 8 % fewer tokens/s), so ``tandem up`` leaves it at 0 unless
asked (``--gateway-nice``). Where each service has its own cores (Kubernetes), leave it 0.

Linux keeps a niceness per thread and a new thread inherits its creator's: ``run_at_nice`` sets
every thread that exists now, and those started later (gRPC's, the event loop's executor) follow.
Raising priority needs privileges, so it only ever lowers it.
"""

from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger(__name__)


def thread_ids() -> list[int]:
    """This process's threads (0, the caller, where ``/proc`` is not there)."""
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def run_at_nice(nice: int) -> int:
    """Make every thread of this process at least ``nice``; returns how many were changed."""
    if nice <= 0:
        return 0
    changed = 0
    for tid in thread_ids():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
                changed += 1
    log.info("running at nice %d (lower CPU priority: the cores go to the model first)", nice)
    return changed
