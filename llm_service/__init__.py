"""Tandem's language worker: conversation + image embeddings -> streamed tokens (vlm.v1.LanguageService).

Layout: ``config`` (LlmConfig), ``adapters/`` (one file per model family, registry by HF
architecture), ``loader`` (language half of a checkpoint), ``model`` (the engine's
``LanguageModel``), ``prompt`` (chat template, injection safety), ``features`` (embeddings from
inline records or Redis), ``worker`` (the domain call), ``convert``/``servicer`` (the gRPC edge),
``server`` (process lifecycle), ``engine/`` (scheduler, batching, sampling, KV reuse).
"""
