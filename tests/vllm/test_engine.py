"""The vLLM engine keeps the engine contract: streaming, stop strings, seeds, cancellation,
admission, failures that stay with their request, and prefix-cache reuse scoped to a tenant."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import pytest
import pytest_asyncio

pytest.importorskip("vllm")

from llm_service.conversation import ChatMessage, GenerationRequest, TextPart
from llm_service.engine import SamplingConfig, TokenEvent
from tandem.errors import InvalidInput, Overloaded
from tests.vllm.support import HFOracle, collect, picture, tandem_request, tokens, vllm_worker

pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="module")]

QUESTION = "What is in this image?"
LONG = SamplingConfig(max_new_tokens=200, ignore_eos=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(vllm_checkpoint: Any) -> AsyncIterator[tuple[Any, HFOracle]]:
    path = vllm_checkpoint("llava")
    async with vllm_worker(path, max_batch_size=2, max_queue=1) as worker:  # 3 requests at most
        yield worker, HFOracle.load(path)


def request(served: tuple[Any, HFOracle], request_id: str, sampling: SamplingConfig, **kw: Any) -> Any:
    worker, oracle = served
    conversation = kw.pop("conversation", [("user", [picture(1), QUESTION])])
    return tandem_request(oracle, worker, conversation, request_id, sampling, **kw)


async def run(
    served: tuple[Any, HFOracle], request_id: str, sampling: SamplingConfig, **kw: Any
) -> list[TokenEvent]:
    return await collect(served[0].generate(request(served, request_id, sampling, **kw)))


async def drained(worker: Any) -> None:
    """Wait (bounded) until vLLM holds no request: aborts reach its engine asynchronously."""
    for _ in range(500):
        if worker.engine.unfinished == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"vLLM still holds {worker.engine.unfinished} requests")


async def test_streams_token_by_token_with_usage(served: tuple[Any, HFOracle]) -> None:
    metrics = served[0].engine.metrics
    before = {
        k: metrics.get(k) for k in ("prompt_tokens", "generation_tokens", "time_per_output_token_seconds")
    }
    events = await run(served, "stream", SamplingConfig(max_new_tokens=12, ignore_eos=True))
    assert len([e for e in events if e.token_ids]) > 1
    assert all(e.finish_reason is None for e in events[:-1])
    final = events[-1]
    assert final.finish_reason == "length" and final.usage is not None
    assert final.usage.completion_tokens == len(tokens(events)) == 12
    assert final.usage.image_tokens == 16
    # the built-in engine's metrics, from vLLM's outputs
    assert metrics.get("generation_tokens") - before["generation_tokens"] == 12
    assert metrics.get("prompt_tokens") - before["prompt_tokens"] == final.usage.prompt_tokens
    assert metrics.get("time_per_output_token_seconds") - before["time_per_output_token_seconds"] >= 1
    assert metrics.get("request_success", finished_reason="length") >= 1
    text = served[1].processor.tokenizer.decode(tokens(events), skip_special_tokens=True)
    streamed = "".join(e.text for e in events)
    # vLLM never emits a last, incomplete UTF-8 character (U+FFFD); Tandem's engine flushes it
    assert text.startswith(streamed) and text[len(streamed) :] in ("", "\ufffd")


async def test_stop_string_cuts_the_text(served: tuple[Any, HFOracle]) -> None:
    full = "".join(
        e.text for e in await run(served, "full", SamplingConfig(max_new_tokens=20, ignore_eos=True))
    )
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    events = await run(served, "stop", SamplingConfig(max_new_tokens=20, ignore_eos=True, stop=(stop,)))
    assert events[-1].finish_reason == "stop"
    assert "".join(e.text for e in events) == full[: full.index(stop)]


async def test_a_seed_gives_the_same_sample(served: tuple[Any, HFOracle]) -> None:
    sampling = SamplingConfig(
        max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=7, ignore_eos=True
    )
    first, second = await asyncio.gather(run(served, "s1", sampling), run(served, "s2", sampling))
    assert tokens(first) == tokens(second)


async def test_stop_token_ids_end_generation(served: tuple[Any, HFOracle]) -> None:
    greedy = tokens(await run(served, "g", SamplingConfig(max_new_tokens=12, ignore_eos=True)))
    events = await run(served, "st", SamplingConfig(max_new_tokens=12, stop_token_ids=(greedy[3],)))
    assert tokens(events) == greedy[: greedy.index(greedy[3]) + 1]
    assert events[-1].finish_reason == "stop"


async def test_leaving_mid_stream_aborts_in_vllm(served: tuple[Any, HFOracle]) -> None:
    worker = served[0]
    stream = cast(AsyncGenerator[TokenEvent, None], worker.generate(request(served, "leave", LONG)))
    cancelled = worker.engine.metrics.get("engine_cancelled")
    async with contextlib.aclosing(stream):
        assert (await anext(stream)).token_ids
        assert worker.engine.unfinished == 1
        assert worker.engine.metrics.get("num_requests_running") == 1
    await drained(worker)
    assert worker.engine.metrics.get("engine_cancelled") == cancelled + 1
    assert (await run(served, "after", SamplingConfig(max_new_tokens=4)))[-1].finish_reason is not None


async def test_a_full_queue_is_overloaded(served: tuple[Any, HFOracle]) -> None:
    worker = served[0]
    busy = SamplingConfig(max_new_tokens=900, ignore_eos=True)
    streams = [asyncio.create_task(run(served, f"busy{i}", busy)) for i in range(3)]  # 2 running + 1 queued
    try:
        for _ in range(1000):  # bounded wait until vLLM holds all three
            if worker.engine.unfinished == 3:
                break
            await asyncio.sleep(0.01)
        assert worker.engine.unfinished == 3
        overloaded = worker.engine.metrics.get("engine_overloaded")
        with pytest.raises(Overloaded):
            await run(served, "refused", SamplingConfig(max_new_tokens=4))
        assert worker.engine.metrics.get("engine_overloaded") == overloaded + 1
    finally:
        for stream in streams:
            stream.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
    await drained(worker)
    assert (await run(served, "admitted", SamplingConfig(max_new_tokens=4)))[-1].finish_reason is not None


async def test_bad_requests_leave_the_others_alone(served: tuple[Any, HFOracle]) -> None:
    alone = tokens(await run(served, "alone", SamplingConfig(max_new_tokens=16, ignore_eos=True)))
    worker, oracle = served
    too_long = request(served, "too-long", SamplingConfig(max_new_tokens=5000))
    image = oracle.image_ref(picture(5), worker.features.fingerprint)
    no_placeholder = GenerationRequest(
        "no-placeholder", (ChatMessage("user", (TextPart("hi"),)),), SamplingConfig(max_new_tokens=4)
    )
    extra_image = GenerationRequest(
        "extra-image",
        (ChatMessage("user", (image, image, TextPart("hi"))),),
        SamplingConfig(max_new_tokens=4),
    )
    assert (await collect(worker.generate(no_placeholder)))[-1].finish_reason is not None

    async def refused(bad: GenerationRequest) -> None:
        await asyncio.sleep(0)
        with pytest.raises(InvalidInput):
            await collect(worker.generate(bad))

    good = run(served, "good", SamplingConfig(max_new_tokens=16, ignore_eos=True))
    together, *_ = await asyncio.gather(good, refused(too_long), refused(_mismatched(extra_image)))
    assert tokens(together) == alone


def _mismatched(request: GenerationRequest) -> GenerationRequest:
    """``request`` with its first image claiming one token fewer than its embedding has."""
    message = request.messages[0]
    first = message.parts[0]
    bad = type(first)(first.image_id, first.num_tokens - 1, first.grid_thw, first.inline_record)  # type: ignore[union-attr,call-arg]
    return GenerationRequest(
        request.request_id, (ChatMessage(message.role, (bad, *message.parts[1:])),), request.sampling
    )


async def test_next_turn_reuses_the_tenants_cached_prefix(served: tuple[Any, HFOracle]) -> None:
    first = [("user", [picture(6), "Tell me everything about this picture, please, with all its details."])]
    sampling = SamplingConfig(max_new_tokens=8)
    reply = "".join(e.text for e in await run(served, "t1", sampling, conversation=first, tenant="a"))
    second = [*first, ("assistant", [reply]), ("user", ["Tell me more about the colours in it."])]
    turn = (await run(served, "t2", sampling, conversation=second, tenant="a"))[-1].usage
    other = (await run(served, "b1", sampling, conversation=second, tenant="b"))[-1].usage
    again = (await run(served, "b2", sampling, conversation=second, tenant="b"))[-1].usage
    assert turn is not None and other is not None and again is not None
    assert turn.cached_tokens >= 32  # whole blocks of turn 1's prompt: the image and the question
    assert other.cached_tokens == 0  # another tenant never reuses (or learns of) tenant a's KV
    assert again.cached_tokens >= turn.cached_tokens
