"""A service launched with TANDEM_PARENT_PID stops when its launcher dies."""

from __future__ import annotations

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
