"""README.md's examples run, so they cannot go stale.

Every fenced ```python and ```bash block of README.md runs, in order, in one empty folder (SDZOO_DATA points at
the data sets; servers on port 8000 run on `--port 0 --port-file` instead). A line's `# prints: TEXT` comment is
checked against what the block printed. A block may be marked on the line above it:

- `<!-- readme-test: skip (REASON) -->`: not run (package installs: .ci/run performs those);
- `<!-- readme-test: same-as-below (...) -->`: a summary; each of its lines must start a line of a block that runs.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple, Optional

import pytest

README = Path(__file__).resolve().parents[1] / 'README.md'
_BLOCK = re.compile(r'(?:<!-- readme-test: (?P<marker>[^>]*?) -->\n)?```(?P<lang>python|bash)\n(?P<code>.*?)```',
                    re.S)


class Block(NamedTuple):
    lang: str
    code: str
    marker: Optional[str]
    line: int


def readme_blocks(text: Optional[str] = None) -> List[Block]:
    text = README.read_text(encoding='utf-8') if text is None else text
    return [Block(m['lang'], m['code'], m['marker'], text.count('\n', 0, m.start('code')) + 1)
            for m in _BLOCK.finditer(text)]


def _lines(code: str) -> List[str]:
    """Code lines without comments and blank lines (a `#` inside quotes is rare enough in README commands)."""
    out = []
    for line in code.splitlines():
        line = re.sub(r'\s+#\s.*$', '', line).strip()
        if line and not line.startswith('#'):
            out.append(line)
    return out


def test_readme_blocks_run_or_say_why_not():
    blocks = readme_blocks()
    assert sum(b.marker is None for b in blocks) >= 5
    executed = [line for b in blocks if b.marker is None for line in _lines(b.code)]
    for b in blocks:
        if b.marker is None:
            continue
        kind = b.marker.split()[0]
        assert kind in ('skip', 'same-as-below') and '(' in b.marker, f'README line {b.line}: {b.marker!r}'
        if kind == 'skip':
            assert b.lang == 'bash' and all(line.startswith('pip install') or 'python -m build' in line
                                            for line in _lines(b.code)), f'README line {b.line}: skip only installs'
        else:
            for line in _lines(b.code):
                assert any(e.startswith(line) for e in executed), f'README line {b.line}: {line!r} runs nowhere'


def _on_any_port(code: str) -> str:
    """README's servers on port 8000 become `--port 0 --port-file F` and their clients read F: no port is
    guessed free and then raced for (the `until curl` loop polls until the file and the server are there)."""
    code = code.replace('--port 8000', '--port 0 --port-file .port')
    port = '$(cat .port 2>/dev/null)'
    lines = []
    for line in code.split('\n'):
        parts = line.split('localhost:8000')
        out = parts[0]
        for part in parts[1:]:
            quoted = out.count("'") % 2 == 1  # inside a single-quoted URL the shell would not expand $(...)
            out += ('localhost:\'"' + port + '"\'' if quoted else 'localhost:' + port) + part
        lines.append(out)
    return '\n'.join(lines)


def _run(block: Block, cwd: Path, env: dict) -> str:
    if block.lang == 'bash':
        (cwd / '.port').unlink(missing_ok=True)
        argv = ['bash', '-e', '-c', _on_any_port(block.code)]
    else:
        argv = [sys.executable, '-c', block.code]
    # output to files, not pipes: a server a failing block left in the background would hold a pipe open
    # and keep communicate() waiting; the block's own shell ending is what counts
    with open(cwd / '.out', 'w') as fo, open(cwd / '.err', 'w') as fe:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=fo, stderr=fe, text=True, start_new_session=True)
        try:
            proc.wait(timeout=500)
        finally:
            try:  # a server the block started in the background (it kills it itself; this is the safety net)
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    out, err = (cwd / '.out').read_text(), (cwd / '.err').read_text()
    assert proc.returncode == 0, f'README block at line {block.line} failed:\n{block.code}\n{err[-3000:]}'
    return out


@pytest.mark.slow
def test_readme_examples_run(tmp_path, cifar_root):
    env = dict(os.environ, SDZOO_DATA=str(cifar_root.parent), SDZOO_CACHE=str(tmp_path / '.cache'),
               OMP_NUM_THREADS='1')
    import time
    for block in readme_blocks():
        if block.marker is not None:
            continue
        t0 = time.perf_counter()
        out = _run(block, tmp_path, env)
        print(f'README block at line {block.line}: {time.perf_counter() - t0:.1f} s')
        for expected in re.findall(r'# prints: (.*)$', block.code, re.M):
            assert expected.strip() in out, (block.line, expected, out[-2000:])
