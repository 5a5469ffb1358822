"""Batch slots are shared fairly between tenants: queued requests are admitted round robin over
the tenants with waiting work, and a tenant at its cap is passed over while another waits."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest
import torch

from llm_service.engine.core import EngineCore
from llm_service.engine.fair_queue import FairQueue
from llm_service.engine.sequence import Sequence
from llm_service.engine.types import EngineConfig, SamplingConfig, TokenEvent
from tandem.metrics import Metrics
from tandem.testing.engine import ScriptedModel, byte_level_tokenizer, text_request

VOCAB = 300
PROMPT = [5, 6, 7, 8]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return byte_level_tokenizer(VOCAB)


class Admissions:
    """Requests in the order their first token came out (= the order they were admitted)."""

    def __init__(self, model: ScriptedModel, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.order: list[str] = []
        self.finished: set[str] = set()

    def sequence(self, name: str, tenant: str, tokens: int) -> Sequence:
        request = text_request(self.model, PROMPT, SamplingConfig(max_new_tokens=tokens), request_id=name)
        request = dataclasses.replace(request, tenant=tenant)

        def sink(item: TokenEvent | BaseException) -> None:
            assert isinstance(item, TokenEvent), item
            if name not in self.order:
                self.order.append(name)
            if item.finish_reason is not None:
                self.finished.add(name)

        return Sequence(request, sink, self.tokenizer, ())


def _scheduler(**config: Any) -> tuple[EngineCore, ScriptedModel]:
    model = ScriptedModel([10] * 64, len(PROMPT), VOCAB, fallback=10)
    return EngineCore(model, EngineConfig(context_length=256, **config), Metrics()), model


def _step(scheduler: EngineCore, times: int = 1) -> None:
    with torch.inference_mode():
        for _ in range(times):
            scheduler.step()


def test_admission_alternates_between_tenants(tokenizer: Any) -> None:
    scheduler, model = _scheduler(max_batch_size=2)
    seen = Admissions(model, tokenizer)
    for i in range(4):
        scheduler.submit(seen.sequence(f"a{i}", "alice", tokens=1))
    for i in range(2):
        scheduler.submit(seen.sequence(f"b{i}", "bob", tokens=1))
    _step(scheduler, 6)
    assert seen.order == ["a0", "b0", "a1", "b1", "a2", "a3"]  # FIFO would be a0 a1 a2 a3 b0 b1


def test_one_tenant_never_holds_every_slot_while_another_waits(tokenizer: Any) -> None:
    scheduler, model = _scheduler(max_batch_size=4)  # default cap: 3 of 4 slots per tenant
    seen = Admissions(model, tokenizer)
    for i in range(8):
        scheduler.submit(seen.sequence(f"a{i}", "alice", tokens=40))
    _step(scheduler)
    assert Counter(s.request.tenant for s in scheduler.scheduler.running) == {"alice": 4}  # nobody waited
    scheduler.submit(seen.sequence("b0", "bob", tokens=40))
    scheduler.submit(seen.sequence("b1", "bob", tokens=40))
    while "a0" not in seen.finished:
        _step(scheduler)
    _step(scheduler)
    running = Counter(s.request.tenant for s in scheduler.scheduler.running)
    assert running["bob"] >= 1 and running["alice"] <= 3


def test_without_tenants_admission_is_fifo(tokenizer: Any) -> None:
    scheduler, model = _scheduler(max_batch_size=2)
    seen = Admissions(model, tokenizer)
    for i in range(5):
        scheduler.submit(seen.sequence(f"r{i}", "", tokens=1))
    _step(scheduler, 5)
    assert seen.order == ["r0", "r1", "r2", "r3", "r4"]


def test_a_tenant_at_its_cap_is_passed_over_even_on_its_turn(tokenizer: Any) -> None:
    model = ScriptedModel([10], len(PROMPT), VOCAB)
    seen = Admissions(model, tokenizer)
    queue = FairQueue()
    for name, tenant in [("b0", "bob"), ("a0", "alice"), ("b1", "bob"), ("a1", "alice")]:
        queue.append(seen.sequence(name, tenant, tokens=1))
    drop: list[Sequence] = []
    first = queue.pop(Counter(), cap=3, cancelled=drop.append)
    assert first is not None and first.request.request_id == "b0"  # bob's work came first
    # alice's turn (never admitted), but she already runs 3 of her cap of 3: bob goes again
    second = queue.pop(Counter({"alice": 3}), cap=3, cancelled=drop.append)
    assert second is not None and second.request.request_id == "b1"
    # only alice waits now: a slot is not left idle because of the cap
    third = queue.pop(Counter({"alice": 3}), cap=3, cancelled=drop.append)
    assert third is not None and third.request.request_id == "a0"
    assert len(queue) == 1 and not drop


def test_cancelled_requests_leave_the_queue_unseen(tokenizer: Any) -> None:
    model = ScriptedModel([10], len(PROMPT), VOCAB)
    seen = Admissions(model, tokenizer)
    queue = FairQueue()
    gone = seen.sequence("a0", "alice", tokens=1)
    kept = seen.sequence("a1", "alice", tokens=1)
    queue.append(gone)
    queue.append(kept)
    gone.cancelled = True
    dropped: list[Sequence] = []
    assert queue.pop(Counter(), cap=1, cancelled=dropped.append) is kept
    assert dropped == [gone] and len(queue) == 0 and queue.pop(Counter(), 1, dropped.append) is None


def test_the_cap_is_configurable_and_checked() -> None:
    assert EngineConfig(context_length=8, max_batch_size=8).tenant_cap == 7
    assert EngineConfig(context_length=8, max_batch_size=1).tenant_cap == 1
    assert EngineConfig(context_length=8, max_batch_size=8, max_running_per_tenant=2).tenant_cap == 2
    with pytest.raises(ValueError):
        EngineConfig(context_length=8, max_running_per_tenant=-1)
