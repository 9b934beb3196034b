"""Code layout: the core package has no import cycles, counting imports inside functions too (a lazy
import that closes a circle still ties two modules together), and ``cli.py`` only wires commands."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "core"
PACKAGE = "lora_likeness"


def _module_names(root: Path) -> dict[str, Path]:
    """``{dotted name relative to the package: file}``; a package's ``__init__`` is the package itself."""
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def import_graph(root: Path, package: str = PACKAGE) -> dict[str, set[str]]:
    """Which modules of the package under ``root`` each module imports (module level or in a function)."""
    modules = _module_names(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        here = [p for p in here if p]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module == package or (node.module or "").startswith(package + "."):
                target = node.module[len(package) + 1:]
            else:
                continue
            for candidate in [target] + [f"{target}.{alias.name}".strip(".") for alias in node.names]:
                if candidate in modules and candidate != name:
                    graph[name].add(candidate)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_sees_a_circle_closed_by_a_lazy_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub.b import thing\n")
    (package / "sub" / "b.py").write_text("def thing():\n    from ..a import other\n")
    (package / "c.py").write_text("from pkg.a import x\n")
    graph = import_graph(package, package="pkg")
    assert graph["c"] == {"a"}
    assert cycles(graph) == [["a", "sub.b"]]


def test_the_core_package_has_no_import_cycles():
    assert cycles(import_graph(CORE)) == []


def test_cli_only_wires_commands():
    """Every command lives in its own module; ``cli.py`` defines nothing but the parser and ``main``."""
    tree = ast.parse((CORE / "cli.py").read_text(encoding="utf-8"))
    defined = sorted(node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef)))
    assert defined == ["build_parser", "main"]
    graph = import_graph(CORE)
    for module, imports in graph.items():
        assert "cli" not in imports, f"{module} imports lora_likeness.cli: shared helpers belong in lora_likeness.console"
