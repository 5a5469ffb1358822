"""The gRPC edge of the vision service: proto in, one domain call, proto out.

Errors are domain exceptions mapped by the shared interceptor; nothing here catches them.
Until the weights are loaded and warmed up (``attach``), calls get UNAVAILABLE.
"""

from __future__ import annotations

from grpc import aio
from vlm.v1 import common_pb2, vision_pb2, vision_pb2_grpc

from tandem.errors import Unavailable
from vision_service.domain import EncodedImage, ImageSource, VisionInfo
from vision_service.service import VisionService

SERVICE_NAME = vision_pb2.DESCRIPTOR.services_by_name["VisionService"].full_name


def source_from_pb(image: vision_pb2.ImageInput) -> ImageSource:
    source = image.WhichOneof("source")
    if source == "data":
        return ImageSource(data=image.data, media_type=image.media_type)
    if source == "image_id":
        return ImageSource(image_id=image.image_id, media_type=image.media_type)
    return ImageSource(media_type=image.media_type)


def encoded_to_pb(result: EncodedImage) -> vision_pb2.EncodedImage:
    ref = common_pb2.ImageRef(
        image_id=result.image_id,
        num_tokens=result.num_tokens,
        grid_thw=list(result.grid_thw),
        inline_record=result.inline_record,
    )
    return vision_pb2.EncodedImage(ref=ref, cache_hit=result.cache_hit)


def info_to_pb(info: VisionInfo) -> common_pb2.ModelInfo:
    return common_pb2.ModelInfo(
        model=info.model,
        architecture=info.architecture,
        is_vlm=True,
        fingerprint=info.fingerprint,
        context_length=info.context_length,
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
        sources = [source_from_pb(i) for i in request.images]
        results = await self.service.encode(sources, request.force_inline, context.time_remaining())
        return vision_pb2.EncodeResponse(images=[encoded_to_pb(r) for r in results])

    async def GetVisionInfo(
        self, request: vision_pb2.GetVisionInfoRequest, context: aio.ServicerContext
    ) -> vision_pb2.GetVisionInfoResponse:
        return vision_pb2.GetVisionInfoResponse(info=info_to_pb(self.service.info()))
