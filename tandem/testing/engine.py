"""A ``LanguageModel`` over any Hugging Face text-only ``*ForCausalLM``, for tests and benchmarks.

The production adapters (``llm_service.adapters``) load only the language half of a VLM; this one
wraps a whole causal LM so engine tests and benchmarks need no checkpoint on disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from llm_service.engine.engine import Engine
from llm_service.engine.types import EngineRequest, LanguageModel, SamplingConfig, TokenEvent

SPECIALS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2: tiny_llama's pad, bos and eos
_CORPUS = (
    "The cat sees the dog. A small bird sings in the morning; the river is quiet.",
    "Héllo wörld, ça va? Ünïcödé façade naïve café. 東京の天気は晴れです。世界 你好 🎉🚀 ✓ €100",
)


class CausalLMAdapter:
    """``LanguageModel`` for a text-only HF causal LM (1-D RoPE positions)."""

    position_dims = 1

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model.eval()
        self.dtype: torch.dtype = model.dtype
        self.device: torch.device = model.device
        self.hidden_size: int = model.config.hidden_size
        self.vocab_size: int = model.config.vocab_size

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(token_ids.to(self.device))

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        past_key_values: Any | None,
    ) -> tuple[torch.Tensor, Any]:
        out = self.model(
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            attention_mask=attention_mask,
            cache=past_key_values,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :], out.cache

    def new_cache(self) -> Any:
        return DynamicCache(config=self.model.config)


def tiny_llama(vocab_size: int = 300, seed: int = 0, **overrides: Any) -> LlamaForCausalLM:
    """A 2-layer, hidden-64 fp32 Llama with random weights (wide init: no near-tied logits)."""
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        initializer_range=0.15, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, **overrides,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.float().eval()


def smollm2_135m_shape(dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> LlamaForCausalLM:
    """SmolLM2-135M's published shape (30 layers, hidden 576, GQA 9/3) with random weights."""
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    torch.nn.Module.to(model, dtype)
    return model.eval()


def byte_level_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained here: <pad>/<s>/</s> = 0/1/2, 256 byte tokens, a few merges.

    Characters outside the merges (CJK, emoji) take several byte tokens each, which is what
    incremental detokenisation has to get right.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(list(_CORPUS) * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


class ScriptedModel:
    """A fake ``LanguageModel`` that always predicts ``script``: the token after position p is
    ``script[p - start + 1]`` (then ``fallback``), so a prompt of length ``start`` generates the
    script. Its cache is a real ``DynamicCache`` (one tiny layer), so batching runs for real.
    """

    dtype = torch.float32
    device = torch.device("cpu")
    hidden_size = 4
    position_dims = 1

    def __init__(self, script: list[int], start: int, vocab_size: int, fallback: int = 2) -> None:
        self.script, self.start, self.vocab_size, self.fallback = script, start, vocab_size, fallback
        self.forward_calls = 0

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(token_ids.shape[0], self.hidden_size)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        past_key_values: Any | None,
    ) -> tuple[torch.Tensor, Any]:
        self.forward_calls += 1
        batch, length, _ = inputs_embeds.shape
        cache = past_key_values if past_key_values is not None else self.new_cache()
        cache.update(torch.zeros(batch, 1, length, 1), torch.zeros(batch, 1, length, 1), 0)
        logits = torch.zeros(batch, self.vocab_size)
        for row, position in enumerate(position_ids[:, -1].tolist()):
            index = position - self.start + 1
            logits[row, self.script[index] if 0 <= index < len(self.script) else self.fallback] = 1.0
        return logits, cache

    def new_cache(self) -> Any:
        return DynamicCache()


def text_request(
    model: LanguageModel,
    token_ids: Sequence[int],
    sampling: SamplingConfig | None = None,
    request_id: str = "req",
    session_id: str | None = None,
    keys: Sequence[int] | None = None,
) -> EngineRequest:
    """An ``EngineRequest`` for a plain token prompt (positions 0..L-1 in every dim)."""
    ids = list(token_ids)
    with torch.inference_mode():
        embeds = model.embed(torch.tensor(ids, dtype=torch.long))
    positions = torch.arange(len(ids)).expand(model.position_dims, -1).clone()
    return EngineRequest(
        request_id=request_id, prompt_keys=list(keys if keys is not None else ids), prompt_token_ids=ids,
        inputs_embeds=embeds, position_ids=positions, next_position=len(ids),
        sampling=sampling or SamplingConfig(), session_id=session_id,
    )  # fmt: skip


@dataclass
class Generation:
    """Everything one request streamed."""

    events: list[TokenEvent]

    @property
    def token_ids(self) -> list[int]:
        return [t for event in self.events for t in event.token_ids]

    @property
    def text(self) -> str:
        return "".join(event.text for event in self.events)

    @property
    def final(self) -> TokenEvent:
        return self.events[-1]


async def collect(engine: Engine, request: EngineRequest) -> Generation:
    """Run ``request`` to completion and return what it streamed."""
    return Generation([event async for event in engine.generate(request)])
