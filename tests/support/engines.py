"""What the engine tests share: an engine that runs for a ``with`` block, random prompts, and
requests awaited together while watching how many the engine runs at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from typing import TypeVar

import torch

from llm_service.engine import Engine

T = TypeVar("T")


@contextlib.contextmanager
def running_engine(engine: Engine) -> Iterator[Engine]:
    """``engine`` started; stopped when the block ends, even after a failure."""
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


def random_ids(length: int, seed: int, vocab_size: int = 300) -> list[int]:
    """``length`` token ids past the special ones (0-2), the same for the same ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (length,), generator=generator).tolist()


async def gather_with_peak(engine: Engine, *requests: Awaitable[T]) -> tuple[list[T], int]:
    """``requests`` awaited together: their results, in order, and the most ``engine`` ran at once
    (sampled every millisecond while they run)."""
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, engine.running)
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(*requests)
    finally:
        watcher.cancel()
    return list(results), peak
