"""secateurs: a model compression service."""

__version__ = "0.1.0"
