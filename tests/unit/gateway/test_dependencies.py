"""Health follows what the gateway needs (issue 11, finding 4): the dependency monitor degrades the
readiness gate while a probe fails and restores it when the probe passes, never reopens a closed
gate, and keeps the liveness service SERVING throughout."""

from __future__ import annotations

from grpc_health.v1 import health_pb2

from gateway.dependencies import DependencyMonitor, EvictingStateStore, refusal
from tandem.serving.readiness import LIVENESS, Readiness

SERVICE = "vlm.v1.GatewayService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Switch:
    """A probe that fails while ``down`` is set."""

    def __init__(self, error: Exception | None = None) -> None:
        self.down = False
        self.error = error or ConnectionError("refused")
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.down:
            raise self.error


async def status(gate: Readiness, service: str = "") -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return int((await gate.servicer.Check(request, None)).status)


async def test_a_failing_probe_turns_health_not_serving_until_it_passes() -> None:
    gate = Readiness([SERVICE])
    await gate.hold()
    redis, language = Switch(), Switch()
    monitor = DependencyMonitor(gate, {"state Redis": redis, "language service": language})
    await gate.open()
    await monitor.check_once()
    assert await status(gate) == SERVING and gate.serving

    redis.down = True
    await monitor.check_once()
    assert await status(gate) == NOT_SERVING and await status(gate, SERVICE) == NOT_SERVING
    assert await status(gate, LIVENESS) == SERVING  # a liveness probe does not restart it
    language.down = True
    await monitor.check_once()
    redis.down = False
    await monitor.check_once()
    assert await status(gate) == NOT_SERVING and gate.down == {"language service"}
    language.down = False
    await monitor.check_once()
    assert await status(gate) == SERVING and await status(gate, SERVICE) == SERVING


async def test_a_gate_degraded_before_open_opens_not_serving_and_a_closed_one_stays_closed() -> None:
    gate = Readiness([SERVICE])
    await gate.hold()
    redis = Switch()
    redis.down = True
    monitor = DependencyMonitor(gate, {"state Redis": redis})
    await monitor.check_once()
    await gate.open()
    assert await status(gate) == NOT_SERVING
    redis.down = False
    await monitor.check_once()
    assert await status(gate) == SERVING
    await gate.close()
    redis.down = True
    await monitor.check_once()
    redis.down = False
    await monitor.check_once()
    assert await status(gate) == NOT_SERVING and gate.state == "closed"


async def test_an_evicting_state_store_counts_as_down() -> None:
    gate = Readiness([SERVICE])
    await gate.hold()
    await gate.open()
    evicting = Switch(EvictingStateStore(refusal("allkeys-lru")))
    evicting.down = True
    await DependencyMonitor(gate, {"state Redis": evicting}).check_once()
    assert await status(gate) == NOT_SERVING
    assert "allkeys-lru" in refusal("allkeys-lru") and "noeviction" in refusal("allkeys-lru")
