"""The package's import graph: no circle, and the parts import in one direction.

The judge knows nothing of the engine, the actor, the writers or Lightning, and imports no torch; measuring imports
no judging.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lightning_gradwatch

PACKAGE = Path(lightning_gradwatch.__file__).parent
ROOT = "lightning_gradwatch"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _runtime_imports(path: Path, typing: bool = False) -> set[str]:
    """Modules imported when ``path`` is imported: its module-level statements.

    ``typing``: also those under ``if TYPE_CHECKING:``, which only a type checker follows.
    """
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.body if typing else node.orelse)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from package import module` uses the module; any other name is the package's own
                names = {f"{node.module}.{alias.name}" for alias in node.names}
                found.update(names & MODULES.keys())
                if names - MODULES.keys():
                    found.add(node.module)

    visit(ast.parse(path.read_text()).body)
    return found


GRAPH = {name: {m for m in _runtime_imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}
#: with the imports only a type checker follows: a circle through them is still a circle
TYPED = {
    name: GRAPH[name] | {m for m in _runtime_imports(path, typing=True) if m in MODULES and m != name}
    for name, path in MODULES.items()
}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circle():
    cycle = _cycle(TYPED)
    assert cycle is None, " -> ".join(cycle or [])


def _imports_of(prefix: str) -> set[tuple[str, str]]:
    return {(a, b) for a, deps in GRAPH.items() if a.startswith(prefix) for b in deps}


def test_the_parts_import_in_one_direction():
    above_judge = ("engine", "act", "write", "callback", "_environment", "_lightning", "measure", "stats")
    wrong = {(a, b) for a, b in _imports_of(f"{ROOT}.judge") if b.removeprefix(f"{ROOT}.").startswith(above_judge)}
    assert not wrong, f"the judge imports what comes after it: {sorted(wrong)}"
    measuring = (f"{ROOT}.measure", f"{ROOT}.stats", f"{ROOT}.layers", f"{ROOT}.sharding")
    wrong = {(a, b) for a, b in GRAPH.items() for b in b if a.startswith(measuring) and ".judge" in b}
    assert not wrong, f"measuring imports judging: {sorted(wrong)}"


def test_the_judge_imports_no_torch():
    torch_users = {
        a
        for a, path in MODULES.items()
        if a.startswith(f"{ROOT}.judge") and "torch" in {m.split(".")[0] for m in _runtime_imports(path)}
    }
    assert not torch_users
