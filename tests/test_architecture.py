"""The house as built (docs/architecture.md): layers that import one way only, no import
cycles (imports inside functions count; ``if TYPE_CHECKING:`` ones do not), no module over
600 lines, and a short list of modules at the top of the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "torchinit"

#: bottom to top; a module may import its own layer and the layers below it
LAYERS = ("core", "engines", "initializers", "model", "scale", "evidence", "integrations", "cli")
#: top-level modules outside the layers, and what they may import
FREE = {"_version": (), "_progress": (), "zoo": (), "_compat": None, "__init__": None, "__main__": ("cli",)}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(["torchinit", *parts]) if parts != ["__init__"] else "torchinit"] = path
    for path in sorted(SRC.rglob("*.c")):  # C extensions (the keyed kernel): leaves of the graph
        out[".".join(["torchinit", *path.relative_to(SRC).with_suffix("").parts])] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every import statement, at any depth, except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            stack.append(child)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        if path.suffix != ".py":
            continue
        is_pkg = path.name == "__init__.py"
        package = mod.split(".") if is_pkg else mod.split(".")[:-1]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                # `from pkg import sub` imports the submodule sub, `from mod import name` mod itself
                targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin for a in node.names]
            for t in targets:
                while t and t not in modules and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in modules and t != mod:
                    graph[mod].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_graph_sees_function_level_imports():
    graph = _graph()
    # scale.materialize imports the plan resolver inside a function
    assert "torchinit.model.resolve" in graph["torchinit.scale.materialize"]
    assert "torchinit.engines.keyed.engine" in graph["torchinit.engines.keyed.shards"]


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_dependencies_point_down_the_layers():
    wrong = []
    for mod, deps in _graph().items():
        layer = _layer(mod)
        for dep in deps:
            target = _layer(dep)
            if layer in FREE:
                allowed = FREE[layer]
                if allowed is not None and target not in allowed and target not in ("_version", "_progress"):
                    wrong.append(f"{mod} -> {dep}")
                continue
            if target in ("_version", "_progress"):  # importable from anywhere: they import nothing of ours
                continue
            if layer == "cli" and target in ("zoo", "__init__"):
                continue  # the top layer uses the public API (the package root) and the zoo
            if target not in LAYERS or LAYERS.index(target) > LAYERS.index(layer):
                wrong.append(f"{mod} -> {dep}")
    assert wrong == []


def test_every_module_belongs_to_a_layer():
    for mod in _modules():
        assert _layer(mod) in LAYERS or _layer(mod) in FREE, mod


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_is_over_600_lines(path):
    assert len(path.read_text().splitlines()) <= 600


def test_few_modules_at_the_top():
    top = [p.name for p in SRC.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(top) <= 8, top


def test_old_module_paths_still_work():
    import importlib

    import torchinit

    from torchinit import specs  # noqa: F401

    for old in ("specs", "keyed", "keyed.backend", "sharding", "zoo", "plots", "weights", "diagnostics", "cli"):
        importlib.import_module(f"torchinit.{old}")
    assert torchinit.sharding.shard_fill_ is importlib.import_module("torchinit.engines.keyed.shards").shard_fill_
    assert torchinit.sharding.is_dtensor is importlib.import_module("torchinit.engines.dtensor").is_dtensor
    assert torchinit.diagnostics.save_comparison is not None
    assert callable(torchinit.materialize) and callable(torchinit.plan)  # the functions, not the modules
    from torchinit.keyed import Key, fill_  # noqa: F401
    from torchinit.weights import load_plan_file  # noqa: F401
