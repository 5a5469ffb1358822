"""The process launcher behind ``tandem up``, with tiny fake services (no models)."""

from __future__ import annotations

import io
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tandem.launcher import ChildFailed, Launcher, ServiceSpec
from tests.support import ROOT

ENV = {"PYTHONPATH": f"{ROOT}:{ROOT / 'protos'}"}

FAKE_SERVICE = textwrap.dedent(
    """
    import asyncio, signal, sys, time
    from tandem.serving.bootstrap import GrpcServer, run_until_signal
    from tandem.serving.config import ServerConfig

    port_file, mode = sys.argv[1], sys.argv[2]
    if mode == "crash":
        print("loading weights...", flush=True)
        print("boom: checkpoint lacks vision_tower.weight", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    async def warmup():
        await asyncio.sleep(0.3)
        if mode == "die-later":
            asyncio.get_running_loop().call_later(0.5, sys.exit, 4)

    async def main():
        server = GrpcServer(ServerConfig(port=0, port_file=port_file, grace_seconds=0.5), [], ["fake"])
        if mode == "stubborn":
            await server.start()
            await server.set_serving()
            while True:
                await asyncio.sleep(1)
        await run_until_signal(server, warmup)

    asyncio.run(main())
    """
)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "fake_service.py"
    path.write_text(FAKE_SERVICE)
    return path


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path / "logs", out=io.StringIO(), poll_seconds=0.05)
    try:
        yield launcher
    finally:
        launcher.shutdown([], timeout=2)


def spec(script: Path, tmp_path: Path, name: str, mode: str = "ok") -> ServiceSpec:
    port_file = tmp_path / f"{name}.port"
    return ServiceSpec(
        name, (sys.executable, str(script), str(port_file), mode), port_file=port_file, env=ENV
    )


def output(launcher: Launcher) -> str:
    assert isinstance(launcher.out, io.StringIO)
    return launcher.out.getvalue()


def test_services_start_report_serving_and_stop_in_order(
    launcher: Launcher, script: Path, tmp_path: Path
) -> None:
    first = launcher.spawn(spec(script, tmp_path, "first"))
    second = launcher.spawn(spec(script, tmp_path, "second"))
    launcher.wait_serving([first, second], timeout=60)
    assert first.serving and second.serving and first.port != second.port
    text = output(launcher)
    assert "first    starting..." in text and "first    SERVING in" in text and "second   SERVING in" in text
    pids = [first.process.pid, second.process.pid]
    launcher.shutdown([["second"], ["first"]], timeout=10)
    text = output(launcher)
    assert text.index("second   stopping") < text.index("first    stopping")
    assert first.exited() == 0 and second.exited() == 0  # a clean drain, not a kill
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids)


def test_a_child_that_dies_during_start_up_is_reported_with_its_log(
    launcher: Launcher, script: Path, tmp_path: Path
) -> None:
    child = launcher.spawn(spec(script, tmp_path, "broken", mode="crash"))
    with pytest.raises(ChildFailed) as failed:
        launcher.wait_serving([child], timeout=60)
    message = str(failed.value)
    assert "broken exited with code 3 during start-up" in message
    assert "boom: checkpoint lacks vision_tower.weight" in message
    assert "loading weights..." in message


def test_watch_returns_a_child_that_dies_after_start(
    launcher: Launcher, script: Path, tmp_path: Path
) -> None:
    child = launcher.spawn(spec(script, tmp_path, "flaky", mode="die-later"))
    launcher.wait_serving([child], timeout=60)
    started = time.monotonic()
    died = launcher.watch()
    assert died is child and child.exited() not in (None, 0)
    assert time.monotonic() - started < 10


def test_watch_returns_none_when_asked_to_stop(launcher: Launcher, script: Path, tmp_path: Path) -> None:
    child = launcher.spawn(spec(script, tmp_path, "steady"))
    launcher.wait_serving([child], timeout=60)
    threading.Timer(0.2, launcher.stop_event.set).start()
    assert launcher.watch() is None
    assert child.exited() is None


def test_a_child_that_ignores_sigterm_is_killed(launcher: Launcher, script: Path, tmp_path: Path) -> None:
    child = launcher.spawn(spec(script, tmp_path, "stubborn", mode="stubborn"))
    launcher.wait_serving([child], timeout=60)
    started = time.monotonic()
    launcher.shutdown([["stubborn"]], timeout=1)
    assert child.exited() is not None and child.exited() != 0
    assert time.monotonic() - started < 5
    assert "stubborn killed after 1 s" in output(launcher)


def test_a_stop_request_interrupts_the_start_up_wait(
    launcher: Launcher, script: Path, tmp_path: Path
) -> None:
    never = ServiceSpec(
        "never", (sys.executable, "-c", "import time; time.sleep(60)"), port_file=tmp_path / "none"
    )
    child = launcher.spawn(never)
    threading.Timer(0.2, launcher.stop_event.set).start()
    with pytest.raises(KeyboardInterrupt):
        launcher.wait_for_port(child, timeout=30)


def test_start_up_timeout_names_the_service(launcher: Launcher, tmp_path: Path) -> None:
    never = ServiceSpec(
        "slowpoke", (sys.executable, "-c", "import time; time.sleep(60)"), port_file=tmp_path / "x"
    )
    child = launcher.spawn(never)
    with pytest.raises(ChildFailed, match="slowpoke did not bind a port in time"):
        launcher.wait_for_port(child, timeout=0.3)


def test_spec_needs_exactly_one_way_to_find_the_port(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ServiceSpec("x", ("true",))
    with pytest.raises(ValueError):
        ServiceSpec("x", ("true",), port_file=tmp_path / "p", port=1)


def test_children_that_take_long_print_progress(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path / "logs", out=io.StringIO(), poll_seconds=0.05, progress_seconds=0.3)
    never = ServiceSpec(
        "slowpoke", (sys.executable, "-c", "import time; time.sleep(60)"), port_file=tmp_path / "x"
    )
    child = launcher.spawn(never)
    try:
        with pytest.raises(ChildFailed):
            launcher.wait_for_port(child, timeout=1.2)
    finally:
        launcher.shutdown([], timeout=2)
    lines = [line for line in output(launcher).splitlines() if "loading..." in line]
    assert len(lines) >= 2 and lines[0].startswith("  slowpoke loading... "), output(launcher)
    assert lines[-1].endswith(" s")
