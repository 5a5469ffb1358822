"""``tandem.ports.free_port``: a port a server can bind a moment later, drawn below the kernel's
ephemeral range so that no outgoing connection takes it first."""

from __future__ import annotations

import socket
from pathlib import Path

from tandem.ports import LINUX_DEFAULT_RANGE, ephemeral_range, free_port


def _bind(port: int) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))


def test_a_port_below_the_ephemeral_range_that_binds() -> None:
    low, _ = ephemeral_range()
    for _ in range(20):
        port = free_port()
        assert 1024 <= port < low
        _bind(port)


def test_a_port_in_use_is_not_handed_out() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        # the only candidate is the held port: it falls back to a port the kernel picks
        port = free_port(ephemeral=(taken + 1, taken + 100), span=1)
        assert port != taken
    _bind(port)


def test_without_room_below_the_range_it_asks_the_kernel() -> None:
    port = free_port(ephemeral=(1024, 65000))
    assert 1024 <= port <= 65535
    _bind(port)


def test_the_range_is_read_from_the_kernel_or_defaults(tmp_path: Path) -> None:
    good = tmp_path / "range"
    good.write_text("40000\t50000\n")
    assert ephemeral_range(good) == (40000, 50000)
    bad = tmp_path / "bad"
    bad.write_text("not numbers")
    assert ephemeral_range(bad) == LINUX_DEFAULT_RANGE
    assert ephemeral_range(tmp_path / "missing") == LINUX_DEFAULT_RANGE
