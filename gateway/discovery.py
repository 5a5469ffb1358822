"""Language replicas found by DNS: one routing node per address a name resolves to.

Affinity (routing.py) needs one node per replica: a session's KV and a prompt prefix's cache
live in one language worker. Behind a Kubernetes headless Service the replicas share one name
(``tandem-llm``), and a gRPC channel to that name balances calls over the pods by itself, so the
gateway's router would see a single node and affinity would end at the Service. An address
written ``dns:///NAME:PORT`` is therefore resolved here, every ``interval`` seconds, into one
``IP:PORT`` node per record (one per ready pod); the router hashes over those. A pod that goes
away moves only its own keys; a new one takes its share.

Until a name has resolved once, the name itself is the node (gRPC resolves and balances it, as
for a plain ``NAME:PORT``); a resolution that fails or finds nothing keeps the last good set
(pods restarting must not empty the router; calls to a gone pod fail over to the next node).
Channels to resolved addresses verify TLS against ``NAME`` (``authority``), not the pod's IP.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.background import cancel_and_wait

log = logging.getLogger(__name__)

SCHEME = "dns:///"
RESOLVE_TIMEOUT_SECONDS = 5.0  # a resolver that hangs counts as failed (the last answer stands)

Resolve = Callable[[str, int], Awaitable[list[str]]]
"""(host, port) -> the IP addresses the host resolves to; raises OSError when it cannot."""


@dataclass(frozen=True)
class DnsName:
    """A ``dns:///HOST:PORT`` address."""

    host: str
    port: int

    @classmethod
    def parse(cls, address: str) -> DnsName | None:
        """The name of a ``dns:///HOST:PORT`` address; None for any other address. Raises
        ValueError for a ``dns:///`` address without a host or a valid port."""
        if not address.startswith(SCHEME):
            return None
        host, sep, port = address[len(SCHEME) :].rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{address!r}: expected {SCHEME}HOST:PORT, e.g. {SCHEME}tandem-llm:50052")
        return cls(host, int(port))


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses ``getaddrinfo`` gives for ``host`` (the system's resolver, as gRPC's)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def node_address(ip: str, port: int) -> str:
    """``IP:PORT`` as a gRPC target (an IPv6 address in brackets)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class ReplicaDiscovery:
    """The current node list of ``addresses``: plain entries as given, each ``dns:///`` entry
    expanded to the addresses its name last resolved to (see the module docstring).

    ``refresh`` resolves every name once; ``start`` does it every ``interval`` seconds in the
    background and calls ``on_change(nodes)`` whenever the list changes; ``stop`` ends that.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        resolve: Resolve = system_resolve,
        interval: float = 10.0,
        on_change: Callable[[list[str]], None] | None = None,
    ):
        if interval <= 0:
            raise ValueError(f"{interval=} must be > 0")
        self.addresses = list(dict.fromkeys(addresses))
        self.names = {a: name for a in self.addresses if (name := DnsName.parse(a)) is not None}
        self.resolve = resolve
        self.interval = interval
        self.on_change = on_change
        self._found: dict[str, list[str]] = {}  # dns:/// entry -> its nodes, from the last good answer
        self._task: asyncio.Task[None] | None = None

    def nodes(self) -> list[str]:
        """The nodes to route over, in the order of ``addresses``."""
        out: list[str] = []
        for address in self.addresses:
            out += self._found.get(address, [address])
        return list(dict.fromkeys(out))

    def authority(self, node: str) -> str | None:
        """The host name TLS must verify for ``node`` (None: the node's own host)."""
        for address, found in self._found.items():
            if node in found:
                return self.names[address].host
        return None

    async def refresh(self) -> bool:
        """Resolve every name once; True when the node list changed."""
        before = self.nodes()
        for address, name in self.names.items():
            try:
                ips = await asyncio.wait_for(self.resolve(name.host, name.port), RESOLVE_TIMEOUT_SECONDS)
            except (OSError, UnicodeError) as exc:  # TimeoutError is an OSError
                log.warning("resolving %s failed (%s); keeping its last addresses", address, exc)
                continue
            found = sorted({node_address(ip, name.port) for ip in ips})
            if not found:
                log.warning("%s resolved to no address; keeping its last addresses", address)
                continue
            if found != self._found.get(address):
                log.info("%s: %d replica(s): %s", address, len(found), ", ".join(found))
            self._found[address] = found
        after = self.nodes()
        if after != before and self.on_change is not None:
            self.on_change(after)
        return after != before

    def start(self) -> None:
        """Refresh every ``interval`` seconds in the background (nothing to do without names)."""
        if self.names and self._task is None:
            self._task = asyncio.create_task(self._run(), name="replica-discovery")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception:  # a bug here must not end discovery for good
                log.exception("replica discovery failed; retrying in %g s", self.interval)
