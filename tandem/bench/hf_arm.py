"""``tandem bench hf``: the same workload in-process with Hugging Face ``generate()``, the baseline
arm of a serving comparison.

Conversations run one after another, batch 1, greedy. Each request's clock starts before the
image bytes are decoded and the chat template and processor run (a server does that work too),
and a streamer passed to ``generate()`` stamps every generated token as the model emits it: TTFT
is the first stamp, ITL the gaps between stamps, latency the end of ``generate()``. Multi-turn
conversations re-send the history (the previous replies as generated), as a stateless client
does. With ``ignore_eos`` every request generates exactly its ``output_len`` tokens
(``min_new_tokens``).
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tandem.bench.dataset import Conversation, DatasetConfig, Turn
from tandem.bench.metrics import RequestRecord, Slo
from tandem.bench.runner import ServeOutcome

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class HfConfig:
    """One ``tandem bench hf`` run."""

    checkpoint: str
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    warmups: int = 1
    ignore_eos: bool = False
    device: str = "cpu"
    slo: Slo | None = None
    dtype: str = "auto"  # as from_pretrained takes it: the checkpoint's, or float32, bfloat16, ...

    def __post_init__(self) -> None:
        if self.warmups < 0:
            raise ValueError(f"{self.warmups=} must be >= 0")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")


class _TokenClock:
    """A ``generate()`` streamer that only stamps each new token (the first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if self._prompt_seen:
            self.stamps.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


class HfRunner:
    """Loads the checkpoint once, then runs conversations; ``on_request`` after each measured one."""

    def __init__(self, config: HfConfig, on_request: Callable[[RequestRecord], None] = lambda _: None):
        self.config = config
        self.on_request = on_request
        self.model, self.processor, self.is_vlm = _load(config.checkpoint, config.device, config.dtype)

    def run(self, measured: list[Conversation], warmup: list[Conversation]) -> ServeOutcome:
        for conversation in warmup:
            self._conversation(conversation, [], 0.0)
        records: list[RequestRecord] = []
        started = time.perf_counter()
        for conversation in measured:
            self._conversation(conversation, records, started, measured=True)
        return ServeOutcome(self.config.checkpoint, records, time.perf_counter() - started)

    def _conversation(
        self, conversation: Conversation, records: list[RequestRecord], started: float, measured: bool = False
    ) -> None:
        history: list[dict[str, Any]] = []
        for index, turn in enumerate(conversation.turns):
            record = RequestRecord(conversation.index, index)
            record.started = time.perf_counter() - started
            message = self._generate(history, turn, record)
            history += [message, self._message("assistant", record.text)]
            records.append(record)
            if measured:
                self.on_request(record)

    def _generate(self, history: list[dict[str, Any]], turn: Turn, record: RequestRecord) -> dict[str, Any]:
        import torch

        begin = time.perf_counter()
        message = self._user(turn)
        inputs = self._inputs([*history, message])
        clock = _TokenClock()
        new = turn.output_len
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=new, min_new_tokens=new if self.config.ignore_eos else None,
                do_sample=False, streamer=clock,
            )  # fmt: skip
        record.latency = time.perf_counter() - begin
        prompt_len = int(inputs["input_ids"].shape[1])
        generated = out[0, prompt_len:]
        record.prompt_tokens, record.output_tokens = prompt_len, int(generated.numel())
        record.ttft = (clock.stamps[0] if clock.stamps else time.perf_counter()) - begin
        record.itl = [b - a for a, b in zip(clock.stamps, clock.stamps[1:], strict=False)]
        record.text = self._tokenizer().decode(generated, skip_special_tokens=True)
        record.success = True
        return message

    def _user(self, turn: Turn) -> dict[str, Any]:
        if not self.is_vlm:
            return self._message("user", turn.text)
        parts = [{"type": "image", "image": _decode(image.data_url)} for image in turn.images]
        return {"role": "user", "content": [*parts, {"type": "text", "text": turn.text}]}

    def _message(self, role: str, text: str) -> dict[str, Any]:
        return {"role": role, "content": [{"type": "text", "text": text}] if self.is_vlm else text}

    def _inputs(self, messages: list[dict[str, Any]]) -> Any:
        inputs = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        return inputs.to(self.model.device)

    def _tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)


def _decode(data_url: str) -> Any:
    from PIL import Image

    raw = base64.b64decode(data_url.split(",", 1)[1])
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image.convert("RGB")


def _load(path: str, device: str, dtype: str = "auto") -> tuple[Any, Any, bool]:
    """(model in ``dtype`` in eval mode on ``device``, processor or tokenizer, whether it takes
    images)."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    is_vlm = getattr(AutoConfig.from_pretrained(path), "vision_config", None) is not None
    model: Any
    if is_vlm:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
        processor = AutoProcessor.from_pretrained(path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        processor = AutoTokenizer.from_pretrained(path)
    return model.to(device).eval(), processor, is_vlm
