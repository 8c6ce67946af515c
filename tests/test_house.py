"""The developer guide's structural rules, checked on the source: no import cycles in sdzoo/, no
function over ~100 lines, no class over ~300 (parsed with ast, nothing imported)."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'sdzoo'
MAX_FUNCTION, MAX_CLASS = 100, 300


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: Path, modules: Set[str]) -> Set[str]:
    """sdzoo modules ``path`` imports, at module level or inside functions (a lazy import is still a cycle)."""
    name = _module_name(path)
    package = name if path.name == '__init__.py' else name.rsplit('.', 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split('.')[:len(package.split('.')) - node.level + 1] if node.level else []
            target = '.'.join(base + ([node.module] if node.module else []))
            candidates = [target] + [f'{target}.{a.name}' for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found.update(c for c in candidates if c in modules and c != name)
    return found


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    files = {_module_name(p): p for p in PACKAGE.rglob('*.py')}
    graph = {m: _imports(p, set(files)) for m, p in files.items()}
    assert graph['sdzoo.hub.release'], 'the import graph must see relative imports'  # the check can fail
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


def _long_units() -> Dict[str, int]:
    long = {}
    for path in sorted(PACKAGE.rglob('*.py')):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            limit = MAX_CLASS if isinstance(node, ast.ClassDef) else (
                MAX_FUNCTION if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None)
            if limit is not None and node.end_lineno - node.lineno + 1 > limit:
                long[f'{rel}:{node.name}'] = node.end_lineno - node.lineno + 1
    return long


def test_no_function_or_class_too_long():
    long = _long_units()
    assert long == {}


@pytest.mark.parametrize('unit', ['sdzoo/train/trainer.py:Trainer', 'sdzoo/serve/app.py:create_app',
                                  'sdzoo/hub/mirror_endpoints.py:_Handler'])
def test_the_three_biggest_rooms_are_split(unit: str):
    path, name = unit.split(':')
    nodes = [n for n in ast.walk(ast.parse((PACKAGE.parent / path).read_text()))
             if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == name]
    assert len(nodes) == 1
    size = nodes[0].end_lineno - nodes[0].lineno + 1
    assert size <= (MAX_CLASS if isinstance(nodes[0], ast.ClassDef) else MAX_FUNCTION), size
