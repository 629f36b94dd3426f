"""What both gRPC services share: bearer-token auth, TLS credentials, exceptions to status codes."""
