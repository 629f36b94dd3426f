"""gRPC servicers, interceptors and server wiring."""
