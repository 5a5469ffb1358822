"""The language worker of ``--engine vllm``: Tandem's prompt side, vLLM's engine, no weights here.

Only the config, tokenizer and chat template are read in this process (for prompts, the cache
fingerprint and the checks before generation); vLLM loads the language model itself when the
engine starts.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoTokenizer

from llm_service.adapters import adapter_for
from llm_service.chat_template import load_chat_template
from llm_service.config import LlmConfig
from llm_service.features import FeatureSource
from llm_service.prompt import PromptBuilder
from llm_service.vllm_engine import require_vllm
from llm_service.vllm_engine.families import family_for
from llm_service.vllm_engine.options import VllmOptions, parse_engine_args
from llm_service.worker import LanguageWorker, ModelInfo
from tandem.embeddings.cache import CacheSettings, EmbeddingCache
from tandem.embeddings.kv import KeyValueStore
from tandem.metrics import Metrics
from tandem.models.checkpoint import resolve
from tandem.models.fingerprint import fingerprint
from tandem.models.model_name import served_model_name


def build_vllm_worker(config: LlmConfig, store: KeyValueStore | None, metrics: Metrics) -> LanguageWorker:
    """A worker whose engine is vLLM (created, not started); refuses a family vLLM cannot take."""
    require_vllm()
    from llm_service.vllm_engine.engine import VllmEngine  # imports vLLM

    path = resolve(config.model, config.revision)
    adapter = adapter_for(AutoConfig.from_pretrained(path))
    architecture = str(adapter.config.architectures[0])
    family = family_for(architecture, adapter.is_vlm)
    text_config = adapter.text_config
    length = config.context_length or int(getattr(text_config, "max_position_embeddings", 0) or 0)
    if length < 2:
        raise ValueError("the model config has no max_position_embeddings: set --context-length")
    tokenizer = AutoTokenizer.from_pretrained(path)
    key = fingerprint(path, config.model, config.revision)
    info = ModelInfo(
        served_model_name(config.model, config.served_model_name or None),
        architecture,
        adapter.is_vlm,
        key,
        length,
    )
    options = VllmOptions(
        model=str(path),
        context_length=length,
        max_batch_size=config.max_batch_size,
        max_queue=config.max_queue,
        dtype=config.dtype,
        prefix_caching=config.kv_reuse_bytes > 0,
        gpu_memory_utilization=config.gpu_memory_utilization,
        tensor_parallel_size=config.tensor_parallel_size,
        embed_only=family.modalities,
        extra=tuple(parse_engine_args(config.vllm_arg).items()),
    )
    engine = VllmEngine(options, family, int(text_config.vocab_size), metrics)
    hidden = int(text_config.hidden_size)
    cache = None
    if store is not None:
        settings = CacheSettings(prefix=config.cache_prefix)
        cache = EmbeddingCache(store, key, hidden, settings, metrics, adapter.extras)
    features = FeatureSource(key, hidden, cache, adapter.extras, metrics)
    template = load_chat_template(path, tokenizer, config.chat_template)
    prompts = PromptBuilder(tokenizer, template, adapter.add_special_tokens, adapter.expander(tokenizer))
    return LanguageWorker(None, adapter, prompts, features, engine, info)
