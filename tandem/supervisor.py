"""Keep ``tandem up``'s processes running: what dies is restarted, with backoff.

``Supervisor.run`` watches a set of ``Supervised`` processes (the embedded Redis servers, the
workers, the gateway) until its stop event is set. When one exits it says so on the output
(``llm exited (code -9); restarting in 1 s``), waits, and starts it again on the same port with
the same options, while the others keep running: the gateway reconnects to a restarted worker
or Redis by itself, and health reports NOT_SERVING meanwhile.

Backoff: the first restart of a process waits ``first_delay`` seconds, each next one twice as
long, up to ``max_delay``. A process that stayed up for ``stable_seconds`` earned a fresh
start: its backoff and its count of failures begin again. ``max_fast_failures`` exits in a row,
each sooner than ``stable_seconds`` after its start, mean it cannot run (a port taken, a broken
disk, a model that no longer loads): ``run`` raises ``GaveUp`` with the reason, and ``tandem
up`` stops everything. A restart that fails at once counts as one of those failures.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class RestartPolicy:
    """Backoff and give-up rule of ``Supervisor``."""

    first_delay: float = 1.0
    max_delay: float = 30.0
    stable_seconds: float = 60.0
    max_fast_failures: int = 5

    def __post_init__(self) -> None:
        if not 0 < self.first_delay <= self.max_delay:
            raise ValueError(f"need 0 < {self.first_delay=} <= {self.max_delay=}")
        if self.stable_seconds <= 0 or self.max_fast_failures < 1:
            raise ValueError(f"{self.stable_seconds=} must be > 0 and {self.max_fast_failures=} >= 1")

    def delay(self, failures: int) -> float:
        """Seconds to wait before the restart after ``failures`` (>= 1) fast failures."""
        return float(min(self.max_delay, self.first_delay * 2 ** (failures - 1)))


class Supervised(Protocol):
    """A process ``Supervisor`` can watch and start again."""

    @property
    def name(self) -> str: ...

    def exit_code(self) -> int | None:
        """Its exit status once it has exited, None while it runs."""
        ...

    def restart(self) -> None:
        """Start it again, the same way (raises when it cannot start)."""
        ...

    def describe(self) -> str:
        """A few words on the running process for the output (e.g. its pid)."""
        ...

    def tail(self) -> str:
        """The last lines of its log, to say why it gave up ("" when there is none)."""
        ...


class GaveUp(RuntimeError):
    """A process failed ``max_fast_failures`` times in a row; the message says which and why."""


@dataclass
class _Record:
    started_at: float
    failures: int = 0
    restart_at: float | None = None
    last_exit: int | None = None


@dataclass
class Supervisor:
    """Restarts ``processes`` as they die (module docstring); ``say`` prints one line."""

    processes: Sequence[Supervised]
    stop_event: threading.Event
    say: Callable[[str], None]
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    poll_seconds: float = 0.2
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        now = self.clock()
        self._records = {id(p): _Record(started_at=now) for p in self.processes}

    def run(self) -> None:
        """Watch until ``stop_event`` is set; ``GaveUp`` when a process cannot be kept up."""
        while not self.stop_event.is_set():
            self.step()
            self.stop_event.wait(self.poll_seconds)

    def step(self) -> None:
        """One round: note what died, restart what is due."""
        for process in self.processes:
            self._tend(process, self._records[id(process)])

    def _tend(self, process: Supervised, record: _Record) -> None:
        now = self.clock()
        if record.restart_at is not None:
            if now >= record.restart_at and not self.stop_event.is_set():
                self._restart(process, record)
            return
        code = process.exit_code()
        if code is None:
            return
        stable = now - record.started_at >= self.policy.stable_seconds
        record.failures = 1 if stable else record.failures + 1
        record.last_exit = code
        if not stable and record.failures >= self.policy.max_fast_failures:
            raise GaveUp(self._give_up_message(process, record))
        delay = self.policy.delay(record.failures)
        self.say(f"  {process.name:<8} exited (code {code}); restarting in {delay:g} s")
        record.restart_at = now + delay

    def _restart(self, process: Supervised, record: _Record) -> None:
        record.restart_at = None
        record.started_at = self.clock()
        try:
            process.restart()
        except Exception as exc:  # a start that fails outright counts as a fast failure
            self.say(f"  {process.name:<8} could not start: {exc}")
            return
        self.say(f"  {process.name:<8} restarted ({process.describe()})")

    def _give_up_message(self, process: Supervised, record: _Record) -> str:
        message = (
            f"{process.name} exited {record.failures} times in a row within "
            f"{self.policy.stable_seconds:g} s of starting (last exit code {record.last_exit}); "
            "giving up"
        )
        tail = process.tail()
        return f"{message}; the last lines of its log:\n{tail}" if tail else message
