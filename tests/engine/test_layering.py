"""The direction of imports (docs/architecture.md): the engine knows no gRPC, no stubs, no server,
no store and no probe, and no module of the package imports itself back through others."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import secateurs

PACKAGE = Path(secateurs.__file__).parent
FORBIDDEN_IN_ENGINE = ("grpc", "secateurs_client", "secateurs.api", "secateurs.jobs", "secateurs.probe",
                       "secateurs.cli", "secateurs.demo")
MAX_FUNCTION_LINES = 100  # docstring and comments included: a function longer than this is several


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Modules `path` imports: at module level only, or anywhere (function-level imports too)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
    return found


def _graph(*, top_level_only: bool) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path, top_level_only=top_level_only) if m in modules and m != name}
            for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, or None (depth-first, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_engine_imports_no_grpc_stub_server_store_or_probe() -> None:
    engine = PACKAGE / "engine"
    offending = {f"{p.relative_to(PACKAGE)}: {m}" for p in engine.rglob("*.py")
                 for m in _imports(p, top_level_only=False) if m.startswith(FORBIDDEN_IN_ENGINE)}
    assert not offending, sorted(offending)


def test_no_module_imports_itself_back_even_inside_a_function() -> None:
    assert _cycle(_graph(top_level_only=True)) is None
    assert _cycle(_graph(top_level_only=False)) is None  # lazy and TYPE_CHECKING imports count too


def test_the_specs_load_without_torch_or_any_stage() -> None:
    # both front ends read specs; a spec module that pulled in torch would make validation cost seconds
    code = ("import sys, secateurs.engine.spec; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('secateurs.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert ast.literal_eval(loaded) == ["secateurs.engine", "secateurs.engine.budget", "secateurs.engine.spec",
                                        "secateurs.errors"]


def _loaded_by(module: str) -> list[str]:
    code = (f"import sys, {module}; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('secateurs.')))")
    return ast.literal_eval(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout)


def test_the_one_validator_and_the_searcher_load_without_torch() -> None:
    # the CLI and the API validate every job with engine/validate.py before a worker starts: no torch there;
    # and the searcher is a pure proposer, reusable by anything that can measure a plan
    assert "torch" not in _loaded_by("secateurs.engine.validate")
    assert "torch" not in _loaded_by("secateurs.engine.search.searcher")


def test_the_probe_shares_the_rpc_helpers_not_the_api() -> None:
    probe = PACKAGE / "probe"
    offending = {f"{p.relative_to(PACKAGE)}: {m}" for p in probe.rglob("*.py")
                 for m in _imports(p, top_level_only=False) if m.startswith(("secateurs.api", "secateurs.jobs"))}
    assert not offending, sorted(offending)
    assert "secateurs.rpc.auth" in _imports(probe / "server.py", top_level_only=True)


def test_no_function_of_the_package_is_over_100_lines() -> None:
    long = sorted(f"{path.relative_to(PACKAGE)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
                  for path in PACKAGE.rglob("*.py")
                  for node in ast.walk(ast.parse(path.read_text(), str(path)))
                  if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES)
    assert not long, long


def test_the_checks_see_what_they_look_for() -> None:
    # the walker finds a function-level import, and the cycle finder a cycle
    probe_client = PACKAGE / "probe" / "client.py"
    assert "grpc" in _imports(probe_client, top_level_only=False)
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_engines_own_opener_refuses_a_probe_naming_the_field() -> None:
    from secateurs.engine.latency.target import open_target
    from secateurs.engine.spec import TargetSpec
    from secateurs.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as refused:
        open_target(TargetSpec(probe_address="127.0.0.1:9"))
    assert refused.value.field == "target.probe_address"
    assert open_target(TargetSpec()).where  # and measures here otherwise
