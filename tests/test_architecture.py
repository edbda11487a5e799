"""The import rule of docs/ARCHITECTURE.md, checked by walking the AST of every module.

- ``common/`` imports no other coact package; ``solvers/`` and ``runtime/`` import only ``common/`` (never
  ``coact/`` nor each other); ``coact/`` may import all of them.
- No module-level import cycles between modules.
- Imports sit at the top of a module; inside functions only the optional heavy dependencies may be imported
  (so that ``import runtime`` needs no torch, and a missing optional package fails only where it is used).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "solvers", "runtime", "coact")
ALLOWED = {
    "common": {"common"},
    "solvers": {"common", "solvers"},
    "runtime": {"common", "runtime"},
    "coact": {"common", "solvers", "runtime", "coact"},
}
#: Optional or heavy third-party packages that may be imported inside a function (lazily).
LAZY_OK = {"torch", "transformers", "ortools", "igraph", "liburing", "ray", "gguf", "accelerate", "matplotlib",
           "datasets", "networkx", "safetensors", "pytest", "hypothesis"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            rel = f.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


MODULES = _modules()


def _resolve(mod: str, node: ast.ImportFrom) -> list[str]:
    """Absolute module names an ImportFrom refers to (``from a import b`` may import the submodule ``a.b``)."""
    if node.level:
        base = mod.split(".")
        is_pkg = MODULES[mod].name == "__init__.py"
        base = base if is_pkg else base[:-1]
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    names = [target]
    for a in node.names:
        sub = f"{target}.{a.name}"
        if sub in MODULES:
            names.append(sub)
    return names


def _imports(mod: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in ``mod`` (TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(MODULES[mod].read_text(), filename=str(MODULES[mod]))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                found.extend((n, child.lineno, top) for n in _resolve(mod, child))
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(tree, True)
    return found


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_import_rule(mod: str) -> None:
    pkg = mod.split(".")[0]
    bad = [f"{MODULES[mod].relative_to(ROOT)}:{line} imports {name}" for name, line, _ in _imports(mod)
           if name.split(".")[0] in PACKAGES and name.split(".")[0] not in ALLOWED[pkg]]
    assert not bad, "import rule broken:\n" + "\n".join(bad)


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_imports_at_top(mod: str) -> None:
    late = [f"{MODULES[mod].relative_to(ROOT)}:{line} imports {name} inside a function"
            for name, line, top in _imports(mod) if not top and name.split(".")[0] not in LAZY_OK]
    assert not late, "\n".join(late)


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for name, _, top in _imports(m):
            if top and name in MODULES and name != m:
                graph[m].add(name)
            # importing a.b.c runs a/__init__ and a/b/__init__ too
            parts = name.split(".")
            for i in range(1, len(parts)):
                parent = ".".join(parts[:i])
                if top and parent in MODULES and parent != m and not m.startswith(parent + "."):
                    graph[m].add(parent)
    # Tarjan's strongly connected components: any component of size > 1 is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    assert not cycles, f"module import cycles: {cycles}"
