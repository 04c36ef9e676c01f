"""The layout's rules, checked on the source: no import cycles, one home per third-party client.

The import graph counts every `import` statement of a module, also those inside functions (a
lazy import still ties two modules together), except imports under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import outbox

ROOT = Path(outbox.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, ast.Module]:
    return {
        _module_name(path): ast.parse(path.read_text(), str(path))
        for path in sorted(ROOT.rglob("*.py"))
        if "migrations" not in path.parts
    }


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Every module `module` imports at run time (absolute names)."""
    found: set[str] = set()
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if _is_type_checking(node):
            skipped.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    graph: dict[str, set[str]] = {}
    for name, tree in sources.items():
        is_package = (ROOT.parent / name.replace(".", "/") / "__init__.py").exists()
        targets = _imports(tree, name, is_package)
        # Importing a.b.c runs a/__init__ and a/b/__init__ too, but those edges are the import
        # system's, not the module's: only the named module itself counts.
        graph[name] = {t for t in targets if t in sources and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_modules() -> None:
    graph = _graph()
    assert "outbox.cli" in graph and "outbox.relay.loop" in graph  # the graph is not empty
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _importers(prefix: str) -> set[str]:
    return {
        name
        for name, tree in _sources().items()
        for target in _imports(tree, name, False)
        if target == prefix or target.startswith(prefix + ".")
    }


def test_kafka_python_is_imported_in_one_module() -> None:
    assert _importers("kafka") == {"outbox.kafka._client"}


def test_tenacity_is_imported_in_one_module() -> None:
    assert _importers("tenacity") == {"outbox.retry"}


def test_the_relay_loop_has_no_sql_and_no_kafka() -> None:
    relay_modules = {n for n in _sources() if n.startswith("outbox.relay.")}
    loop_modules = {n for n in relay_modules if not n.startswith("outbox.relay.store")}
    for name in loop_modules:
        imported = _imports(_sources()[name], name, False)
        assert not {i for i in imported if i.split(".")[0] in ("sqlalchemy", "kafka")}, name


def test_modules_stay_small() -> None:
    big = {
        str(path.relative_to(ROOT)): n
        for path in ROOT.rglob("*.py")
        if "migrations" not in path.parts and (n := len(path.read_text().splitlines())) > 450
    }
    assert big == {}
