"""Stop a process when the process that launched it dies (``tandem up``'s children).

The launcher sets ``TANDEM_PARENT_PID``; the service, once running (single-threaded, after
exec), asks Linux for SIGTERM on its parent's death, which ``run_until_signal`` turns into a
graceful drain. Doing this in the child instead of a ``preexec_fn`` avoids running code in a
forked copy of a multi-threaded launcher. A no-op elsewhere or when the variable is unset.

A program that cannot arm the signal itself (``redis-server``) is started through
``python -m tandem.serving.parent PROGRAM ARGS...``: this module arms it, then execs the
program, which keeps it (Linux clears it on exec only for set-user-ID programs).

The signal follows the *thread* that started the child: start such children from a thread that
lives as long as they should (``tandem up`` starts them from its main thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

PARENT_PID_ENV = "TANDEM_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def follow_parent(env: Mapping[str, str] | None = None) -> bool:
    """Arrange SIGTERM on the launcher's death; True when armed."""
    raw = (os.environ if env is None else env).get(PARENT_PID_ENV, "")
    if sys.platform != "linux" or not raw.isdigit():
        return False
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != int(raw):  # the launcher died before we armed: stop now
            os.kill(os.getpid(), signal.SIGTERM)
        return True
    return False


def exec_following_parent(argv: Sequence[str]) -> NoReturn:
    """Arm the parent-death signal (``follow_parent``), then replace this process by ``argv``."""
    if not argv:
        raise SystemExit("usage: python -m tandem.serving.parent PROGRAM [ARGS...]")
    follow_parent()
    os.execvp(argv[0], list(argv))


if __name__ == "__main__":
    exec_following_parent(sys.argv[1:])
