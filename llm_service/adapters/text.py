"""Text-only causal LMs (LlamaForCausalLM, Qwen2ForCausalLM): served, but images are refused.

The prompt is tokenised as the tokenizer's own ``apply_chat_template`` does (no extra special
tokens: the template writes them), which is what ``generate`` users of these models get.
"""

from __future__ import annotations

from collections.abc import Sequence

from llm_service.adapters.base import Adapter, PromptLayout
from llm_service.conversation import ImageRef
from tandem.errors import InvalidInput


class TextAdapter(Adapter):
    architectures = ("LlamaForCausalLM", "Qwen2ForCausalLM")
    is_vlm = False

    def add_special_tokens(self, prompt: str, bos_token: str | None) -> bool:
        return False

    def layout(self, token_ids: Sequence[int], images: Sequence[ImageRef]) -> PromptLayout:
        if images:
            name = self.config.architectures[0] if self.config.architectures else "this model"
            raise InvalidInput(
                f"{name} is a text-only model: remove the {len(images)} image(s) from the request"
            )
        return PromptLayout(list(token_ids), [])
