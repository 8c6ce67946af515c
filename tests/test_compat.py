"""Moved names keep working for one release from their old modules, with a DeprecationWarning naming the new
home (CHANGELOG.md lists the moves); the names that did not move still answer without a warning."""
from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

MOVES = [
    ('sdzoo.hub.mirror', 'HubMirror', 'sdzoo.mirror.server'),
    ('sdzoo.hub.cards', 'render_cards', 'sdzoo.reports.cards'),
    ('sdzoo.hub.comparison', 'load_runs', 'sdzoo.reports.comparison'),
    ('sdzoo.hub.release', 'publish_run', 'sdzoo.reports.release'),
    ('sdzoo.hub.run_model', 'write_run_model', 'sdzoo.train.run_model'),
    ('sdzoo.hub.run_model', 'find_model_folder', 'sdzoo.hub.model_folder'),
    ('sdzoo.train.paired', 'paired_comparison', 'sdzoo.reports.paired'),
    ('sdzoo.train.paired', 'encode_per_image', 'sdzoo.train.records'),
    ('sdzoo.train.checkpoint', 'atomic_write_json', 'sdzoo.files'),
    ('sdzoo.export.onnx', 'create_model', 'sdzoo.models.load'),
    ('sdzoo.export.onnx', 'load_checkpoint', 'sdzoo.models.load'),
    ('sdzoo.export.onnx', 'CIFAR10_CLASSES', 'sdzoo.models.load'),
]


@pytest.mark.parametrize('old, name, new', MOVES, ids=[f'{o}.{n}' for o, n, _ in MOVES])
def test_moved_name_warns_and_is_the_new_object(old: str, name: str, new: str):
    with pytest.warns(DeprecationWarning, match=rf'{old}\.{name} moved to {new}\.{name}'):
        got = getattr(importlib.import_module(old), name)
    assert got is getattr(importlib.import_module(new), name)


def test_unmoved_names_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        from sdzoo.export.onnx import export_onnx, op_histogram  # noqa: F401
        from sdzoo.train.checkpoint import atomic_save  # noqa: F401


def test_unknown_name_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        importlib.import_module('sdzoo.hub.cards').no_such_name


def test_old_mirror_module_still_runs_as_a_script(tmp_path):
    out = subprocess.run([sys.executable, '-W', 'always', '-m', 'sdzoo.hub.mirror', '--help'],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'python -m sdzoo.mirror.server' in out.stdout
    assert 'moved to python -m sdzoo.mirror.server' in out.stderr
