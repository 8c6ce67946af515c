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
    assert graph['sdzoo.reports.release'], 'the import graph must see relative imports'  # the check can fail
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
                                  'sdzoo/mirror/endpoints.py:MirrorHandler'])
def test_the_three_biggest_rooms_are_split(unit: str):
    path, name = unit.split(':')
    nodes = [n for n in ast.walk(ast.parse((PACKAGE.parent / path).read_text()))
             if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == name]
    assert len(nodes) == 1
    size = nodes[0].end_lineno - nodes[0].lineno + 1
    assert size <= (MAX_CLASS if isinstance(nodes[0], ast.ClassDef) else MAX_FUNCTION), size


# ------------------------------------------------------------------------------------------- layers
# The rooms of sdzoo, lowest first (docs/architecture.md explains each): a module may import its own room and
# rooms listed before it, never one listed after. The package itself (``sdzoo``: version, model registration)
# is importable from anywhere, as Python runs it before any submodule anyway.
LAYERS = [
    ('compat', 'files', 'cli_args', 'stats'),
    ('layers',),
    ('data',),
    ('runtime',),
    ('hub',),
    ('models',),
    ('convert',),
    ('train',),
    ('export',),
    ('reports',),
    ('mirror',),
    ('serve',),
    ('predict', 'mc', 'info', 'demo'),
    ('cli',),
]
_RANK = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}
# moved-name aliases (sdzoo.compat) name their new home as a string and import nothing: no exemption needed


def _room(module: str) -> str:
    return module.split('.')[1] if module.count('.') else ''


def _graph() -> Dict[str, Set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob('*.py')}
    return {m: _imports(p, set(files)) for m, p in files.items()}


def _upward(graph: Dict[str, Set[str]]) -> List[str]:
    bad = []
    for a, targets in graph.items():
        for b in targets:
            if b == 'sdzoo' or a == 'sdzoo':
                continue
            if _RANK[_room(b)] > _RANK[_room(a)]:
                bad.append(f'{a} -> {b}')
    return sorted(bad)


def test_every_room_has_a_layer():
    rooms = {_room(m) for m in _graph()} - {''}
    assert rooms - set(_RANK) == set(), 'add the new room to LAYERS (and docs/architecture.md)'
    assert set(_RANK) - rooms == set()


def test_no_import_from_a_lower_layer_back_up():
    assert _upward(_graph()) == []


def test_upward_import_finder_finds_one():
    assert _upward({'sdzoo.hub.weights': {'sdzoo.train.trainer'}, 'sdzoo.train.trainer': {'sdzoo.hub.weights'}}) \
        == ['sdzoo.hub.weights -> sdzoo.train.trainer']


def _private_imports(path: Path, module: str) -> List[str]:
    """``from X import _name`` with X another module, and ``_private`` modules imported from outside their package."""
    package = module if path.name == '__init__.py' else module.rsplit('.', 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = package.split('.')[:len(package.split('.')) - node.level + 1] if node.level else []
        target = '.'.join(base + ([node.module] if node.module else []))
        if not target.startswith('sdzoo'):
            continue
        for alias in node.names:
            full = f'{target}.{alias.name}'
            if alias.name.startswith('_') and not alias.name.startswith('__') and target != module:
                found.append(f'{module}: {full}')
        private_parts = [i for i, part in enumerate(target.split('.')) if part.startswith('_')]
        for i in private_parts:  # sdzoo.models._builder may be imported by sdzoo.models.* only
            owner = '.'.join(target.split('.')[:i])
            if not (module == owner or module.startswith(owner + '.')):
                found.append(f'{module}: {target}')
    return found


def test_no_module_imports_another_modules_private_names():
    found = [f for p in sorted(PACKAGE.rglob('*.py')) for f in _private_imports(p, _module_name(p))]
    assert found == []


def test_private_import_finder_finds_them(tmp_path: Path):
    src = tmp_path / 'routes.py'
    src.write_text('from .protocol import _short, ApiError\nfrom ..models._builder import x\nfrom ._own import y\n')
    assert _private_imports(src, 'sdzoo.serve.routes') == [
        'sdzoo.serve.routes: sdzoo.serve.protocol._short', 'sdzoo.serve.routes: sdzoo.models._builder']
