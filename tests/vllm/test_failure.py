"""When vLLM's engine core dies, the engine says so (``failure``, which the language app polls to
go NOT_SERVING and exit for a restart) and every request is UNAVAILABLE, none hangs."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import psutil
import pytest

pytest.importorskip("vllm")

from llm_service.engine import SamplingConfig
from tandem.errors import Unavailable
from tests.vllm.support import HFOracle, collect, picture, tandem_request, vllm_worker

pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="module")]


async def test_a_dead_engine_core_fails_the_engine_and_its_requests(vllm_checkpoint: Any) -> None:
    path = vllm_checkpoint("llava")
    oracle = HFOracle.load(path)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    async with vllm_worker(path) as worker:
        sampling = SamplingConfig(max_new_tokens=4)
        conversation = [("user", [picture(1), "What is in this image?"])]
        assert await collect(worker.generate(tandem_request(oracle, worker, conversation, "ok", sampling)))
        assert worker.engine.failure() is None
        engine_processes = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        assert engine_processes, "vLLM runs its engine core in a process of its own"
        for process in engine_processes:
            process.send_signal(signal.SIGKILL)
        for _ in range(200):
            if worker.engine.failure() is not None:
                break
            await asyncio.sleep(0.05)
        assert worker.engine.failure() == "the vLLM engine died"
        request = tandem_request(oracle, worker, conversation, "after", sampling)
        with pytest.raises(Unavailable):
            await asyncio.wait_for(collect(worker.generate(request)), timeout=30)
