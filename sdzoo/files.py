"""Atomic file writes: every file sdzoo writes goes through here, so a crash or a failed check leaves the old
file (or none), never half a new one, and new files get the mode an ordinary ``open(path, 'w')`` would give."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, List

__all__ = ['atomic_write', 'atomic_write_text', 'atomic_write_bytes', 'atomic_write_json', 'land_file',
           'remove_orphaned_temp_files', 'temp_name_pattern']


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` sets it to read it)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_name_pattern(path: os.PathLike | str) -> str:
    """The glob that matches the temp files :func:`atomic_write` makes for ``path`` (in its folder)."""
    return f'.{Path(path).name}.*.tmp'


def atomic_write(path: os.PathLike | str, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path``, fsync it, then rename it onto ``path``.

    ``write`` may also check what it wrote and raise: the temp file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: readers expect the usual mode
        write(tmp)
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: os.PathLike | str, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding='utf-8'))


def atomic_write_json(path: os.PathLike | str, obj: Any, *, sort_keys: bool = False,
                      default: Callable[[Any], Any] | None = None) -> Path:
    """JSON, indented, with a trailing newline."""
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=default) + '\n'
    return atomic_write_text(path, text)


def land_file(src: os.PathLike | str, dst: os.PathLike | str) -> Path:
    """Copy a finished file into place: readers of ``dst`` never see half of it."""
    return atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def remove_orphaned_temp_files(path: os.PathLike | str) -> List[Path]:
    """Delete the temp files a killed writer of ``path`` left behind (SIGKILL skips the cleanup).
    Call it only while no other process writes ``path``."""
    path = Path(path)
    orphans = list(path.parent.glob(temp_name_pattern(path))) if path.parent.is_dir() else []
    for p in orphans:
        p.unlink(missing_ok=True)
    return orphans
