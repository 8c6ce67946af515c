"""Registration with timm: in-process, and in fresh interpreters through the start-up hook."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm

import sdzoo  # noqa: F401

EXPECTED = {
    'sd_resnet20', 'sd_resnet32', 'sd_resnet44', 'sd_resnet56', 'sd_resnet110', 'sd_resnet1202',
    'sd_resnet18', 'sd_resnet34', 'sd_resnet50', 'sd_resnet101', 'sd_resnet152',
    'sd_vit_tiny_patch16_224', 'sd_vit_small_patch16_224', 'sd_vit_base_patch16_224', 'sd_vit_lite_patch4_32',
}


def test_every_model_is_registered():
    assert set(timm.list_models('sd_*')) == EXPECTED
    assert all(timm.is_model(n) for n in EXPECTED)
    pretrained = set(timm.list_pretrained('sd_*'))
    assert {'sd_resnet110.sd_cifar10', 'sd_resnet50.tv_in1k', 'sd_vit_lite_patch4_32.sd_cifar10'} <= pretrained


def test_pretrained_cfgs():
    cfg = timm.get_pretrained_cfg('sd_resnet110.sd_cifar10').to_dict()
    assert cfg['input_size'] == (3, 32, 32) and cfg['num_classes'] == 10
    assert cfg['mean'] == pytest.approx((0.4914, 0.4822, 0.4465), abs=1e-3)
    assert cfg['std'] == pytest.approx((0.247, 0.2435, 0.2616), abs=1e-3)
    for ours, theirs in (('sd_resnet50.tv_in1k', 'resnet50.tv_in1k'),
                         ('sd_vit_small_patch16_224.augreg_in21k_ft_in1k', 'vit_small_patch16_224.augreg_in21k_ft_in1k')):
        a, b = timm.get_pretrained_cfg(ours).to_dict(), timm.get_pretrained_cfg(theirs).to_dict()
        for key in ('input_size', 'mean', 'std', 'crop_pct', 'interpolation', 'num_classes'):
            assert a[key] == b[key], (ours, key)


def _fresh_python(code: str, tmp_path: Path, **env) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter, outside the repository (so only the installed package and
    its .pth start-up hook can make sdzoo known)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ('SDZOO_NO_AUTOREGISTER', 'PYTHONPATH')}
    full_env.update(env)
    return subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_fresh_interpreter_start_up_is_light(tmp_path: Path):
    code = ("import sys\n"
            "hook = sys.modules.get('_sdzoo_hook')\n"
            "print(hook is not None, any(type(f).__name__ == '_TimmFinder' for f in sys.meta_path))\n"
            "print(sorted(m for m in ('torch', 'timm', 'sdzoo', 'numpy') if m in sys.modules))\n")
    r = _fresh_python(code, tmp_path)
    assert r.returncode == 0, r.stderr
    hooked, loaded = r.stdout.splitlines()
    assert hooked == 'True True'  # the hook is installed at start-up (so the next line means something)
    assert loaded == '[]'         # ...and it imported neither torch nor timm nor sdzoo


def test_fresh_interpreter_registers_on_import_timm(tmp_path: Path):
    code = ("import sys, timm\n"
            "m = timm.create_model('sd_resnet110')\n"
            "print(type(m).__name__, len(timm.list_models('sd_*')), 'sdzoo' in sys.modules)\n")
    r = _fresh_python(code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['CifarResNet', str(len(EXPECTED)), 'True']


def test_autoregister_can_be_switched_off(tmp_path: Path):
    code = ("import sys, timm\n"
            "print('sdzoo' in sys.modules, timm.list_models('sd_*'))\n"
            "timm.create_model('sd_resnet110')\n")
    r = _fresh_python(code, tmp_path, SDZOO_NO_AUTOREGISTER='1')
    assert r.returncode != 0
    assert r.stdout.strip() == 'False []'
    assert 'RuntimeError: Unknown model (sd_resnet110)' in r.stderr  # timm's own error


REPO = Path(__file__).resolve().parents[1]


def _bare_python(code: str, *flags: str, path: tuple = (), **env) -> subprocess.CompletedProcess:
    """``python -S`` (no site, so no installed copy of the hook runs) with ``path`` in front of
    sys.path and site-packages behind it: what a start-up that only runs *this* tree's hook sees.
    ``os`` is imported first, as ``site`` does before it processes ``.pth`` files."""
    import sysconfig
    prelude = (f"import os, sys\nsys.path[:0] = {[str(p) for p in path]!r}\n"
               f"sys.path.append({sysconfig.get_paths()['purelib']!r})\n")
    full_env = {k: v for k, v in os.environ.items() if k not in ('SDZOO_NO_AUTOREGISTER', 'PYTHONPATH')}
    full_env.update(env)
    return subprocess.run([sys.executable, '-S', *flags, '-c', prelude + code], cwd=REPO.parent, env=full_env,
                          capture_output=True, text=True, timeout=120)


def _nested_imports(importtime_log: str, module: str) -> list:
    """Modules ``-X importtime`` shows as imported *by* ``module`` (listed just before it, indented deeper)."""
    lines = [ln.split('|') for ln in importtime_log.splitlines() if ln.startswith('import time:') and '|' in ln]
    names = [(len(cols[2]) - len(cols[2].lstrip()), cols[2].strip()) for cols in lines if len(cols) == 3]
    at = [i for i, (_, name) in enumerate(names) if name == module]
    assert at, f'{module} not in the import log:\n{importtime_log}'
    depth, nested = names[at[0]][0], []
    for indent, name in reversed(names[:at[0]]):
        if indent <= depth:
            break
        nested.append(name)
    return nested


@pytest.mark.parametrize('off', ['', '1'])
def test_start_up_hook_imports_nothing(off: str, tmp_path: Path):
    """The .pth hook runs in every process: it may use only what start-up has already loaded, and
    switched off it is not even imported. The repository's .pth and hook, processed as site does."""
    for name in ('sdzoo_autoregister.pth', '_sdzoo_hook.py'):
        (tmp_path / name).write_text((REPO / name).read_text())
    r = _bare_python(f"import site\nbefore = set(sys.modules)\nsite.addsitedir({str(tmp_path)!r})\n"
                     "print(sorted(set(sys.modules) - before))\n"
                     "print(any(type(f).__name__ == '_TimmFinder' for f in sys.meta_path))\n",
                     '-X', 'importtime', path=(tmp_path,), SDZOO_NO_AUTOREGISTER=off)
    assert r.returncode == 0, r.stderr
    added, hooked = r.stdout.splitlines()
    assert added == ('[]' if off else "['_sdzoo_hook']")
    assert hooked == str(not off)  # installed unless switched off (so the lines above mean something)
    if not off:
        assert _nested_imports(r.stderr, '_sdzoo_hook') == []


def test_broken_sdzoo_never_breaks_import_timm_under_warnings_as_errors(tmp_path: Path):
    broken = tmp_path / 'sdzoo'
    broken.mkdir()
    (broken / '__init__.py').write_text("raise RuntimeError('this sdzoo copy is broken')\n")
    r = _bare_python("import _sdzoo_hook\nimport timm\nimport timm.models\n"
                     "print('timm', timm.__version__ is not None, 'sdzoo' in sys.modules)\n",
                     '-W', 'error', path=(tmp_path, REPO))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['timm', 'True', 'False']
    report = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(report) == 1 and 'this sdzoo copy is broken' in report[0], r.stderr
    assert 'Traceback' not in r.stderr


def test_start_up_hook_registers_this_tree(tmp_path: Path):
    r = _bare_python("import _sdzoo_hook\nimport timm\nprint(timm.is_model('sd_resnet110'))\n", path=(REPO,))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == 'True'
