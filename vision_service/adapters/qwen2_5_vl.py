"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): Qwen2-VL's layout with windowed attention.

Preprocessing, patch grids, the 2x2 patch merger and the token count per image are Qwen2-VL's
(the checkpoint's ``Qwen2VLImageProcessor``, its min/max pixels in the processor config that the
fingerprint hashes). The tower differs: patches are reordered into windows of
``window_size`` pixels, every block except ``fullatt_block_indexes`` attends only inside its
window, and the merged features are put back in raster order -- all inside HF's
``Qwen2_5_VisionTransformerPretrainedModel``, whose ``pooler_output`` is what
``Qwen2_5_VLModel.get_image_features`` returns. Several images in one forward stay apart
(windows and full attention never cross an image's patches), so batching does not change them.
"""

from __future__ import annotations

from typing import ClassVar

from transformers import PreTrainedModel
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from vision_service.adapters.qwen2_vl import Qwen2VLAdapter


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL checkpoints: Qwen2-VL's adapter with the windowed-attention vision module."""

    architecture = "Qwen2_5_VLForConditionalGeneration"
    tower: ClassVar[type[PreTrainedModel]] = Qwen2_5_VisionTransformerPretrainedModel
