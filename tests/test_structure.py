"""The shape of the package: generic code knows capabilities, not family names; no import cycles."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from genlab.families.base import family_names

ROOT = Path(__file__).resolve().parent.parent / "genlab"
GENERIC = [*sorted((ROOT / "tasks").glob("*.py")), *sorted((ROOT / "callbacks").glob("*.py")),
           *(ROOT / f for f in ("module.py", "compare.py", "results.py", "evaluate.py", "builders.py"))]


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that are not docstrings (the literals code compares or looks up)."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_generic_code_names_no_family_and_duck_types_none():
    names = set(family_names())
    bad = []
    for path in GENERIC:
        tree = ast.parse(path.read_text())
        bad += [f"{path.name}:{line}: {value!r}" for line, value in _strings(tree) if value in names]
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr"):
                target = ast.unparse(node.args[0]) if node.args else ""
                if re.search(r"family|fam\b|nets", target):
                    bad.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "generic code must ask capabilities (isinstance), not names or attributes:\n" + "\n".join(bad)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """genlab modules imported at module level (``if TYPE_CHECKING`` blocks included)."""
    out: set[str] = set()
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    body = list(tree.body)
    while body:
        node = body.pop(0)
        if isinstance(node, ast.If):
            body += node.body + node.orelse
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out |= {sub} if sub in modules else ({base} if base in modules else set())
    out.discard(here)
    return out


def test_no_import_cycles_in_genlab():
    files = sorted(ROOT.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    graph = {_module_name(f): _imports(f, modules) for f in files}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_function_in_genlab_is_over_40_lines():
    long = [f"{p.relative_to(ROOT)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in sorted(ROOT.rglob("*.py")) for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 40]
    assert not long, "split these into short functions:\n" + "\n".join(long)
