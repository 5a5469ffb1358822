"""What the gateway needs to answer, watched: health is NOT_SERVING while any of it is down.

The gateway needs a language replica (every request ends there) and the state Redis (sessions,
turn locks, idempotency, tenant ownership). ``DependencyMonitor`` probes each every
``interval`` seconds and drives the readiness gate: ``degrade`` when a probe fails, ``restore``
when it passes again, so a load balancer stops sending traffic to a gateway that would only
answer UNAVAILABLE, and sends it again once the dependency is back. The vision service is not
probed: a text request does not need it, and an image request fails fast without it.

The state Redis must never evict (DESIGN.md, "Tenants and trust"): ``eviction_policy`` reads
its ``maxmemory-policy``. At start-up an evicting one is refused (``EvictingStateStore``, one
line, exit 2); found later (the Redis was reconfigured or replaced) it counts as down. A
managed Redis that disables ``CONFIG`` cannot be checked: a warning says so once, and the
operator answers for its policy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from gateway.background import cancel_and_wait
from tandem.serving.readiness import Readiness

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[None]]
SAFE_POLICY = "noeviction"


class EvictingStateStore(RuntimeError):
    """The state Redis evicts keys under memory pressure: sessions would be lost silently."""


async def eviction_policy(client: aioredis.Redis) -> str | None:
    """The Redis ``maxmemory-policy``; None when ``CONFIG`` is refused (managed Redis)."""
    try:
        reply = await client.config_get("maxmemory-policy")
    except ResponseError:  # CONFIG renamed or disabled, or no permission (NOPERM)
        return None
    value = reply.get("maxmemory-policy")
    return value.decode() if isinstance(value, bytes) else value


def refusal(policy: str) -> str:
    """What to tell an operator whose state Redis has ``policy``."""
    return (
        f"the state Redis evicts keys (maxmemory-policy {policy}): sessions and turn locks would be "
        f"lost under memory pressure; give --state-redis-url a Redis with maxmemory-policy "
        f"{SAFE_POLICY} (a cache Redis may evict; the state one may not)"
    )


class StateRedisProbe:
    """Ping the state Redis and check that it does not evict; raises when either fails."""

    def __init__(self, client: aioredis.Redis):
        self.client = client
        self._unchecked_warned = False

    async def __call__(self) -> None:
        await self.client.ping()
        policy = await eviction_policy(self.client)
        if policy is None:
            if not self._unchecked_warned:
                self._unchecked_warned = True
                log.warning(
                    "cannot read the state Redis's maxmemory-policy (CONFIG refused); it must be %s",
                    SAFE_POLICY,
                )
            return
        if policy != SAFE_POLICY:
            raise EvictingStateStore(refusal(policy))

    async def check_at_start(self) -> None:
        """Refuse an evicting state Redis; an unreachable one is left to the monitor."""
        try:
            await self()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "the state Redis is not reachable yet (%s); NOT_SERVING until it is", type(exc).__name__
            )


class DependencyMonitor:
    """Runs ``probes`` (name -> probe) every ``interval`` seconds and degrades or restores
    ``readiness`` by their outcome; each probe has ``timeout`` seconds."""

    def __init__(
        self, readiness: Readiness, probes: Mapping[str, Probe], interval: float = 2.0, timeout: float = 2.0
    ):
        self.readiness = readiness
        self.probes = dict(probes)
        self.interval = interval
        self.timeout = timeout
        self._task: asyncio.Task[None] | None = None

    async def check_once(self) -> None:
        """Probe everything once, together, and update the gate."""
        results = await asyncio.gather(*(self._probe(n, p) for n, p in self.probes.items()))
        for name, error in zip(self.probes, results, strict=True):
            if error is None:
                await self.readiness.restore(name)
            else:
                if name not in self.readiness.down:
                    log.warning("%s is down: %s", name, error)
                await self.readiness.degrade(name)

    async def _probe(self, name: str, probe: Probe) -> str | None:
        """None when ``probe`` passed, else why it failed (one line)."""
        try:
            async with asyncio.timeout(self.timeout):
                await probe()
        except EvictingStateStore as exc:
            return str(exc)
        except Exception as exc:  # any failure means down; the reason is logged once
            return f"{type(exc).__name__}: {exc}"[:300]
        return None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
