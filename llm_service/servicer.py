"""The LanguageService gRPC servicer: proto in, one worker call, proto out (no try/except)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from grpc import aio
from vlm.v1 import llm_pb2, llm_pb2_grpc

from llm_service.convert import event_to_pb, info_to_pb, request_from_pb
from llm_service.worker import LanguageWorker


class LanguageServicer(llm_pb2_grpc.LanguageServiceServicer):
    """Serves the worker that ``current()`` returns (it raises Unavailable until loaded)."""

    def __init__(self, current: Callable[[], LanguageWorker], default_max_new_tokens: int):
        self._current = current
        self._default_max_new_tokens = default_max_new_tokens

    async def GenerateTokens(
        self, request: llm_pb2.GenerateTokensRequest, context: aio.ServicerContext
    ) -> AsyncIterator[llm_pb2.GenerateTokensResponse]:
        worker = self._current()
        generation = request_from_pb(request, self._default_max_new_tokens)
        async for event in worker.generate(generation, timeout=context.time_remaining()):
            yield event_to_pb(event)

    async def GetLanguageInfo(
        self, request: llm_pb2.GetLanguageInfoRequest, context: aio.ServicerContext
    ) -> llm_pb2.GetLanguageInfoResponse:
        return info_to_pb(self._current().info)
