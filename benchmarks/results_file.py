"""Results tables land whole: a benchmark killed while writing leaves the previous file, not half a table. Result
rows (JSON lines) are appended one at a time, so a killed run keeps every cell it finished."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: os.PathLike | str, text: str) -> Path:
    """``text`` to a temp file beside ``path``, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix='.tmp')
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def append_jsonl(path: os.PathLike | str, row: dict) -> None:
    """One result row, as a JSON line at the end of ``path``."""
    with open(path, 'a') as f:
        f.write(json.dumps(row) + '\n')
