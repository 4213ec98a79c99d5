"""Dependencies run one way: the import graph of vitshrink's modules, built from the source (imports
inside functions included: a lazy import hides a cycle, it does not remove it).

One knot remains, a strongly connected component of today's graph, which the technique-config
redesign (issue 16) unties: a technique's config split between spaces._config (the flat
CompressionConfig, whose validation asks the techniques) and techniques._base (which reads its
fields). No other cycle may appear. (The techniques ask their own model checks, so they no longer
import compress/ back; the version lives in vitshrink/_version.py, so no module imports the package
for it; search/, data, studies and exporting have no cycle.)"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vitshrink"
_M = "vitshrink."
KNOWN: list[set[str]] = []  # every knot is untied; a new cycle fails


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {_name(p): p for p in PACKAGE.rglob("*.py")}
PACKAGES = {_name(p) for p in PACKAGE.rglob("__init__.py")}


def _target(current: str, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    parts = current.split(".") if current in PACKAGES else current.split(".")[:-1]
    parts = parts[: len(parts) - (level - 1)] if level > 1 else parts
    return ".".join(parts + ([module] if module else []))


def _defining(module: str, name: str) -> str:
    """`from pkg import name`: the submodule pkg/__init__.py takes `name` from, followed down."""
    if f"{module}.{name}" in FILES:
        return f"{module}.{name}"
    if module in PACKAGES:
        for node in ast.parse(FILES[module].read_text()).body:
            if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
                target = _target(module, node.level, node.module)
                return module if target == module else _defining(target, name)  # `from . import x`, x no file
    return module


def _edges(name: str) -> set[str]:
    tree = ast.parse(FILES[name].read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for b in node.body for n in ast.walk(b)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            base = _target(name, node.level, node.module)
            out |= {_defining(base, a.name) for a in node.names if base.startswith("vitshrink")}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("vitshrink.")}
    return {e for e in out if e in FILES and e != name}


def _cycles() -> set[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = {n: _edges(n) for n in FILES}
    index, low, stack, on, found, counter = {}, {}, [], set(), set(), [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_beyond_the_known_knots_which_only_shrink() -> None:
    cycles = _cycles()
    new = [sorted(c) for c in cycles if not any(c <= known for known in KNOWN)]
    assert not new, f"import cycles: {new}; move what both sides need into a module both import"


def test_the_graph_sees_imports_inside_functions(tmp_path, monkeypatch) -> None:
    """The check can fail: a lazy import back into an importer is a cycle it finds. Two modules the
    test writes: a imports b at module level, b imports a inside a function."""
    (tmp_path / "a.py").write_text("from .b import g\n\ndef f():\n    return g()\n")
    (tmp_path / "b.py").write_text("def g():\n    from .a import f  # lazy: hides the cycle from Python, not from the graph\n    return f\n")
    monkeypatch.setitem(FILES, _M + "a", tmp_path / "a.py")
    monkeypatch.setitem(FILES, _M + "b", tmp_path / "b.py")
    assert _edges(_M + "b") == {_M + "a"} and _edges(_M + "a") == {_M + "b"}
    assert frozenset({_M + "a", _M + "b"}) in _cycles()
