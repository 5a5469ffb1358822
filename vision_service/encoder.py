"""The encoder worker: one dedicated thread that owns every vision forward.

Lifecycle: ``start()`` launches the thread; ``encode(pixels)`` (from the event loop) queues a
group of images and awaits their features; ``close()`` stops the thread after the queued work.

The thread takes the next group and, while it holds fewer than ``max_batch`` images, adds
further queued groups (requests arriving together share one forward). Each forward holds at most
``max_batch`` images; groups whose caller went away (cancelled future) are skipped. The event
loop never runs model code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass

from tandem.metrics import Metrics
from vision_service.adapters import ImageFeatures, Pixels, VisionAdapter

log = logging.getLogger(__name__)


@dataclass
class _Group:
    pixels: list[Pixels]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[ImageFeatures]]


class EncoderWorker:
    """Runs ``adapter.encode`` in one thread, batching queued images up to ``max_batch``."""

    def __init__(self, adapter: VisionAdapter, max_batch: int, metrics: Metrics):
        self.adapter = adapter
        self.max_batch = max_batch
        self.metrics = metrics
        self._queue: queue.SimpleQueue[_Group | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="vision-encoder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def encode(self, pixels: list[Pixels]) -> list[ImageFeatures]:
        """Features of ``pixels``, in order (runs on the encoder thread)."""
        if not pixels:
            return []
        loop = asyncio.get_running_loop()
        group = _Group(pixels, loop, loop.create_future())
        self._queue.put(group)
        return await group.future

    @property
    def backlog(self) -> int:
        """Groups queued and not yet taken by the encoder thread (approximate)."""
        return self._queue.qsize()

    def close(self, timeout: float = 30.0) -> None:
        """Finish queued work and stop the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        pending: list[_Group] = []
        while True:
            if not pending:
                item = self._queue.get()
                if item is None:
                    return
                pending.append(item)
            batch = self._take(pending)
            self._forward(batch)

    def _take(self, pending: list[_Group]) -> list[_Group]:
        """Groups for the next forward: the first pending one plus queued ones that still fit."""
        batch = [pending.pop(0)]
        size = len(batch[0].pixels)
        while size < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # stop after this forward
                break
            if size + len(item.pixels) > self.max_batch:
                pending.append(item)
                break
            batch.append(item)
            size += len(item.pixels)
        live = [g for g in batch if not g.future.cancelled()]
        if len(live) < len(batch):  # their callers left before the forward: never encoded
            dropped = sum(len(g.pixels) for g in batch) - sum(len(g.pixels) for g in live)
            self.metrics.inc("vision_images_dropped", dropped)
        return live

    def _forward(self, groups: list[_Group]) -> None:
        pixels = [p for g in groups for p in g.pixels]
        try:
            features: list[ImageFeatures] = []
            for start in range(0, len(pixels), self.max_batch):
                chunk = pixels[start : start + self.max_batch]
                began = time.perf_counter()
                features += self.adapter.encode_features(chunk)
                self.metrics.observe("vision_encode_seconds", time.perf_counter() - began)
                self.metrics.inc("vision_encoder_batches")
                self.metrics.inc("vision_images_encoded", len(chunk))
        except Exception as exc:  # delivered to every waiting caller; the thread keeps serving
            log.exception("encoder forward failed for %d images", len(pixels))
            for g in groups:
                _deliver(g, exc)
            return
        offset = 0
        for g in groups:
            _deliver(g, features[offset : offset + len(g.pixels)])
            offset += len(g.pixels)


def _deliver(group: _Group, result: list[ImageFeatures] | Exception) -> None:
    def settle() -> None:
        if group.future.done():
            return
        if isinstance(result, Exception):
            group.future.set_exception(result)
        else:
            group.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the caller's loop is already closed
        group.loop.call_soon_threadsafe(settle)
