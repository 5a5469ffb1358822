"""The public ``vlm.v1.GatewayService``: proto in, one domain call, proto out.

No ``try/except`` here: domain errors become status codes in the shared interceptor. The
caller's remaining time becomes a ``Deadline`` that every downstream hop honours; when the
caller goes away gRPC cancels the handler, and the cancellation reaches the downstream calls
awaited inside it. The caller's tenant (bound by the auth interceptor from its API key) is
passed to every domain call that touches sessions or images. A ``Generate`` or ``Chat``
message holds its size in the gateway's in-flight byte budget (``InflightBytes``) until its
stream ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc import aio
from vlm.v1 import gateway_pb2, gateway_pb2_grpc

from gateway import convert
from gateway.deadline import Deadline
from gateway.inflight import InflightBytes
from gateway.service import Gateway
from tandem.serving.auth import current_tenant
from tandem.wire.convert import model_info_to_pb


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """Adapts ``Gateway`` to the generated service base."""

    def __init__(self, gateway: Gateway, inflight: InflightBytes | None = None):
        self.gateway = gateway
        self.inflight = inflight if inflight is not None else InflightBytes(1 << 62)

    async def Generate(
        self, request: gateway_pb2.GenerateRequest, context: aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        async with self.inflight.hold(request.ByteSize()):
            chunks = self.gateway.generate(
                convert.messages_from_pb(request.messages),
                convert.sampling_from_pb(request.sampling),
                convert.request_id_from_pb(request.request_id),
                Deadline.after(context.time_remaining()),
                current_tenant(),
            )
            async for chunk in chunks:
                yield convert.generate_response(chunk)

    async def CreateSession(
        self, request: gateway_pb2.CreateSessionRequest, context: aio.ServicerContext
    ) -> gateway_pb2.CreateSessionResponse:
        state = await self.gateway.create_session(
            request.system_prompt, request.ttl_seconds, current_tenant()
        )
        return gateway_pb2.CreateSessionResponse(session=convert.session_to_pb(state))

    async def Chat(
        self, request: gateway_pb2.ChatRequest, context: aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.ChatResponse]:
        async with self.inflight.hold(request.ByteSize()):
            chunks = self.gateway.chat(
                request.session_id,
                convert.parts_from_pb(request.parts),
                convert.sampling_from_pb(request.sampling),
                convert.request_id_from_pb(request.request_id),
                Deadline.after(context.time_remaining()),
                current_tenant(),
            )
            async for chunk in chunks:
                yield convert.chat_response(chunk)

    async def GetSession(
        self, request: gateway_pb2.GetSessionRequest, context: aio.ServicerContext
    ) -> gateway_pb2.GetSessionResponse:
        state = await self.gateway.get_session(request.session_id, current_tenant())
        return gateway_pb2.GetSessionResponse(session=convert.session_to_pb(state))

    async def ListSessions(
        self, request: gateway_pb2.ListSessionsRequest, context: aio.ServicerContext
    ) -> gateway_pb2.ListSessionsResponse:
        states, token = await self.gateway.list_sessions(
            request.page_size, request.page_token, current_tenant()
        )
        sessions = [convert.session_to_pb(s, with_history=False) for s in states]
        return gateway_pb2.ListSessionsResponse(sessions=sessions, next_page_token=token)

    async def DeleteSession(
        self, request: gateway_pb2.DeleteSessionRequest, context: aio.ServicerContext
    ) -> gateway_pb2.DeleteSessionResponse:
        await self.gateway.delete_session(request.session_id, current_tenant())
        return gateway_pb2.DeleteSessionResponse()

    async def GetModelInfo(
        self, request: gateway_pb2.GetModelInfoRequest, context: aio.ServicerContext
    ) -> gateway_pb2.GetModelInfoResponse:
        return gateway_pb2.GetModelInfoResponse(info=model_info_to_pb(self.gateway.model_info()))
