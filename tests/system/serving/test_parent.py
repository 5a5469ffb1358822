"""A service launched with TANDEM_PARENT_PID stops when its launcher dies."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tandem.serving.parent import PARENT_PID_ENV, follow_parent

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux only")


def test_not_armed_without_the_variable() -> None:
    assert follow_parent({}) is False
    assert follow_parent({PARENT_PID_ENV: "not-a-pid"}) is False


def test_child_gets_sigterm_when_its_launcher_dies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """launcher (a shell) starts the child, then is killed: the child must notice and exit."""
    marker = tmp_path / "child.pid"
    child_code = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from tandem.serving.parent import follow_parent
        got = []
        signal.signal(signal.SIGTERM, lambda *_: got.append(1))
        assert follow_parent()
        open({str(marker)!r}, "w").write(str(os.getpid()))
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        sys.exit(0 if got else 3)
        """
    )
    launcher_code = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        env = {{**os.environ, {PARENT_PID_ENV!r}: str(os.getpid())}}
        subprocess.Popen([sys.executable, "-c", {child_code!r}], env=env)
        time.sleep(60)
        """
    )
    launcher = subprocess.Popen([sys.executable, "-c", launcher_code], env={**os.environ})
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        child_pid = int(marker.read_text())
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(child_pid, signal.SIGKILL)
            pytest.fail("the child outlived its launcher")
    finally:
        if launcher.poll() is None:
            launcher.kill()


def test_redis_server_stops_when_its_owner_is_killed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``LocalRedis(follow_parent=True)`` (``tandem up``'s Redis): kill -9 of the owner stops it."""
    import psutil

    marker = tmp_path / "redis.pid"
    owner_code = textwrap.dedent(
        f"""
        import time
        from tandem.redis_local import LocalRedis
        redis = LocalRedis(follow_parent=True).start()
        open({str(marker)!r}, "w").write(str(redis.process.pid))
        time.sleep(60)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", owner_code])
    server = None
    try:
        deadline = time.monotonic() + 30
        while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        server = psutil.Process(int(marker.read_text()))
        assert "redis-server" in server.name()  # the wrapper exec'd it: same pid
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        server.wait(timeout=10)  # raises TimeoutExpired if redis-server outlives its owner
    finally:
        if owner.poll() is None:
            owner.kill()
        if server is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                server.kill()
