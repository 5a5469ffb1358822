"""``tandem up``'s supervisor on fake processes and a fake clock (issue 11, finding 4): a process
that dies is restarted after 1 s, 2 s, 4 s ... (capped), saying so; one that stayed up earns a
fresh backoff; five fast failures in a row give up with the reason; the others keep running."""

from __future__ import annotations

import threading

import pytest

from tandem.supervisor import GaveUp, RestartPolicy, Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeProcess:
    """Dies when told; ``restart`` brings it back (or fails, when ``broken``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.code: int | None = None
        self.restarts = 0
        self.broken = False

    def exit_code(self) -> int | None:
        return self.code

    def restart(self) -> None:
        self.restarts += 1
        if self.broken:
            raise RuntimeError("port in use")
        self.code = None

    def describe(self) -> str:
        return f"pid {100 + self.restarts}"

    def tail(self) -> str:
        return "Error: the state Redis evicts keys"


class Harness:
    """A supervisor stepped by hand: ``tick`` runs one watch round at the clock's time."""

    def __init__(self, *names: str, policy: RestartPolicy | None = None) -> None:
        self.clock = Clock()
        self.lines: list[str] = []
        self.processes = {n: FakeProcess(n) for n in names}
        self.supervisor = Supervisor(
            list(self.processes.values()),
            threading.Event(),
            self.lines.append,
            policy or RestartPolicy(),
            clock=self.clock,
        )

    def tick(self, at: float) -> None:
        self.clock.now = at
        self.supervisor.step()


def test_a_dead_process_is_restarted_with_doubling_delays_and_the_others_keep_running() -> None:
    h = Harness("llm", "gateway")
    llm = h.processes["llm"]
    llm.code = -9
    h.tick(100.0)
    assert " ".join(h.lines[-1].split()) == "llm exited (code -9); restarting in 1 s"
    h.tick(100.5)
    assert llm.restarts == 0
    h.tick(101.0)
    assert llm.restarts == 1 and h.lines[-1].split() == ["llm", "restarted", "(pid", "101)"]
    llm.code = 1  # dies again at once: a fast failure
    h.tick(102.0)
    assert h.lines[-1].endswith("restarting in 2 s")
    h.tick(104.0)
    llm.code = 1
    h.tick(105.0)
    assert h.lines[-1].endswith("restarting in 4 s")
    assert h.processes["gateway"].restarts == 0


def test_a_process_that_stayed_up_starts_its_backoff_again() -> None:
    h = Harness("redis", policy=RestartPolicy(stable_seconds=60))
    redis = h.processes["redis"]
    for at in (100.0, 102.0):  # up 100 s, then a fast failure: 1 s, then 2 s
        redis.code = -9
        h.tick(at)
        h.tick(at + 1.0)
    assert h.lines[-1].endswith("restarting in 2 s")
    h.tick(104.0)
    assert redis.restarts == 2
    redis.code = -9
    h.tick(200.0)  # up for about 100 s: a fresh start
    assert h.lines[-1].endswith("restarting in 1 s")


def test_delays_are_capped() -> None:
    policy = RestartPolicy(first_delay=1, max_delay=8, max_fast_failures=10)
    assert [policy.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]


def test_five_fast_failures_in_a_row_give_up_with_the_reason() -> None:
    h = Harness("gateway")
    gateway = h.processes["gateway"]
    gateway.broken = True  # every restart fails at once
    gateway.code = 2
    at = 10.0
    with pytest.raises(
        GaveUp, match=r"gateway exited 5 times in a row within 60 s .*last exit code 2.*\n.*evicts"
    ):
        for _ in range(20):
            h.tick(at)
            at += 31.0  # past any delay, still within 60 s of the last start
    assert gateway.restarts == 4
    assert any("could not start: port in use" in line for line in h.lines)


def test_run_returns_when_the_stop_event_is_set() -> None:
    process = FakeProcess("cache")
    stop = threading.Event()
    stop.set()
    Supervisor([process], stop, print).run()
    assert process.restarts == 0
