"""What every service shares: the gRPC server bootstrap, the error interceptor, config parsing."""
