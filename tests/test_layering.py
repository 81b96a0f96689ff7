"""The package's shape, checked from its source: layer order, no import cycles, no private names
across packages, no function-level imports of lmxray modules outside the documented places, no
long function bodies. The layer order is written out in docs/design.md ("Layers")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lmxray"

# Lower layers first; a module may import modules of its own layer or below, never above.
# Within a layer, the order given is the allowed direction too (earlier ones never import later).
LAYERS: list[list[str]] = [
    ["errors", "_version"],
    ["sites", "targets", "io", "memory", "examples", "training"],
    ["result"],
    ["hooks", "model"],
    ["attribution", "internals"],
    ["zoo"],
    ["evaluate", "improve", "blackbox", "selfexplain", "concepts"],
    ["jobs"],
    ["render"],
    ["__init__"],
    ["app"],
    ["cli", "__main__"],
]
# Within-layer order where it matters: in a pair (a, b), a never imports b (b may import a).
ORDERED_PAIRS = [("hooks", "model"), ("attribution", "internals"), ("io", "examples"),
                 ("io", "training"), ("io", "memory")]

# Function-level imports of lmxray modules are allowed only here (documented lazy loading):
# the CLI loads a feature when its command runs (fast --help); result.renderer_for imports the
# views on first use; package __init__ files resolve subpackages lazily (cheap `import lmxray`).
LAZY_ALLOWED = ("cli/", "result.py")

MAX_BODY_LINES = 80


def _unit(rel: Path) -> str:
    """The layer unit of a module path relative to src/lmxray (top package or module name)."""
    parts = rel.with_suffix("").parts
    return parts[0]


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "models" not in p.relative_to(SRC).parts)


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["lmxray", *parts])


def _resolve(rel: Path, node: ast.ImportFrom) -> str | None:
    if node.level == 0:
        return node.module if node.module and node.module.split(".")[0] == "lmxray" else None
    base = _module_name(rel).split(".")
    if rel.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path) -> list[tuple[str, list[str], bool, int]]:
    """(imported module, names, inside a function?, line) for each lmxray import."""
    rel = path.relative_to(SRC)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[str, list[str], bool, int]] = []

    def visit(node: ast.AST, in_func: bool, in_type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            f = in_func or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            tc = in_type_checking or (
                isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            )
            if isinstance(child, ast.ImportFrom) and not tc:
                mod = _resolve(rel, child)
                if mod:
                    out.append((mod, [a.name for a in child.names], f, child.lineno))
            elif isinstance(child, ast.Import) and not tc:
                for a in child.names:
                    if a.name.split(".")[0] == "lmxray":
                        out.append((a.name, [], f, child.lineno))
            visit(child, f, tc)

    visit(tree, False, False)
    return out


def _rank() -> dict[str, int]:
    return {u: i for i, layer in enumerate(LAYERS) for u in layer}


def test_every_module_has_a_layer():
    rank = _rank()
    missing = sorted({_unit(p.relative_to(SRC)) for p in _modules()} - set(rank))
    assert not missing, f"add these to LAYERS and docs/design.md: {missing}"


def _violations() -> list[str]:
    rank = _rank()
    bad = []
    for path in _modules():
        rel = path.relative_to(SRC)
        me = _unit(rel)
        for mod, _names, _f, line in _imports(path):
            parts = mod.split(".")
            if len(parts) < 2:
                continue  # `import lmxray` / `from lmxray import x` is checked by name below
            other = parts[1]
            if other == me or other not in rank:
                continue
            if rank[other] > rank[me] or (me, other) in ORDERED_PAIRS:
                bad.append(f"{rel}:{line} ({me}) imports {mod} ({other}, a higher layer)")
    return bad


def test_imports_go_down_the_layers():
    assert _violations() == []


def test_no_import_cycles_between_modules():
    graph: dict[str, set[str]] = {}
    names = {_module_name(p.relative_to(SRC)) for p in _modules()}
    for path in _modules():
        me = _module_name(path.relative_to(SRC))
        deps = graph.setdefault(me, set())
        for mod, imported, in_func, _ in _imports(path):
            if in_func:
                continue
            for cand in [f"{mod}.{n}" for n in imported] + [mod]:
                if cand in names and cand != me:
                    deps.add(cand)
                    break
    # a package imports its submodules by design (its __init__); do not count parent -> child
    for me, deps in graph.items():
        graph[me] = {d for d in deps if not d.startswith(me + ".")}
    cycles, state, stack = [], {}, []

    def dfs(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                cycles.append(" -> ".join(stack[stack.index(v):] + [v]))
            elif v not in state:
                dfs(v)
        stack.pop()
        state[u] = 2

    for u in sorted(graph):
        if u not in state:
            dfs(u)
    assert cycles == []


def test_no_private_names_across_packages():
    bad = []
    for path in _modules():
        rel = path.relative_to(SRC)
        me = _unit(rel)
        for mod, imported, _f, line in _imports(path):
            parts = mod.split(".")
            other = parts[1] if len(parts) > 1 else None
            if other is None or other == me:
                continue
            private_module = any(p.startswith("_") and p != "__init__" for p in parts[2:])
            private_names = [n for n in imported if n.startswith("_") and not n.endswith("__")]
            if private_module or private_names:
                bad.append(f"{rel}:{line} imports {mod} {private_names or ''}")
    assert bad == []


def test_function_level_imports_only_where_documented():
    bad = []
    for path in _modules():
        rel = path.relative_to(SRC)
        if str(rel).startswith(LAZY_ALLOWED) or rel.as_posix() in LAZY_ALLOWED:
            continue
        for mod, _names, in_func, line in _imports(path):
            if in_func and rel.name != "__init__.py":
                bad.append(f"{rel}:{line} imports {mod} inside a function")
    assert bad == []


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None),
                                                               ast.Constant):
        body = body[1:]  # the docstring
    if not body:
        return 0
    return (body[-1].end_lineno or body[-1].lineno) - body[0].lineno + 1


def test_no_function_body_over_80_lines():
    long = []
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = _body_lines(node)
                if n > MAX_BODY_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


@pytest.mark.parametrize("layer", [u for layer in LAYERS for u in layer if u != "_version"])
def test_layers_named_in_design_doc(layer):
    design = (SRC.parents[1] / "docs" / "design.md").read_text(encoding="utf-8")
    assert f"`{layer}`" in design, f"docs/design.md does not describe the layer unit {layer!r}"
