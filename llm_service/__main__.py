"""``python -m llm_service``: run one language worker until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from transformers import AutoConfig, AutoTokenizer

from llm_service.adapters import UnsupportedModel, adapter_for
from llm_service.chat_template import load_chat_template
from llm_service.config import LlmConfig
from llm_service.server import LanguageApp
from llm_service.vllm_engine import VllmMissing, require_vllm
from llm_service.vllm_engine.families import family_for
from tandem.models.checkpoint import resolve
from tandem.serving.app import run_service
from tandem.serving.logs import configure_logging
from tandem.serving.options import parse_config

log = logging.getLogger("llm_service")

DESCRIPTION = """Tandem language worker: serves vlm.v1.LanguageService.

Loads only the language half of a checkpoint (token embeddings, decoder, LM head) with its
tokenizer and chat template, reads image embeddings written by the vision service from Redis
(or inline), and streams generations with continuous batching. Health reports SERVING once the
weights are loaded and warmed up. Text-only checkpoints (any *ForCausalLM that
AutoModelForCausalLM loads and whose forward takes inputs_embeds: Llama, Qwen2/3, Mistral,
Gemma, Phi-3, ...) are served and refuse images. Flags override environment variables."""


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(LlmConfig, argv, DESCRIPTION)
    configure_logging(config.log_level, config.log_format)
    try:
        path = resolve(config.model, config.revision)
        adapter = adapter_for(AutoConfig.from_pretrained(path))
        load_chat_template(path, AutoTokenizer.from_pretrained(path), config.chat_template)
        if config.engine == "vllm":
            require_vllm()
            family_for(str(adapter.config.architectures[0]), adapter.is_vlm)
    except (UnsupportedModel, OSError, ValueError, VllmMissing) as exc:  # ValueError: config.json unusable
        log.error("%s", exc)
        return 2
    run_service(lambda tracing: LanguageApp(config, tracing=tracing), "tandem-llm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
