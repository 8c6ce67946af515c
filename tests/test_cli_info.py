"""`sdzoo list` and `sdzoo info`: in-process through sdzoo.cli.main, and the installed console script."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import timm

from sdzoo.cli import main


def resnet110_expected(batch: int = 1):
    """Parameters and forward FLOPs (2 per multiply-add, convs + classifier) of the CIFAR ResNet-110
    at 32x32, from the architecture: n=18 blocks per stage, widths 16/32/64."""
    n, widths, params, flops, c_in = 18, (16, 32, 64), 3 * 16 * 9 + 2 * 16, 2 * 32 * 32 * 9 * 3 * 16, 16
    for i, w in enumerate(widths):
        hw = (32 // 2 ** i) ** 2
        for j in range(n):
            cin = c_in if j == 0 else w
            params += 9 * cin * w + 9 * w * w + 4 * w
            flops += 2 * hw * 9 * (cin * w + w * w)
        c_in = w
    return params + 64 * 10 + 10, (flops + 2 * 64 * 10) * batch


def _check_resnet110_info(info: dict) -> None:
    params, flops = resnet110_expected()
    assert info['model'] == 'sd_resnet110'
    assert info['params'] == params
    assert info['flops'] == flops
    assert info['input_size'] == [3, 32, 32] and info['num_classes'] == 10
    assert info['droppable_blocks'] == 54 and info['sd_units'] == 54
    assert (info['drop_path_rate'], info['sd_mode'], info['sd_scaling']) == (0.5, 'batch', 'paper')
    assert info['survival_probs'] == pytest.approx([1 - l / 54 * 0.5 for l in range(1, 55)], abs=1e-6)
    assert info['expected_depth_fraction'] == pytest.approx(1 - 55 / 108 * 0.5)
    assert 'sd_cifar10' in info['pretrained_tags']


def test_info_json(capsys):
    assert main(['info', 'sd_resnet110', '--json']) == 0
    _check_resnet110_info(json.loads(capsys.readouterr().out))


def test_info_drop_path_rate_and_no_flops(capsys):
    assert main(['info', 'sd_vit_lite_patch4_32', '--json', '--no-flops', '--drop-path-rate', '0.2']) == 0
    info = json.loads(capsys.readouterr().out)
    assert 'flops' not in info
    assert info['droppable_blocks'] == 7 and info['sd_units'] == 14
    assert info['drop_path_rate'] == 0.2
    assert info['survival_probs'] == pytest.approx([1 - l / 7 * 0.2 for l in range(1, 8)], abs=1e-6)


def test_info_text(capsys):
    assert main(['info', 'sd_resnet20']) == 0
    out = capsys.readouterr().out
    assert 'params             269,722 (269.72K)' in out
    assert 'droppable blocks   9 (9 stochastic-depth units)' in out
    assert 'drop_path_rate     0.5 (p_L = 0.5000), mode=batch, scaling=paper' in out
    assert 'sd_cifar10' in out


def test_list(capsys):
    assert main(['list']) == 0
    names = capsys.readouterr().out.split()
    assert names == timm.list_models('sd_*') and len(names) == 15
    assert main(['list', 'sd_vit*']) == 0
    assert capsys.readouterr().out.split() == [
        'sd_vit_base_patch16_224', 'sd_vit_lite_patch4_32', 'sd_vit_small_patch16_224', 'sd_vit_tiny_patch16_224']
    assert main(['list', '--pretrained']) == 0
    pretrained = capsys.readouterr().out.split()
    assert 'sd_resnet110.sd_cifar10' in pretrained and 'sd_resnet32' not in pretrained


@pytest.mark.parametrize('argv,message', [
    (['info', 'sd_nope'], "sdzoo info: error: unknown model 'sd_nope'"),
    (['info', 'sd_resnet20', '--no-flops', '--drop-path-rate', '1.5'],
     'sdzoo info: error: drop_path_rate must lie in [0, 1)'),
    (['info', 'sd_resnet20', '--drop-path-rate', 'lots'], "invalid float value: 'lots'"),
    (['info'], 'the following arguments are required: model'),
    (['frobnicate'], "invalid choice: 'frobnicate'"),
])
def test_bad_arguments_exit_2_with_a_clear_message(capsys, argv, message: str):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err


def test_console_script(tmp_path: Path, sdzoo_script: str):
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    r = subprocess.run([sdzoo_script, 'info', 'sd_resnet110', '--json'], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    _check_resnet110_info(json.loads(r.stdout))


def test_demo_runs_and_shows_skipped_blocks(capsys):
    from sdzoo.cli import main
    assert main(['demo', '--model', 'sd_resnet20']) == 0
    out = capsys.readouterr().out
    assert 'droppable residual blocks' in out and 'convolutions executed' in out
    assert 'top-1 agreement 100%' in out
