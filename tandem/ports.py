"""Free loopback ports for servers that bind them a moment later (an embedded Redis, a worker's
metrics endpoint): ``tandem up`` has to name those ports before the processes start.

A port found with a bind to port 0 comes from the kernel's ephemeral range, the same range the
kernel draws from for every outgoing connection. Until the server binds it, any connection opened
on the machine can take it as its local port, and the server then fails with "address already in
use" (seen: a language worker's metrics port taken while its model loaded). So ``free_port``
draws from the ports just below that range, which only a program asking for them by number gets,
and falls back to a bind to port 0 where there are none.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LINUX_DEFAULT_RANGE = (32768, 60999)
SPAN = 10_000  # how many ports below the ephemeral range are candidates
LOWEST = 1024  # never a privileged port
TRIES = 64

_random = random.SystemRandom()  # independent of any seed a program sets


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux's default where the file cannot be read)."""
    try:
        low, high = (int(value) for value in path.read_text().split())
    except (OSError, ValueError):
        return LINUX_DEFAULT_RANGE
    return low, high


def _bindable(port: int, host: str) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", ephemeral: tuple[int, int] | None = None, span: int = SPAN) -> int:
    """A port of ``host`` free right now, one of the ``span`` ports below the ephemeral range
    where one is."""
    low, _ = ephemeral or ephemeral_range()
    first = max(LOWEST, low - span)
    if first < low:
        for _ in range(TRIES):
            port = _random.randrange(first, low)
            if _bindable(port, host):
                return port
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
