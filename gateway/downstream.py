"""Async clients of the internal services: replica choice, fail-over, deadlines, error mapping.

Every call passes the caller's remaining time as its gRPC timeout. A replica that answers
UNAVAILABLE before it produced anything is skipped for the next one in the routing order (the
next rendezvous choice of the session or of the prompt's prefix; routing.py); once a stream has produced
tokens its failure is the caller's failure. Downstream statuses become domain errors:
INVALID_ARGUMENT, NOT_FOUND and RESOURCE_EXHAUSTED keep their (caller-facing) message,
UNAVAILABLE and DEADLINE_EXCEEDED get our own message, anything else is a generic internal
error (details go to the log only). A consumer that stops iterating a stream, or is
cancelled, cancels the downstream call. A generation ends at its final message (the one with a
finish reason): the replica's status is read in the background, so the gateway's own answer
does not wait one more round trip for it. Each call carries the request's id (``x-request-id``)
and, when tracing, a client span's ``traceparent``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence

import grpc
from grpc import aio
from vlm.v1 import llm_pb2, llm_pb2_grpc, vision_pb2, vision_pb2_grpc

from gateway import convert
from gateway.deadline import Deadline
from gateway.discovery import ReplicaDiscovery, Resolve, system_resolve
from gateway.messages import Chunk, ImageInput, ImageRef, Message, ModelInfo, Sampling
from gateway.routing import Router, prefix_key
from tandem.errors import (
    GENERIC_INTERNAL_MESSAGE,
    DeadlineExceeded,
    InvalidInput,
    NotFound,
    Overloaded,
    TandemError,
    Unavailable,
)
from tandem.serving import request_context
from tandem.serving.bootstrap import channel_options
from tandem.wire.convert import (
    finish_from_pb,
    image_input_to_pb,
    image_ref_from_pb,
    model_info_from_pb,
    usage_from_pb,
)
from tandem.wire.late_status import LateStatuses

log = logging.getLogger(__name__)

_PASS_THROUGH: dict[grpc.StatusCode, type[TandemError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
}


def map_rpc_error(err: aio.AioRpcError, service: str) -> TandemError:
    """The domain error a downstream status becomes (safe for the caller)."""
    code = err.code()
    if code in _PASS_THROUGH:
        return _PASS_THROUGH[code](err.details() or code.name.lower())
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return Unavailable(f"the {service} service is unavailable; retry later")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"deadline exceeded while waiting for the {service} service")
    log.error("%s service answered %s: %s", service, code.name, err.details())
    return TandemError(GENERIC_INTERNAL_MESSAGE)


class Downstream:
    """Channels to the vision and language replicas (created on first use, closed by ``close``).

    Language addresses written ``dns:///NAME:PORT`` are resolved by ``discovery`` (one replica per
    address found, re-resolved every ``resolve_seconds`` once ``start`` ran; discovery.py).
    """

    def __init__(
        self,
        vision_addresses: Sequence[str],
        llm_addresses: Sequence[str],
        max_message_bytes: int,
        auth_token: str | None = None,
        tls_ca: bytes | None = None,
        max_images_per_encode: int = 32,
        resolve: Resolve = system_resolve,
        resolve_seconds: float = 10.0,
        drain_seconds: float = 60.0,
    ):
        self.vision = Router(vision_addresses) if vision_addresses else None
        self.discovery = ReplicaDiscovery(llm_addresses, resolve, resolve_seconds, self._language_changed)
        self.language = Router(self.discovery.nodes())
        self.drain_seconds = drain_seconds
        self._draining: dict[asyncio.Future[None], aio.Channel] = {}  # channels of gone replicas
        self._late = LateStatuses(log)  # statuses of answered calls (generate)
        self.max_images_per_encode = max_images_per_encode
        # round_robin: a headless Service name (dns:///vision:50053) resolves to every pod and
        # calls are balanced per call instead of pinned to the first address (pick_first).
        self._options = [*channel_options(max_message_bytes), ("grpc.lb_policy_name", "round_robin")]
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        )
        self._credentials = grpc.ssl_channel_credentials(tls_ca) if tls_ca else None
        self._channels: dict[str, aio.Channel] = {}
        self._language_stubs: dict[str, llm_pb2_grpc.LanguageServiceStub] = {}
        self._vision_stubs: dict[str, vision_pb2_grpc.VisionServiceStub] = {}

    def _language_stub(self, address: str) -> llm_pb2_grpc.LanguageServiceStub:
        """The stub of ``address`` (built once: a stub registers its methods on the channel)."""
        if (stub := self._language_stubs.get(address)) is None:
            stub = self._language_stubs[address] = llm_pb2_grpc.LanguageServiceStub(self._channel(address))
        return stub

    def _vision_stub(self, address: str) -> vision_pb2_grpc.VisionServiceStub:
        if (stub := self._vision_stubs.get(address)) is None:
            stub = self._vision_stubs[address] = vision_pb2_grpc.VisionServiceStub(self._channel(address))
        return stub

    def _channel(self, address: str) -> aio.Channel:
        if address not in self._channels:
            if self._credentials is not None:
                options = list(self._options)
                if (name := self.discovery.authority(address)) is not None:  # a pod's IP: verify the name
                    options.append(("grpc.ssl_target_name_override", name))
                channel = aio.secure_channel(address, self._credentials, options=options)
            else:
                channel = aio.insecure_channel(address, options=self._options)
            self._channels[address] = channel
        return self._channels[address]

    async def start(self) -> None:
        """Resolve the ``dns:///`` language addresses now, then keep them current."""
        await self.discovery.refresh()
        self.discovery.start()

    def _language_changed(self, nodes: list[str]) -> None:
        """Route over ``nodes``; a gone replica's channel closes once its calls end (or after
        ``drain_seconds``)."""
        gone = set(self.language.nodes) - set(nodes)
        self.language.update(nodes)
        for address in gone:
            channel = self._channels.pop(address, None)
            self._language_stubs.pop(address, None)
            if channel is not None:
                task = asyncio.ensure_future(channel.close(self.drain_seconds))
                self._draining[task] = channel
                task.add_done_callback(lambda done: self._draining.pop(done, None))

    async def close(self) -> None:
        await self.discovery.stop()
        await self._late.close()
        for task, channel in list(self._draining.items()):
            task.cancel()
            await channel.close(None)
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
        self._language_stubs.clear()
        self._vision_stubs.clear()

    async def language_info(self, timeout: float) -> ModelInfo:
        """The model of the first language replica that answers."""
        for address in self.language.next_order():
            stub = self._language_stub(address)
            try:
                response = await stub.GetLanguageInfo(
                    llm_pb2.GetLanguageInfoRequest(), timeout=timeout, metadata=self._metadata
                )
            except aio.AioRpcError as err:
                log.info("language replica %s not ready: %s", address, err.code().name)
                continue
            return model_info_from_pb(response.info)
        raise Unavailable("no language replica answered")

    async def vision_info(self, timeout: float) -> ModelInfo:
        """The model of the first vision replica that answers."""
        for address in self._vision().next_order():
            stub = self._vision_stub(address)
            try:
                response = await stub.GetVisionInfo(
                    vision_pb2.GetVisionInfoRequest(), timeout=timeout, metadata=self._metadata
                )
            except aio.AioRpcError as err:
                log.info("vision replica %s not ready: %s", address, err.code().name)
                continue
            return model_info_from_pb(response.info)
        raise Unavailable("no vision replica answered")

    def _vision(self) -> Router:
        if self.vision is None:
            raise InvalidInput("this model is text-only; remove the image parts")
        return self.vision

    async def encode(
        self, images: Sequence[ImageInput], force_inline: bool, deadline: Deadline, scope: str = ""
    ) -> list[ImageRef]:
        """Refs of ``images`` in order: one Encode call, or parallel ones past the per-call limit;
        ``scope`` salts the ids of sent bytes (``EncodeRequest.key_scope``)."""
        size = self.max_images_per_encode
        if len(images) <= size:
            return await self._encode_once(images, force_inline, deadline, scope)
        groups = [images[i : i + size] for i in range(0, len(images), size)]
        tasks = [asyncio.ensure_future(self._encode_once(g, force_inline, deadline, scope)) for g in groups]
        try:
            results = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        return [ref for group in results for ref in group]

    async def _encode_once(
        self, images: Sequence[ImageInput], force_inline: bool, deadline: Deadline, scope: str
    ) -> list[ImageRef]:
        request = vision_pb2.EncodeRequest(
            images=[image_input_to_pb(i) for i in images], force_inline=force_inline, key_scope=scope
        )
        for address in self._vision().next_order():
            stub = self._vision_stub(address)
            try:
                with request_context.outgoing("vlm.v1.VisionService/Encode", _peer(address)) as metadata:
                    response = await stub.Encode(
                        request, timeout=deadline.remaining(), metadata=(*self._metadata, *metadata)
                    )
            except aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNAVAILABLE:
                    log.warning("vision replica %s unavailable; trying the next", address)
                    continue
                raise map_rpc_error(err, "vision") from None
            if len(response.images) != len(images):
                log.error(
                    "vision replica %s returned %d refs for %d images",
                    address,
                    len(response.images),
                    len(images),
                )
                raise TandemError(GENERIC_INTERNAL_MESSAGE)
            return [image_ref_from_pb(item.ref) for item in response.images]
        raise Unavailable("the vision service is unavailable; retry later")

    async def generate(
        self,
        messages: Sequence[Message],
        sampling: Sampling,
        request_id: str,
        session_id: str,
        deadline: Deadline,
        tenant: str = "",
    ) -> AsyncGenerator[Chunk, None]:
        """Stream the answer from the session's replica, or without a session from the replica
        its prompt prefix leads to (``Router.for_prefix``); the language service keys the
        session's KV by (``tenant``, ``session_id``)."""
        request = llm_pb2.GenerateTokensRequest(
            request_id=request_id,
            messages=[convert.message_to_pb(m) for m in messages],
            sampling=convert.sampling_to_pb(sampling),
            session_id=session_id,
            tenant=tenant,
        )
        if session_id:
            order = self.language.for_key(session_id)
        else:
            order = self.language.for_prefix(prefix_key(messages, tenant))
        for address in order:
            stub = self._language_stub(address)
            outgoing = request_context.outgoing("vlm.v1.LanguageService/GenerateTokens", _peer(address))
            with outgoing as metadata, self.language.serving(address):
                call = stub.GenerateTokens(
                    request, timeout=deadline.remaining(), metadata=(*self._metadata, *metadata)
                )
                started = finished = False
                try:
                    async for response in call:
                        started = True
                        chunk = _chunk(response)
                        finished = chunk.is_final
                        yield chunk
                        if finished:
                            break
                    return
                except aio.AioRpcError as err:
                    if err.code() == grpc.StatusCode.UNAVAILABLE and not started:
                        log.warning("language replica %s unavailable; trying the next", address)
                        continue
                    raise map_rpc_error(err, "language") from None
                finally:
                    if finished:  # the caller does not wait for the replica's status
                        self._late.read(call, f"language replica {address}")
                    else:
                        call.cancel()
        raise Unavailable("the language service is unavailable; retry later")

    async def release_session(self, session_id: str, tenant: str, timeout: float) -> None:
        """Ask the session's replica (its rendezvous choice) to drop its KV; best effort, logged."""
        address = self.language.order(session_id)[0]
        stub = self._language_stub(address)
        request = llm_pb2.ReleaseSessionRequest(session_id=session_id, tenant=tenant)
        try:
            await stub.ReleaseSession(request, timeout=timeout, metadata=self._metadata)
        except aio.AioRpcError as err:
            log.warning(
                "language replica %s kept the KV of deleted session %s: %s",
                address,
                session_id,
                err.code().name,
            )


def _peer(address: str) -> dict[str, str]:
    """Span attributes of a call to ``address``."""
    return {"rpc.system": "grpc", "server.address": address}


def _chunk(response: llm_pb2.GenerateTokensResponse) -> Chunk:
    finish = finish_from_pb(response.finish_reason)
    usage = usage_from_pb(response.usage) if finish is not None else None
    return Chunk(response.text, tuple(response.token_ids), finish, usage)
