"""Serving needs no PyTorch (issue 47): importing sdzoo, its runtime and its server loads no torch, a running
`sdzoo serve` maps no libtorch, and `import sdzoo` still registers the models as soon as timm is imported.
(.ci/serving_env.sh goes further: a venv where torch is not installed at all.)"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from serve_support import CIFAR10_LABELS, export_onnx, png_bytes, start_serve, write_entry

TORCH_PARTS = ('torch', 'timm', 'torchvision')


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    return subprocess.run([sys.executable, '-c', code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=180)


@pytest.fixture(scope='module')
def repo(tmp_path_factory):
    onnx_file = export_onnx(tmp_path_factory.mktemp('onnx') / 'r20.onnx', labels=CIFAR10_LABELS)
    root = tmp_path_factory.mktemp('repo')
    write_entry(root, 'cifar', onnx_file, max_batch_size=8, delay_us=0)
    return root


def test_serving_modules_import_no_torch(tmp_path):
    r = _python('import sys, sdzoo, sdzoo.runtime, sdzoo.serve.app, sdzoo.serve.entries, sdzoo.predict, sdzoo.cli\n'
                f'print(sorted(m for m in {TORCH_PARTS!r} if m in sys.modules))', tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '[]'


def test_import_sdzoo_registers_once_timm_is_imported(tmp_path):
    r = _python('import sys, sdzoo\nprint("torch" in sys.modules)\nimport timm, torch\n'
                "m = timm.create_model('sd_resnet20')\n"
                "c = sdzoo.convert(timm.create_model('resnet18', drop_path_rate=0.1))\n"
                'print(type(m).__name__, sdzoo.StochasticDepth.__name__, type(c).__name__)', tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['False', 'CifarResNet', 'StochasticDepth', 'ResNet']


def test_predict_runs_without_importing_torch(repo, tmp_path):
    image = tmp_path / 'x.png'
    image.write_bytes(png_bytes(0, size=(32, 32)))
    onnx_file = repo / 'cifar' / '1' / 'model.onnx'
    r = _python('import sys\nfrom sdzoo.cli import main\n'
                f'rc = main(["predict", {str(onnx_file)!r}, {str(image)!r}, "--top-k", "2", "--json"])\n'
                f'print(rc, sorted(m for m in {TORCH_PARTS!r} if m in sys.modules))', tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == '0 []'
    assert '"top_k"' in r.stdout


def test_running_server_maps_no_libtorch(repo, tmp_path):
    proc, url, _, _ = start_serve([sys.executable, '-c', 'import sys; from sdzoo.cli import main; sys.exit(main())',
                                   'serve', str(repo), '--intra-op-threads', '1'], tmp_path / 'port',
                                  stdout=subprocess.DEVNULL)
    try:
        r = httpx.post(f'{url}/v2/models/cifar/classify?top_k=1', content=png_bytes(1), timeout=60)
        assert r.status_code == 200, r.text
        maps = Path(f'/proc/{proc.pid}/maps').read_text()
        assert 'libonnxruntime' in maps or 'onnxruntime' in maps  # the check sees shared libraries at all
        assert 'libtorch' not in maps
    finally:
        proc.terminate()
        proc.wait(30)


def test_repository_of_pytorch_files_is_refused_in_one_line(tmp_path, capsys):
    from sdzoo.cli import main
    (tmp_path / 'mine' / '1').mkdir(parents=True)
    (tmp_path / 'mine' / '1' / 'model.pt').write_bytes(b'weights')
    with pytest.raises(SystemExit) as e:
        main(['serve', str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'mine/1/model.pt is a PyTorch file' in err and 'sdzoo export' in err


@pytest.mark.parametrize('module, extra', [('torch', 'torch'), ('onnxruntime', 'cpu'), ('fastapi', 'serve')])
def test_missing_extra_names_what_to_install(module, extra):
    from sdzoo.cli import missing_extra
    message = missing_extra(ModuleNotFoundError(f'No module named {module!r}', name=module))
    assert f"pip install 'sdzoo[{extra}]'" in message and module in message
    assert missing_extra(ModuleNotFoundError('No module named x', name='some_user_module')) is None
