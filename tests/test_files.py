"""sdzoo.files: the one atomic writer. A failed write leaves the old file and no temp file; new files get the
mode an ordinary open() would (mkstemp alone makes 0600, which hid reports and cards from other users)."""
from __future__ import annotations

import json
import os
import stat

import pytest

from sdzoo.files import atomic_write, atomic_write_json, atomic_write_text, land_file, remove_orphaned_temp_files


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize('umask', [0o022, 0o077, 0o002])
def test_new_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        ordinary = tmp_path / 'ordinary.txt'
        ordinary.write_text('x')
        ours = atomic_write_json(tmp_path / 'sub' / 'report.json', {'a': 1})
    finally:
        os.umask(old)
    assert _mode(ours) == _mode(ordinary) == 0o666 & ~umask


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = atomic_write_text(tmp_path / 'cards.md', 'old\n')

    def half_then_fail(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write('half')
        raise RuntimeError('check failed')
    with pytest.raises(RuntimeError, match='check failed'):
        atomic_write(path, half_then_fail)
    assert path.read_text() == 'old\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cards.md']


def test_json_land_file_and_orphans(tmp_path):
    src = atomic_write_json(tmp_path / 'a.json', {'b': [1, 2]}, sort_keys=True)
    assert json.loads(src.read_text()) == {'b': [1, 2]} and src.read_text().endswith('\n')
    dst = land_file(src, tmp_path / 'out' / 'b.json')
    assert dst.read_bytes() == src.read_bytes()
    orphan = tmp_path / 'out' / '.b.json.x1y2.tmp'  # what a SIGKILLed writer leaves
    orphan.write_text('partial')
    assert remove_orphaned_temp_files(dst) == [orphan]
    assert not orphan.exists() and dst.exists()
