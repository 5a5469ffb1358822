"""Tandem's vision service: images -> embeddings, cached in Redis by the sha256 of the bytes.

Layout: ``config`` (the frozen CLI/env config), ``media`` (bytes -> upright RGB, with limits),
``adapters`` (one file per model family, registry keyed by HF architecture), ``encoder`` (the
single encoder thread), ``singleflight`` (one encode per new image, in process and across
replicas), ``service`` (the domain pipeline), ``servicer`` (the gRPC edge), ``app`` (process
lifecycle), ``inprocess`` (a server in the caller's event loop), ``__main__``.
"""
