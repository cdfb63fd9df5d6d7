"""The gRPC transport: servers and servicers (proto <-> domain, status codes)."""
