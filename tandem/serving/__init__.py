"""What every service shares: the server and Redis config (``config``), config parsing
(``options``), the gRPC server bootstrap (``bootstrap``), the readiness gate (``readiness``), the
process lifecycle (``app``), auth and the error interceptor."""
