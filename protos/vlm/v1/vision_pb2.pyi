from vlm.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageInput(_message.Message):
    __slots__ = ("data", "image_id", "media_type")
    DATA_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    image_id: str
    media_type: str
    def __init__(self, data: _Optional[bytes] = ..., image_id: _Optional[str] = ..., media_type: _Optional[str] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("images", "force_inline", "key_scope")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    FORCE_INLINE_FIELD_NUMBER: _ClassVar[int]
    KEY_SCOPE_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[ImageInput]
    force_inline: bool
    key_scope: str
    def __init__(self, images: _Optional[_Iterable[_Union[ImageInput, _Mapping]]] = ..., force_inline: _Optional[bool] = ..., key_scope: _Optional[str] = ...) -> None: ...

class EncodedImage(_message.Message):
    __slots__ = ("ref", "cache_hit")
    REF_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    ref: _common_pb2.ImageRef
    cache_hit: bool
    def __init__(self, ref: _Optional[_Union[_common_pb2.ImageRef, _Mapping]] = ..., cache_hit: _Optional[bool] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[EncodedImage]
    def __init__(self, images: _Optional[_Iterable[_Union[EncodedImage, _Mapping]]] = ...) -> None: ...

class GetVisionInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetVisionInfoResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: _common_pb2.ModelInfo
    def __init__(self, info: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ...) -> None: ...
