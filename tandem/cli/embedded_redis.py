"""The two Redis roles of ``tandem up``: embedded servers, or the URLs given.

- **state** (sessions, turn locks, idempotency fences, tenant ownership and usage, the bytes of
  session images): must never be evicted and must survive a crash. Embedded: a ``redis-server``
  with an append-only file under ``--data-dir`` (default ``$XDG_DATA_HOME/tandem``, else
  ``~/.local/share/tandem``) and ``noeviction``; the folder is locked, so two ``tandem up`` never
  share it.
- **cache** (embeddings, encode leases, the image bytes of requests without a session): bounded
  and disposable. Embedded: a ``redis-server`` with ``--redis-maxmemory`` and ``allkeys-lru``,
  nothing on disk.

``--redis-url`` replaces both (that Redis must then not evict) unless ``--state-redis-url`` is
given too; ``--state-redis-url`` alone replaces the state one. The embedded servers are
``Supervised`` (``EmbeddedRedis``): ``tandem up`` restarts one that dies on its port and folder,
and the state server replays its file.
"""

from __future__ import annotations

import argparse
import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from tandem.cli.services import ConfigError

if TYPE_CHECKING:
    from tandem.redis_local import LocalRedis

STATE_NAME = "redis"  # the state server, as the output names it
CACHE_NAME = "cache"
DEFAULT_MAXMEMORY = "1gb"


def default_data_dir(env: dict[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/tandem`` (an absolute ``XDG_DATA_HOME``), else ``~/.local/share/tandem``."""
    base = (dict(os.environ) if env is None else env).get("XDG_DATA_HOME", "")
    return (Path(base) if Path(base).is_absolute() else Path.home() / ".local" / "share") / "tandem"


def add_options(parser: argparse.ArgumentParser) -> None:
    """``--redis-url``, ``--state-redis-url``, ``--redis-maxmemory``, ``--no-embedding-cache``,
    ``--data-dir``."""
    parser.add_argument(
        "--redis-url",
        help="use this Redis instead of the embedded ones: as the cache, and as the state unless "
        "--state-redis-url is given (then it must have maxmemory-policy noeviction)",
    )
    parser.add_argument(
        "--state-redis-url",
        help="use this Redis for state (sessions, locks, idempotency, tenant data): persistent, "
        "maxmemory-policy noeviction",
    )
    parser.add_argument(
        "--redis-maxmemory",
        default=DEFAULT_MAXMEMORY,
        help="memory of the embedded cache Redis; past it the least recently used entries go "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--no-embedding-cache",
        action="store_true",
        help="the vision and language workers use no Redis: every image is encoded again and its "
        "embedding handed over inline (a baseline for benchmarks, e.g. B8; sessions still work)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder of the embedded state Redis's append-only file: sessions survive restarts "
        "and crashes (default: $XDG_DATA_HOME/tandem, else ~/.local/share/tandem)",
    )


@dataclass(eq=False)
class EmbeddedRedis:
    """An embedded ``redis-server`` of one role, ``Supervised`` by ``tandem up``."""

    name: str
    server: LocalRedis
    what: str

    def exit_code(self) -> int | None:
        return self.server.exit_code()

    def restart(self) -> None:
        self.server.start()

    def describe(self) -> str:
        return f"pid {self.server.pid}, {self.server.url}"

    def tail(self) -> str:
        return ""  # a start that fails raises with redis-server's own message

    def ready_line(self) -> str:
        return f"  {self.name:<8} SERVING at {self.server.url} ({self.what}; pid {self.server.pid})"


@dataclass(eq=False)
class RedisRoles:
    """The state and cache URLs the services get, and the embedded servers behind them."""

    state_url: str
    cache_url: str
    embedded: list[EmbeddedRedis] = field(default_factory=list)
    data_dir: Path | None = None
    _lock: IO[bytes] | None = None

    def describe(self) -> str:
        """The URLs, for the ready message."""
        if self.state_url == self.cache_url:
            return f"{self.state_url} (state and cache)"
        return f"state {self.state_url}, cache {self.cache_url}"

    def start(self, say: Callable[[str], None]) -> None:
        """Start the embedded servers (the state one first), one ready line each."""
        for redis in self.embedded:
            redis.server.start()
            say(redis.ready_line())

    def close(self, say: Callable[[str], None]) -> None:
        """Stop the embedded servers, the state one last, and release the data folder."""
        for redis in reversed(self.embedded):
            redis.server.close()
            say(f"  {redis.name:<8} stopped")
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def plan(args: argparse.Namespace) -> RedisRoles:
    """The roles ``args`` ask for; embedded servers are made (not started); ``ConfigError`` when
    the data folder cannot be used."""
    from tandem.redis_local import LocalRedis

    embedded: list[EmbeddedRedis] = []
    state_url = args.state_redis_url or args.redis_url
    data_dir, lock = None, None
    if not state_url:
        data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
        lock = _lock_data_dir(data_dir)
        state = LocalRedis(follow_parent=True, data_dir=data_dir / "redis")
        what = f"state: sessions, append-only file in {data_dir / 'redis'}, noeviction"
        embedded.append(EmbeddedRedis(STATE_NAME, state, what))
        state_url = state.url
    cache_url = args.redis_url
    if not cache_url:
        cache = LocalRedis(follow_parent=True, maxmemory=args.redis_maxmemory)
        what = f"cache: embeddings and images, maxmemory {args.redis_maxmemory}, allkeys-lru"
        embedded.append(EmbeddedRedis(CACHE_NAME, cache, what))
        cache_url = cache.url
    return RedisRoles(state_url, cache_url, embedded, data_dir, lock)


def _lock_data_dir(data_dir: Path) -> IO[bytes]:
    """Hold ``data_dir``'s lock for this process's life; ``ConfigError`` when another has it."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = open(data_dir / "tandem-up.lock", "wb")  # noqa: SIM115  # held until close()
    except OSError as exc:
        raise ConfigError(f"cannot use --data-dir {data_dir}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise ConfigError(
            f"another `tandem up` uses the data folder {data_dir}; stop it or give --data-dir"
        ) from None
    return lock
