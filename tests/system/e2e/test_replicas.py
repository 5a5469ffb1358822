"""Two real language workers behind one gateway: a conversation whose client re-sends the history
meets the same worker's prefix cache on every turn (the gateway routes by the prompt's opening)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlm.v1 import common_pb2, gateway_pb2

from tandem.redis_local import LocalRedis
from tests.support.gateway_stack import messages
from tests.support.processes import gateway_over, launcher, serving_llms

START_TIMEOUT = 60.0


async def ask(stub: Any, conversation: list[tuple[str, list[Any]]]) -> tuple[str, common_pb2.Usage]:
    request = gateway_pb2.GenerateRequest(
        messages=messages(conversation), sampling=common_pb2.SamplingParams(max_new_tokens=4)
    )
    responses = [r async for r in stub.Generate(request, timeout=60)]
    assert responses[-1].finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED
    return "".join(r.text for r in responses), responses[-1].usage


async def test_re_sent_history_reuses_one_workers_prefix_cache(  # type: ignore[no-untyped-def]
    checkpoint, redis_server: LocalRedis, tmp_path: Path
) -> None:
    with launcher(tmp_path) as spawned:
        children = await serving_llms(spawned, checkpoint("llama"), ("llm-a", "llm-b"), START_TIMEOUT)
        addresses = tuple(f"127.0.0.1:{c.port}" for c in children)
        async with gateway_over(addresses, redis_server.url) as stub:
            for opening in ("tell me about rivers", "name a colour", "count to three", "say hello"):
                conversation: list[tuple[str, list[Any]]] = [("user", [opening])]
                previous = 0
                for turn in range(3):
                    answer, usage = await ask(stub, conversation)
                    assert usage.cached_tokens >= previous, (opening, turn, usage)
                    previous = usage.prompt_tokens
                    conversation += [("assistant", [answer]), ("user", [f"and then {turn}?"])]
