"""The LanguageService gRPC servicer: proto in, one worker call, proto out (no try/except).

The request's first token and final usage are noted for its access-log line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from grpc import aio
from vlm.v1 import llm_pb2, llm_pb2_grpc

from llm_service.convert import event_to_pb, info_to_pb, request_from_pb
from llm_service.worker import LanguageWorker
from tandem.serving import request_context


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
            if event.token_ids:
                request_context.first_output()
            if event.usage is not None:
                request_context.usage(event.usage.prompt_tokens, event.usage.completion_tokens)
            yield event_to_pb(event)

    async def ReleaseSession(
        self, request: llm_pb2.ReleaseSessionRequest, context: aio.ServicerContext
    ) -> llm_pb2.ReleaseSessionResponse:
        self._current().release_session(request.tenant, request.session_id)
        return llm_pb2.ReleaseSessionResponse()

    async def GetLanguageInfo(
        self, request: llm_pb2.GetLanguageInfoRequest, context: aio.ServicerContext
    ) -> llm_pb2.GetLanguageInfoResponse:
        return info_to_pb(self._current().info)
