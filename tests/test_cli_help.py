"""The command line a newcomer meets first: help without torch, every option documented, clear errors."""
from __future__ import annotations

import argparse
import os
import subprocess

import pytest

from sdzoo.cli import build_parser, main


def _subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def test_every_option_has_help_with_its_default():
    _, commands = _subcommands()
    assert {'train', 'finetune', 'validate', 'export', 'predict', 'serve', 'info', 'list'} <= set(commands)
    undocumented = []
    for name, p in commands.items():
        fmt = p._get_formatter()
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            text = fmt._expand_help(a) if a.help else ''
            switch = a.nargs == 0  # store_true/false: on or off is the whole story
            if not text or (a.option_strings and not switch and not a.required and 'default' not in text):
                undocumented.append(f'{name} {"/".join(a.option_strings) or a.dest}: {text!r}')
            if a.choices:  # argparse lists the choices in the option's usage
                assert '{' + ','.join(map(str, a.choices)) + '}' in p.format_help(), (name, a.dest)
    assert not undocumented, undocumented


@pytest.mark.parametrize('argv', [['--help'], ['train', '--help'], ['export', '--help'], ['serve', '--help'],
                                  ['validate', '--help'], ['predict', '--help']])
def test_help_does_not_import_torch(argv, tmp_path, sdzoo_script):
    """`sdzoo --help` answers at once: the console script parses before it registers the models (torch)."""
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME='1')
    r = subprocess.run([sdzoo_script, *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and 'usage: sdzoo' in r.stdout, r.stderr[-2000:]
    imported = {line.rsplit('|', 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith('import time:')}
    heavy = sorted(m for m in imported if m.split('.')[0] in ('torch', 'timm', 'onnx', 'onnxruntime', 'numpy'))
    assert not heavy, heavy[:10]


@pytest.mark.parametrize('argv,message', [
    (['info', 'resnet50'], "'resnet50' is a timm model without stochastic depth"),
    (['info', 'vit_tiny_patch16_224', '--no-flops'], 'without stochastic depth'),
])
def test_info_on_a_non_sdzoo_model_is_one_clear_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err and len(err.strip().splitlines()) == 1


def test_list_pretrained_marks_what_loads_offline(capsys):
    from sdzoo.hub.weights import find_weights_folder
    assert main(['list', '--pretrained']) == 0
    rows = dict(line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines())
    assert rows['sd_resnet50.tv_in1k'] == 'download (Hugging Face Hub)'
    for name, where in rows.items():
        assert where == ('offline (shipped)' if find_weights_folder(name) else 'download (Hugging Face Hub)')
    assert rows['sd_resnet110.sd_cifar10'] == 'offline (shipped)'
