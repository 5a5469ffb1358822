"""What every service shares: the server and Redis config (``config``), config parsing
(``options``), the gRPC server bootstrap (``bootstrap``), the readiness gate (``readiness``), the
process lifecycle (``app``), auth and the error interceptor, and observability: the request
context (``request_context``), the request interceptor and HTTP middleware (request ids, metrics,
access log: ``request_interceptor``, ``http_access``, ``access_log``), log setup (``logs``),
tracing (``tracing``) and the workers' metrics endpoint (``metrics_endpoint``)."""
