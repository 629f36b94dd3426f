"""Generated stubs for secateurs.v1 (regenerate: python clients/python/tools/gen_stubs.py)."""
