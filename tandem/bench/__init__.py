"""``tandem bench``: a serving benchmark for any OpenAI-compatible server, modelled on ``vllm bench serve``.

- ``dataset``: seeded synthetic workloads (``random`` text, ``random-mm`` with an image pool and a
  reuse ratio), single or multi-turn;
- ``arrivals``: Poisson or all-at-once start times;
- ``sse`` and ``client``: the streaming OpenAI client that times every chunk;
- ``runner``: runs a workload against a server (``tandem bench serve``);
- ``hf_arm``: the same workload in-process with Hugging Face ``generate()`` (``tandem bench hf``);
- ``overhead`` (and its ``overhead_arms``): B10, what the gateway adds to a text-only request
  over the in-process worker (``tandem bench overhead``);
- ``metrics``: TTFT, TPOT, ITL, end-to-end latency, throughput and goodput;
- ``scrape``: the server's ``/metrics`` before and after a run: time per request in each stage,
  and B4's breakdown of TTFT (``tandem bench serve --metrics-url``);
- ``report``: the JSON file of a run, its table, and the ratio table of two runs;
- ``checkpoints``: random-weight checkpoints at published shapes (``tandem bench checkpoint``).

Heavy dependencies (torch, transformers, aiohttp) are imported only by the code that needs them.
"""
