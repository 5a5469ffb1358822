"""The Python client of a Tandem gateway, in the style of LMDeploy's ``pipeline``.

``from tandem import pipeline, GenerationConfig`` is the usual entry point; this package also
exports the async client, the response types and the typed errors. It imports neither torch nor
Pillow (Pillow only when a PIL image is passed in).
"""

from tandem.client.async_pipeline import AsyncPipeline, AsyncSession
from tandem.client.config import GenerationConfig
from tandem.client.errors import (
    Aborted,
    Cancelled,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TandemClientError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from tandem.client.images import ImageId
from tandem.client.pipeline import Pipeline, Session, pipeline
from tandem.client.response import HistoryMessage, ModelInfo, Response, SessionInfo, Usage

__all__ = [
    "Aborted",
    "AsyncPipeline",
    "AsyncSession",
    "Cancelled",
    "DeadlineExceeded",
    "GenerationConfig",
    "HistoryMessage",
    "ImageId",
    "Internal",
    "InvalidArgument",
    "ModelInfo",
    "NotFound",
    "PermissionDenied",
    "Pipeline",
    "ResourceExhausted",
    "Response",
    "Session",
    "SessionInfo",
    "TandemClientError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Usage",
    "pipeline",
]
