"""``--nice``: every thread of a service, those that exist and those started later, runs at
least that nice; the config refuses what Linux would. Run in a child process: a niceness, once
raised, cannot be lowered again without privileges."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tandem.serving.config import ServerConfig

PROBE = """
import json, os, threading
from tandem.serving.priority import run_at_nice, thread_ids
stop = threading.Event()
before = threading.Thread(target=stop.wait); before.start()
changed = run_at_nice(int(os.environ["NICE"]))
after = threading.Thread(target=stop.wait); after.start()
nices = {tid: os.getpriority(os.PRIO_PROCESS, tid) for tid in thread_ids()}
stop.set(); before.join(); after.join()
print(json.dumps({"changed": changed, "threads": len(nices), "nices": sorted(set(nices.values()))}))
"""


def probe(nice: int) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, "NICE": str(nice)},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")
def test_every_thread_runs_at_the_niceness_new_ones_too() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)  # the child starts at the test's own niceness
    if base > 12:
        pytest.skip(f"the tests already run at nice {base}")
    result = probe(base + 7)
    assert result["threads"] == 3 and result["changed"] == 2  # main + the thread started before
    assert result["nices"] == [base + 7]


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")
def test_zero_changes_nothing() -> None:
    assert probe(0) == {"changed": 0, "threads": 3, "nices": [os.getpriority(os.PRIO_PROCESS, 0)]}


@pytest.mark.parametrize("nice", [-1, 20])
def test_the_config_refuses_a_niceness_out_of_range(nice: int) -> None:
    with pytest.raises(ValueError, match="nice"):
        ServerConfig(nice=nice)
