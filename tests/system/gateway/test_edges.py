"""The gateway's edges on a whole split system: deadlines and client cancellation reach the
language engine, a text-only model refuses images, and ``python -m gateway`` as a process
(serves, drains on SIGTERM, refuses a VLM without a vision service) (TESTPLAN 14).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from vlm.v1 import gateway_pb2, gateway_pb2_grpc

from tandem.redis_local import LocalRedis
from tests.support.gateway_stack import Stack, engine_idle, greedy, messages, part, png, reply
from tests.support.streams import cancel_after

pytestmark = pytest.mark.asyncio(loop_scope="package")


async def test_deadline_and_cancel_reach_the_language_engine(stacks: dict[str, Stack]) -> None:
    stack = stacks["llava"]
    request = gateway_pb2.GenerateRequest(
        messages=messages([("user", [png(5), "Tell a long story."])]), sampling=greedy(900)
    )
    started = time.monotonic()
    with pytest.raises(aio.AioRpcError) as late:
        await reply(stack.stub.Generate(request, timeout=0.3))
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 3
    assert await engine_idle(stack.llm)
    await cancel_after(stack.stub.Generate(request), 3)
    assert await engine_idle(stack.llm)


async def test_text_only_model(stacks: dict[str, Stack]) -> None:
    stack = stacks["llama"]
    info = (await stack.stub.GetModelInfo(gateway_pb2.GetModelInfoRequest())).info
    assert not info.is_vlm and info.architecture == "LlamaForCausalLM"
    conversation: list[tuple[str, list[Any]]] = [("user", ["Say something."])]
    got = await reply(
        stack.stub.Generate(gateway_pb2.GenerateRequest(messages=messages(conversation), sampling=greedy()))
    )
    assert got.tokens == stack.oracle(conversation)
    with pytest.raises(aio.AioRpcError) as refused:
        await reply(
            stack.stub.Generate(gateway_pb2.GenerateRequest(messages=messages([("user", [png(6), "hi"])])))
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "this model is text-only; remove the image parts"
    with pytest.raises(aio.AioRpcError) as missing:
        await reply(stack.stub.Chat(gateway_pb2.ChatRequest(session_id="0" * 32, parts=[part("hi")])))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_python_m_gateway_serves_and_drains_on_sigterm(
    stacks: dict[str, Stack], redis_server: LocalRedis, tmp_path: Path
) -> None:
    port_file = tmp_path / "port"
    llm_address = stacks["llama"].gateway.config.llm_addresses[0]
    args = [
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--llm-addresses",
        llm_address,
        "--redis-url",
        redis_server.url,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([".", "protos"])}
    process = subprocess.Popen([sys.executable, "-m", "gateway", *args], env=env, stderr=subprocess.PIPE)
    try:
        stop = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            assert process.poll() is None and time.monotonic() < stop
            await asyncio.sleep(0.1)
        async with aio.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while (
                await health.Check(health_pb2.HealthCheckRequest())
            ).status != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < stop
                await asyncio.sleep(0.1)
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            got = await reply(
                stub.Generate(
                    gateway_pb2.GenerateRequest(messages=messages([("user", ["hi"])]), sampling=greedy(3))
                )
            )
            assert len(got.tokens) <= 3
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


async def test_python_m_gateway_refuses_a_vlm_without_a_vision_service(
    stacks: dict[str, Stack], redis_server: LocalRedis
) -> None:
    llm_address = stacks["llava"].gateway.config.llm_addresses[0]
    args = ["--port", "0", "--llm-addresses", llm_address, "--redis-url", redis_server.url]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([".", "protos"])}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway", *args], env=env, capture_output=True, timeout=30
    )
    assert done.returncode == 2
    assert b"give --vision-addresses" in done.stderr and b"Traceback" not in done.stderr
