"""The gRPC edge of the vision service: proto in, one domain call, proto out.

Errors are domain exceptions mapped by the shared interceptor; nothing here catches them.
Until the weights are loaded and warmed up (``attach``), calls get UNAVAILABLE.
"""

from __future__ import annotations

from grpc import aio
from vlm.v1 import common_pb2, vision_pb2, vision_pb2_grpc

from tandem.errors import Unavailable
from tandem.wire.convert import image_input_from_pb, image_ref_to_pb, model_info_to_pb
from tandem.wire.types import ModelInfo
from vision_service.domain import EncodedImage, VisionInfo
from vision_service.service import VisionService

SERVICE_NAME = vision_pb2.DESCRIPTOR.services_by_name["VisionService"].full_name


def encoded_to_pb(result: EncodedImage) -> vision_pb2.EncodedImage:
    return vision_pb2.EncodedImage(ref=image_ref_to_pb(result.ref), cache_hit=result.cache_hit)


def info_to_pb(info: VisionInfo) -> common_pb2.ModelInfo:
    """The vision half of the model, as ``ModelInfo`` (a vision worker always serves a VLM)."""
    return model_info_to_pb(
        ModelInfo(info.model, info.architecture, True, info.fingerprint, info.context_length)
    )


class VisionServicer(vision_pb2_grpc.VisionServiceServicer):
    """``vlm.v1.VisionService`` over a ``VisionService`` attached once it is ready."""

    def __init__(self, service: VisionService | None = None):
        self._service = service

    def attach(self, service: VisionService) -> None:
        self._service = service

    def register(self, server: aio.Server) -> None:
        vision_pb2_grpc.add_VisionServiceServicer_to_server(self, server)

    @property
    def service(self) -> VisionService:
        if self._service is None:
            raise Unavailable("the vision model is still loading; retry shortly")
        return self._service

    async def Encode(
        self, request: vision_pb2.EncodeRequest, context: aio.ServicerContext
    ) -> vision_pb2.EncodeResponse:
        images = [image_input_from_pb(i) for i in request.images]
        results = await self.service.encode(
            images, request.force_inline, context.time_remaining(), request.key_scope
        )
        return vision_pb2.EncodeResponse(images=[encoded_to_pb(r) for r in results])

    async def GetVisionInfo(
        self, request: vision_pb2.GetVisionInfoRequest, context: aio.ServicerContext
    ) -> vision_pb2.GetVisionInfoResponse:
        return vision_pb2.GetVisionInfoResponse(info=info_to_pb(self.service.info()))
