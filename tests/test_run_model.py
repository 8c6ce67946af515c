"""From your own images to a served model: a 3-class fine-tune end to end (issue 32's newcomer path).

A real `sdzoo finetune` on a 3-class image folder cut from CIFAR-10 (JPEG q75 copy) leaves RUN_DIR/model/ in
timm's Hub layout; timm loads it with `local-dir:`, and validate, export, predict and serve take the run directory
and carry its class names through to the ONNX metadata and the served labels.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

CLASSES = ['cat', 'dog', 'ship']

pytestmark = pytest.mark.slow


def _three_class_folder(cifar_root: Path, dst: Path, n_train: int = 40, n_test: int = 10) -> Path:
    for split, n in (('train', n_train), ('test', n_test)):
        for c in CLASSES:
            (dst / split / c).mkdir(parents=True)
            for f in sorted((cifar_root / split / c).iterdir())[:n]:
                shutil.copyfile(f, dst / split / c / f.name)
    return dst


@pytest.fixture(scope='module')
def run(tmp_path_factory, cifar_root):
    """`sdzoo finetune sd_resnet20 --data <3-class folder> --num-classes 3 --epochs 1` (shipped weights)."""
    from sdzoo.cli import main
    from sdzoo.hub.weights import find_weights_folder
    if find_weights_folder('sd_resnet20.sd_cifar10') is None:
        pytest.skip('sd_resnet20.sd_cifar10 is not shipped in this checkout')
    base = tmp_path_factory.mktemp('newcomer')
    data = _three_class_folder(cifar_root, base / 'my_images')
    out = base / 'run'
    saved = os.environ.get('SDZOO_CACHE')
    os.environ['SDZOO_CACHE'] = str(base / 'cache')
    try:
        assert main(['finetune', 'sd_resnet20', '--data', str(data), '--num-classes', '3', '--epochs', '1',
                     '--batch-size', '16', '--workers', '0', '--out', str(out), '--no-progress']) == 0
    finally:
        if saved is None:
            os.environ.pop('SDZOO_CACHE', None)
        else:
            os.environ['SDZOO_CACHE'] = saved
    return dict(dir=out, data=data)


def test_finished_run_holds_a_hub_layout_model(run):
    import timm
    import torch
    from safetensors.torch import load_file
    from sdzoo.train.trainer import TrainConfig
    folder = run['dir'] / 'model'
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'sd_resnet20' and config['num_classes'] == 3
    assert config['label_names'] == CLASSES
    args = config['model_args']
    # the fine-tune ran without SD (the recipe's default for a convnet), the trained p_l folded into the weights
    assert args['in_chans'] == 3 and args['drop_path_rate'] == 0.0 and args['sd_scaling'] == 'paper'
    pcfg = config['pretrained_cfg']
    assert pcfg['input_size'] == [3, 32, 32] and len(pcfg['mean']) == 3 and len(pcfg['std']) == 3
    assert pcfg['tag'] == 'ft_my_images'
    # the card reports the measured test result, and no top-5 (trivially 100% with 3 classes)
    summary = json.loads((run['dir'] / 'summary.json').read_text())
    card = (folder / 'README.md').read_text()
    assert f"{summary['test']['top1']:.4f}".rstrip('0').rstrip('.') in card and 'Top-5' not in card
    assert summary['model_folder'] == str(folder)
    # the run's own training configuration stays where --resume reads it
    assert TrainConfig.from_dict(json.loads((run['dir'] / 'config.json').read_text())).num_classes == 3

    model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert model.num_classes == 3 and model.pretrained_cfg['label_names'] == CLASSES
    trained = load_file(str(run['dir'] / 'model.safetensors'))
    assert all(torch.equal(trained[k], v) for k, v in model.state_dict().items())


def test_validate_export_predict_serve_take_the_run_directory(run, capsys, tmp_path):
    import onnx
    from sdzoo.cli import main
    from sdzoo.serve import create_app
    from sdzoo.serve.entries import single_model_repository
    from serve_support import ServerThread
    rdir = str(run['dir'])

    assert main(['validate', rdir, '--workers', '0', '--out', str(tmp_path / 'v.json')]) == 0  # data: the run's
    out = capsys.readouterr().out
    assert 'test (30 images): top-1' in out and 'top-5' not in out
    v = json.loads((tmp_path / 'v.json').read_text())
    summary = json.loads((run['dir'] / 'summary.json').read_text())
    assert v['top1'] == pytest.approx(summary['test']['top1']) and v['data'] == str(run['data'])
    # the trainer's own test pass records the same per-image hits: compare on the run pairs them one to one
    assert main(['compare', rdir, str(tmp_path / 'v.json')]) == 0
    out = capsys.readouterr().out
    assert f'{run["dir"] / "summary.json"}: top-1' in out and 'only the first right on 0 images, only the second on 0' in out

    # no --out: the ONNX lands in the run's model folder
    assert main(['export', rdir, '--data', str(run['data']), '--val-images', '8']) == 0
    onnx_file = run['dir'] / 'model' / 'model.onnx'
    meta = {p.key: p.value for p in onnx.load(str(onnx_file), load_external_data=False).metadata_props}
    assert json.loads(meta['sdzoo.labels']) == CLASSES
    capsys.readouterr()

    image = next((run['data'] / 'test' / 'ship').iterdir())
    assert main(['predict', rdir, str(image), '--top-k', '5', '--json']) == 0
    pred = json.loads(capsys.readouterr().out)['predictions'][0]['top_k']
    assert sorted(p['label'] for p in pred) == CLASSES  # k capped at the 3 classes

    repo = tmp_path / 'repo'
    assert main(['export', rdir, '--repository', str(repo)]) == 0
    assert (repo / 'sd_resnet20_ft_my_images' / 'labels.txt').read_text().split() == CLASSES

    # `sdzoo serve RUN_DIR` serves it as a one-entry repository
    with single_model_repository(rdir) as root:
        with ServerThread(create_app(root)) as server:
            r = httpx.post(f'{server.url}/v2/models/sd_resnet20_ft_my_images/classify?top_k=3',
                           content=image.read_bytes(), timeout=60)
    assert r.status_code == 200, r.text
    labels = [p['label'] for p in r.json()['results'][0]['predictions']]
    assert sorted(labels) == CLASSES


def test_a_run_without_model_folder_is_a_clear_error(tmp_path, capsys):
    from sdzoo.cli import main
    old_run = tmp_path / 'old-run'
    old_run.mkdir()
    (old_run / 'config.json').write_text(json.dumps({'model': 'sd_resnet20', 'data': 'cifar10', 'epochs': 1}))
    for argv in (['validate', str(old_run)], ['export', str(old_run)]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert 'holds no model' in err and 'Traceback' not in err


def test_evaluating_one_split_decodes_only_that_split(tmp_path, cifar_root, monkeypatch):
    """`sdzoo validate --split test` must not decode the whole training set first."""
    from sdzoo.data import load_splits
    data = _three_class_folder(cifar_root, tmp_path / 'imgs', n_train=20, n_test=5)
    monkeypatch.setenv('SDZOO_CACHE', str(tmp_path / 'cache'))
    test_only = load_splits(str(data), (3, 32, 32), val_size=0, only='test')
    assert test_only.test.images is not None and tuple(test_only.test.images.shape) == (15, 32, 32, 3)
    assert test_only.train.images is None and len(test_only.train.files) == 60  # listed, not decoded
    everything = load_splits(str(data), (3, 32, 32), val_size=0)
    assert everything.train.images is not None
    assert (test_only.test.images == everything.test.images).all()


def test_resume_of_a_finished_run_keeps_working(run, tmp_path):
    """--resume reads the run's own config.json/last.pt as before; finishing again rewrites model/ identically."""
    import torch
    from safetensors.torch import load_file
    from sdzoo.cli import main
    copy = tmp_path / 'run'
    shutil.copytree(run['dir'], copy, ignore=shutil.ignore_patterns('model'))
    assert main(['finetune', '--resume', str(copy), '--workers', '0', '--no-progress']) == 0
    config = json.loads((copy / 'model' / 'config.json').read_text())
    assert config['label_names'] == CLASSES and config['num_classes'] == 3
    a, b = load_file(str(copy / 'model' / 'model.safetensors')), load_file(str(run['dir'] / 'model' / 'model.safetensors'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
