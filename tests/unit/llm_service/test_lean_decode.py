"""The lean decode step computes the transformers forward's logits bit for bit, for every decoder it
covers (grouped and plain heads, biases, padded rows, packed and plain linears), and steps it must
not take (a sliding window in reach, prefill, uncovered decoders) run the transformers forward."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import (
    AutoModel,
    LlamaConfig,
    MistralConfig,
    Qwen2_5_VLTextConfig,
    Qwen2Config,
    Qwen2VLTextConfig,
    Qwen3Config,
)

from llm_service.engine.batch import DecodeBatch
from llm_service.lean_decode import LeanDecoder, unsupported
from llm_service.model import CausalLM, HFLanguageModel
from tandem.models.packed_linear import can_prepack, prepack_linears

SHAPE = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    vocab_size=300,
    max_position_embeddings=256,
)


def _configs() -> dict[str, Any]:
    return {
        "llama-gqa": LlamaConfig(**SHAPE, num_key_value_heads=2),
        "llama-mha-bias": LlamaConfig(**SHAPE, num_key_value_heads=4, attention_bias=True, mlp_bias=True),
        "qwen2": Qwen2Config(**SHAPE, num_key_value_heads=1),  # q/k/v biases
        "mistral-window": MistralConfig(**SHAPE, num_key_value_heads=2, sliding_window=24),
        # M-RoPE: head_dim 16, sections over its 8 frequencies
        "qwen2-vl": Qwen2VLTextConfig(**SHAPE, num_key_value_heads=2, rope_parameters=MROPE),
        "qwen2.5-vl": Qwen2_5_VLTextConfig(**SHAPE, num_key_value_heads=2, rope_parameters=MROPE),
    }


MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}


def _dims(config: Any) -> int:
    return 3 if "rope_parameters" in config.to_dict() and "mrope_section" in config.rope_parameters else 1


def _models(config: Any, packed: bool) -> tuple[HFLanguageModel, HFLanguageModel]:
    torch.manual_seed(0)
    config._attn_implementation = "sdpa"
    decoder = AutoModel.from_config(config, dtype=torch.float32)
    module = CausalLM(decoder, config.hidden_size, config.vocab_size).eval().requires_grad_(False)
    if packed:
        prepack_linears(module)
    dims = _dims(config)
    return HFLanguageModel(module, config, dims, "lean"), HFLanguageModel(module, config, dims, "hf")


def _decode(model: HFLanguageModel, lengths: list[int], steps: int, seed: int) -> list[torch.Tensor]:
    """Prefill rows of ``lengths`` one by one (left padding in the batch), then ``steps`` greedy
    decode steps; the logits of every step."""
    generator = torch.Generator().manual_seed(seed)
    batch: DecodeBatch[int] = DecodeBatch(model.device)
    last = []
    for row, n in enumerate(lengths):
        ids = torch.randint(0, model.vocab_size, (1, n), generator=generator)
        logits, cache = model.forward(
            model.embed(ids), torch.arange(n)[None], torch.ones(1, n, dtype=torch.long), None
        )
        batch.add([([row], cache, [n])])
        last.append(int(logits.argmax(-1)))
    out = []
    for step in range(steps):
        mask = batch.next_mask()
        positions = torch.tensor([[n + step] for n in lengths])
        if model.position_dims == 3:  # M-RoPE rows as the engine sends them (here made to differ)
            positions = torch.stack([positions, positions + 2, positions + 5])
        embeds = model.embed(torch.tensor(last))[:, None, :]
        logits, cache = model.forward(embeds, positions, mask, batch.cache)
        batch.advance(cache, mask)
        last = logits.argmax(-1).tolist()
        out.append(logits)
    return out


@pytest.mark.parametrize("restated", [True, False], ids=["restated-sdpa", "transformers-sdpa"])
@pytest.mark.parametrize("packed", [False, True], ids=["nn-linear", "packed"])
@pytest.mark.parametrize("name", list(_configs()))
def test_lean_steps_equal_the_transformers_forward_bit_for_bit(
    name: str, packed: bool, restated: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if packed and can_prepack(torch.device("cpu"), torch.float32) is not None:
        pytest.skip("no oneDNN linear ops in this torch")
    lean, hf = _models(_configs()[name], packed)
    assert lean.lean is not None and hf.lean is None
    if restated and not lean.lean.restated:
        pytest.skip("this transformers has no pack_gqa: its own sdpa function is called")
    lean.lean.restated = restated
    steps = []  # the steps the lean path ran: the comparison must not be HF against HF
    run = LeanDecoder.__call__
    monkeypatch.setattr(LeanDecoder, "__call__", lambda self, *a: steps.append(1) or run(self, *a))
    with torch.inference_mode():
        for lengths in ([9], [20, 13, 5]):  # one row; rows of different lengths (padding)
            expected = _decode(hf, lengths, 8, seed=len(lengths))
            got = _decode(lean, lengths, 8, seed=len(lengths))
            for step, (a, b) in enumerate(zip(got, expected, strict=True)):
                assert torch.equal(a, b), f"{name}, rows {lengths}, step {step}"
    assert len(steps) >= 8, f"the lean path ran {len(steps)} of 16 steps"


def test_a_step_a_sliding_window_could_cut_takes_the_transformers_forward() -> None:
    lean, _ = _models(_configs()["mistral-window"], packed=False)
    assert lean.lean is not None and lean.lean.window == 24
    embeds, cache, one = torch.zeros(1, 1, 64), _Cached(23), torch.zeros(1, 1, dtype=torch.long)
    assert lean.lean.step_supported(embeds, one, torch.ones(1, 24, dtype=torch.long), cache)
    assert not lean.lean.step_supported(embeds, one, torch.ones(1, 25, dtype=torch.long), _Cached(24))
    prefill = torch.zeros(1, 2, 64)
    assert not lean.lean.step_supported(prefill, one, torch.ones(1, 25, dtype=torch.long), cache)
    assert not lean.lean.step_supported(
        embeds, one, torch.ones(1, 30, dtype=torch.long), cache
    )  # mask != cache
    rows = torch.zeros(3, 1, 1, dtype=torch.long)  # M-RoPE positions pass; packed ones (4 rows) do not
    assert lean.lean.step_supported(embeds, rows, torch.ones(1, 24, dtype=torch.long), cache)
    assert not lean.lean.step_supported(
        embeds, torch.zeros(4, 1, 1, dtype=torch.long), torch.ones(1, 24, dtype=torch.long), cache
    )


class _Cached:
    def __init__(self, length: int) -> None:
        self.length = length

    def get_seq_length(self) -> int:
        return self.length


def test_decoders_it_does_not_restate_keep_the_transformers_forward() -> None:
    qwen3 = Qwen3Config(**SHAPE, num_key_value_heads=2, head_dim=16)  # q/k norms it does not restate
    qwen3._attn_implementation = "sdpa"
    decoder = AutoModel.from_config(qwen3)
    assert "Qwen3DecoderLayer" in str(unsupported(decoder, qwen3, torch.device("cpu")))
    llama = LlamaConfig(**SHAPE, num_key_value_heads=2)
    llama._attn_implementation = "eager"
    assert "not sdpa" in str(unsupported(AutoModel.from_config(llama), llama, torch.device("cpu")))
    llama._attn_implementation = "sdpa"
    decoder = AutoModel.from_config(llama)
    assert unsupported(decoder, llama, torch.device("cpu")) is None
    assert unsupported(decoder, llama, torch.device("cuda")) == "the model runs on cuda"
    module = CausalLM(decoder, 64, 300)
    assert HFLanguageModel(module, llama, 1, "hf").lean_unsupported == "--decode-path hf"
