"""``AsyncPipeline``: the client for asyncio programs (the sync ``Pipeline`` runs on top of it).

One ``grpc.aio`` channel to the gateway, opened on first use inside the running event loop.
A batch sends its prompts concurrently (at most ``max_concurrency`` calls in flight) and returns
answers in prompt order; streams yield ``Response`` chunks as they arrive, and closing a stream
early cancels its call. A stream ends with its final chunk (the one with ``finish_reason``: the
answer is whole, and a session turn already saved): the call's status, which follows it, is read
in the background and a failure there is logged, so a caller never waits a round trip for it.
gRPC failures surface as the typed errors of ``tandem.client.errors``.
``AsyncSession`` (the handle of a server-side chat session) sits beside it, on the
``SessionHandle`` base that the sync ``Session`` shares.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Generic, TypeVar, Unpack, overload

import grpc
from vlm.v1 import gateway_pb2, gateway_pb2_grpc

from tandem.client.channel import ClientOptions, ConnectionArgs, default_address
from tandem.client.config import GenerationConfig
from tandem.client.errors import InvalidArgument, from_rpc_error
from tandem.client.prompts import is_batch, to_messages, user_parts
from tandem.client.response import HistoryMessage, ModelInfo, Response, SessionInfo
from tandem.wire.convert import model_info_from_pb
from tandem.wire.late_status import LateStatuses

log = logging.getLogger(__name__)

GenConfigs = GenerationConfig | Sequence[GenerationConfig] | None
# Static shapes for type checkers: one prompt -> Response, a list of prompts -> list[Response].
OnePrompt = str | tuple[Any, ...] | list[dict[str, Any]]
BatchPrompts = list[Any]  # checked after OnePrompt: a list that is not a messages list


def build_generate_request(
    prompt: object, config: GenerationConfig, request_id: str | None = None
) -> gateway_pb2.GenerateRequest:
    """One prompt in any accepted form -> the ``GenerateRequest`` the gateway takes."""
    return gateway_pb2.GenerateRequest(
        messages=to_messages(prompt), sampling=config.to_pb(), request_id=request_id or uuid.uuid4().hex
    )


def build_chat_request(
    session_id: str, prompt: object, config: GenerationConfig, request_id: str | None = None
) -> gateway_pb2.ChatRequest:
    """One user turn -> the ``ChatRequest`` of session ``session_id``."""
    return gateway_pb2.ChatRequest(
        session_id=session_id,
        parts=user_parts(prompt),
        sampling=config.to_pb(),
        request_id=request_id or uuid.uuid4().hex,
    )


PipeT = TypeVar("PipeT")


class SessionHandle(Generic[PipeT]):
    """A server-side chat session as a pipeline hands it out (``Session``, ``AsyncSession``).

    The history lives in the gateway's store, not in this object: a session can be continued
    from another process (or another replica) by its ``session_id``. ``response`` is the answer
    of the last turn made through this handle.
    """

    def __init__(self, pipe: PipeT, session_id: str, response: Response | None = None):
        self._pipe = pipe
        self.session_id = session_id
        self.response = response

    def __repr__(self) -> str:
        return f"{type(self).__name__}(session_id={self.session_id!r})"


def session_id_of(session: SessionHandle[Any] | str) -> str:
    """The id of a session handle, or the id itself."""
    sid = session if isinstance(session, str) else session.session_id
    if not sid:
        raise ValueError("a session id must be a non-empty string")
    return sid


class AsyncPipeline:
    """Talks to a Tandem gateway; use ``async with AsyncPipeline(...)`` or ``await close()``.

    ``address`` is the gateway's host:port (None: ``$TANDEM_ADDRESS``, else localhost:50051);
    ``gen_config`` is the default sampling of every call; the connection keywords (``token``,
    ``tls``, ``root_certificates``, ``timeout``, ``max_concurrency``, ``max_message_bytes``)
    are those of ``ClientOptions``.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        gen_config: GenerationConfig | None = None,
        **connection: Unpack[ConnectionArgs],
    ):
        self.options = ClientOptions(default_address() if address is None else address, **connection)
        self.gen_config = gen_config or GenerationConfig()
        self._stub: gateway_pb2_grpc.GatewayServiceStub | None = None
        self._channel: grpc.aio.Channel | None = None
        self._slots = asyncio.Semaphore(self.options.max_concurrency)
        self._late = LateStatuses(log)  # statuses after final chunks (tandem.wire.late_status)

    async def __aenter__(self) -> AsyncPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled. The status of an answer already
        whole gets a moment to arrive first: cancelling would count it as cancelled server-side."""
        await self._late.close()
        if self._channel is not None:
            await self._channel.close(grace=None)
        self._channel = self._stub = None

    @property
    def stub(self) -> gateway_pb2_grpc.GatewayServiceStub:
        """The generated stub on this pipeline's channel (opened on first use)."""
        if self._stub is None:
            self._channel = self.options.open_channel()
            self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        return self._stub

    def _call_kwargs(self, timeout: float | None) -> dict[str, Any]:
        return {
            "timeout": timeout if timeout is not None else self.options.timeout,
            "metadata": self.options.metadata(),
        }

    def _configs(self, gen_config: GenConfigs, count: int) -> list[GenerationConfig]:
        if gen_config is None or isinstance(gen_config, GenerationConfig):
            return [gen_config or self.gen_config] * count
        configs = list(gen_config)
        if len(configs) != count:
            raise InvalidArgument(f"{len(configs)} gen_configs for {count} prompts")
        return configs

    async def _requests(self, prompts: object, gen_config: GenConfigs) -> list[gateway_pb2.GenerateRequest]:
        """The requests of ``prompts``, built in a thread: image files are read and PIL images encoded."""
        items = list(prompts) if is_batch(prompts) else [prompts]  # type: ignore[call-overload]
        configs = self._configs(gen_config, len(items))

        def build() -> list[gateway_pb2.GenerateRequest]:
            return [build_generate_request(p, c) for p, c in zip(items, configs, strict=True)]

        if all(isinstance(p, str) for p in items):  # nothing to read or encode: a thread would cost more
            return build()
        return await asyncio.to_thread(build)

    async def _unary(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return await method(request, **self._call_kwargs(timeout))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def _chunks(
        self, call: Any, index: int = 0, session_id: str | None = None
    ) -> AsyncIterator[Response]:
        complete = False
        try:
            async for message in call:
                chunk = Response.from_pb(message, index, session_id)
                complete = chunk.finish_reason is not None
                yield chunk
                if complete:
                    break
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            if complete:
                self._late.read(call, "the gateway")
            else:
                call.cancel()

    async def _generate(
        self, request: gateway_pb2.GenerateRequest, index: int, timeout: float | None
    ) -> AsyncIterator[Response]:
        async with self._slots:
            call = self.stub.Generate(request, **self._call_kwargs(timeout))
            async for chunk in self._chunks(call, index):
                yield chunk

    async def _collect(
        self, request: gateway_pb2.GenerateRequest, index: int, timeout: float | None
    ) -> Response:
        response = Response(index=index)
        async for chunk in self._generate(request, index, timeout):
            response.extend(chunk)
        return response

    @overload
    async def infer(
        self, prompts: OnePrompt, gen_config: GenConfigs = None, *, timeout: float | None = None
    ) -> Response: ...
    @overload
    async def infer(
        self, prompts: BatchPrompts, gen_config: GenConfigs = None, *, timeout: float | None = None
    ) -> list[Response]: ...
    async def infer(
        self, prompts: Any, gen_config: GenConfigs = None, *, timeout: float | None = None
    ) -> Response | list[Response]:
        """Answer one prompt (-> ``Response``) or a batch (a list -> answers in prompt order)."""
        requests = await self._requests(prompts, gen_config)
        tasks = [asyncio.ensure_future(self._collect(r, i, timeout)) for i, r in enumerate(requests)]
        try:
            answers = list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()
        return answers if is_batch(prompts) else answers[0]

    __call__ = infer

    async def stream_infer(
        self, prompts: object, gen_config: GenConfigs = None, *, timeout: float | None = None
    ) -> AsyncIterator[Response]:
        """Yield chunks as they arrive; for a batch, chunks of all prompts interleave (see ``index``)."""
        requests = await self._requests(prompts, gen_config)
        if len(requests) == 1:
            async for chunk in self._generate(requests[0], 0, timeout):
                yield chunk
            return
        async for chunk in self._merged(requests, timeout):
            yield chunk

    async def _merged(
        self, requests: list[gateway_pb2.GenerateRequest], timeout: float | None
    ) -> AsyncIterator[Response]:
        queue: asyncio.Queue[Response | BaseException | None] = asyncio.Queue()

        async def pump(index: int, request: gateway_pb2.GenerateRequest) -> None:
            try:
                async for chunk in self._generate(request, index, timeout):
                    queue.put_nowait(chunk)
                queue.put_nowait(None)
            except Exception as exc:
                queue.put_nowait(exc)

        tasks = [asyncio.ensure_future(pump(i, r)) for i, r in enumerate(requests)]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    remaining -= 1
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def create_session(self, system_prompt: str = "", ttl_seconds: int = 0) -> AsyncSession:
        """Start an empty server-side session (its history lives in the gateway's store)."""
        request = gateway_pb2.CreateSessionRequest(system_prompt=system_prompt, ttl_seconds=ttl_seconds)
        reply = await self._unary(self.stub.CreateSession, request)
        return AsyncSession(self, reply.session.session_id)

    async def stream_chat(
        self,
        prompt: object,
        session: AsyncSession | str,
        gen_config: GenerationConfig | None = None,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[Response]:
        """Add one user turn to ``session`` and yield the answer's chunks as they arrive."""
        sid = session_id_of(session)
        request = await asyncio.to_thread(
            build_chat_request, sid, prompt, gen_config or self.gen_config, request_id
        )
        call = self.stub.Chat(request, **self._call_kwargs(timeout))
        async for chunk in self._chunks(call, 0, sid):
            yield chunk

    async def chat(
        self,
        prompt: object,
        session: AsyncSession | str | None = None,
        gen_config: GenerationConfig | None = None,
        *,
        system_prompt: str = "",
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> AsyncSession:
        """One chat turn; without ``session`` a new one is created. ``session.response`` is the answer.

        A retry with the same ``request_id`` returns the committed answer instead of a second turn.
        """
        if session is None:
            session = await self.create_session(system_prompt)
        elif isinstance(session, str):
            session = AsyncSession(self, session)
        response = Response(session_id=session.session_id)
        chunks = self.stream_chat(prompt, session, gen_config, timeout=timeout, request_id=request_id)
        async for chunk in chunks:
            response.extend(chunk)
        session.response = response
        return session

    async def get_session(self, session: AsyncSession | str) -> SessionInfo:
        """The session with its committed history."""
        request = gateway_pb2.GetSessionRequest(session_id=session_id_of(session))
        return SessionInfo.from_pb((await self._unary(self.stub.GetSession, request)).session)

    async def list_sessions(self, page_size: int = 0) -> list[SessionInfo]:
        """All live sessions (without their messages), fetched page by page."""
        sessions: list[SessionInfo] = []
        token = ""
        while True:
            request = gateway_pb2.ListSessionsRequest(page_size=page_size, page_token=token)
            reply = await self._unary(self.stub.ListSessions, request)
            sessions.extend(SessionInfo.from_pb(s) for s in reply.sessions)
            token = reply.next_page_token
            if not token:
                return sessions

    async def end_session(self, session: AsyncSession | str) -> None:
        """Delete the session and its history on the server."""
        request = gateway_pb2.DeleteSessionRequest(session_id=session_id_of(session))
        await self._unary(self.stub.DeleteSession, request)

    async def model_info(self) -> ModelInfo:
        """What the gateway serves (architecture, VLM or text-only, context length)."""
        reply = await self._unary(self.stub.GetModelInfo, gateway_pb2.GetModelInfoRequest())
        return model_info_from_pb(reply.info)


class AsyncSession(SessionHandle[AsyncPipeline]):
    """A chat session of an ``AsyncPipeline``: ``await apipe.chat(prompt, session=sess)``."""

    async def get_history(self) -> list[HistoryMessage]:
        """The committed messages, read from the gateway."""
        return list((await self._pipe.get_session(self.session_id)).messages)

    async def chat(self, prompt: object, gen_config: GenerationConfig | None = None) -> AsyncSession:
        """Add one user turn; same as ``await apipe.chat(prompt, session=self)``."""
        return await self._pipe.chat(prompt, session=self, gen_config=gen_config)

    async def close(self) -> None:
        """Delete the session on the server."""
        await self._pipe.end_session(self.session_id)
