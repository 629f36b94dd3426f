"""Job store (SQLite), blob and artifact store, worker processes."""
