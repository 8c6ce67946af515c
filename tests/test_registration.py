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
