"""The Tandem gateway: the public gRPC API in front of the vision and language services.

Layout (one file per noun):

- ``config.py``: ``GatewayConfig``, the frozen settings built once from flags/environment.
- ``servicer.py``: the thin ``GatewayService`` servicer (proto in, one domain call, proto out);
  ``convert.py`` holds every proto <-> domain conversion of the public API.
- ``service.py``: ``Gateway``, the domain facade: one-off generation, session turns, info.
- ``pipeline.py``: one generation: resolve images, encode them, stream tokens.
- ``media_guard.py`` (+ ``datauri.py``, ``fetch.py``, ``addresses.py``): turning client image
  sources into bytes under size, count, time and SSRF limits.
- ``sessions.py`` (+ ``session_redis.py``, ``session_memory.py``): durable sessions.
- ``downstream.py`` + ``routing.py``: clients of the internal services, replica choice.
- ``app.py``: wires it all to a ``GrpcServer``; ``__main__.py`` runs it until a signal.
"""
