"""Stop a service when the process that launched it dies (``tandem up``'s children).

The launcher sets ``TANDEM_PARENT_PID``; the service, once running (single-threaded, after
exec), asks Linux for SIGTERM on its parent's death, which ``run_until_signal`` turns into a
graceful drain. Doing this in the child instead of a ``preexec_fn`` avoids running code in a
forked copy of a multi-threaded launcher. A no-op elsewhere or when the variable is unset.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Mapping

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
