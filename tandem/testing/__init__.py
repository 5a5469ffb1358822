"""Development tooling for tests and benchmarks; not part of the runtime, not in the wheel.

* ``checkpoints``: tiny random checkpoints in real Hugging Face classes (llava, qwen2_vl, llama,
  qwen2), built from configs, and a deterministic test image;
* ``engine``: doubles for the language worker's engine (a ``LanguageModel`` over any HF causal
  LM, tiny and real-sized random Llamas, a scripted fake model, request and stream helpers).

Nothing in the services, the client or the ``tandem`` command imports this package; it sits
above them, as ``tests/`` and ``bench/`` do, so it may import the services' packages.
"""
