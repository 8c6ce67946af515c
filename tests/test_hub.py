"""Pretrained weights: Hub-layout folders, offline loading with sha256 checks, `sdzoo push --dry-run`.

The Hub download/upload paths (real huggingface_hub client against a local Hub server) are in
test_hub_server.py. No test here touches the network or the package's own manifest.json.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import sdzoo  # noqa: F401  (registers the models)
from sdzoo.cli import main as sdzoo_main
from sdzoo.hub import WeightsIntegrityError, WeightsNotFoundError, save_weights_folder, sha256_file
from sdzoo.hub.weights import DEFAULT_MANIFEST

NAME = 'sd_resnet20.sd_cifar10'
RESULTS = dict(top1=91.37, top5=99.71, loss=0.3012, top1_err=8.63)
TRAIN_INFO = dict(epochs=3, wall_clock=4210.5, hardware='2 CPU cores', recipe=dict(lr=0.1, sched='cosine'),
                  commands=['sdzoo train sd_resnet20 --epochs 3'])
CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


def _random_model(seed: int = 0, **kwargs) -> torch.nn.Module:
    """A randomly initialised sd_resnet20 with non-trivial BN statistics (stand-in for trained weights)."""
    torch.manual_seed(seed)
    model = timm.create_model('sd_resnet20', **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def publish(model, root: Path, manifest: Path, **kwargs) -> Path:
    return save_weights_folder(model, root, model_name='sd_resnet20', tag='sd_cifar10', results=RESULTS,
                               train_info=TRAIN_INFO, manifest_path=manifest, **kwargs)


def corrupt(path: Path) -> None:
    """Flip the last byte (tensor data): safetensors still loads it, only the sha256 can tell."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope='module')
def published(tmp_path_factory):
    """sd_resnet20.sd_cifar10 written with save_weights_folder into tmp, with its own manifest."""
    root = tmp_path_factory.mktemp('published')
    real_manifest = DEFAULT_MANIFEST.read_bytes() if DEFAULT_MANIFEST.exists() else None
    model = _random_model(drop_path_rate=0.2)  # not the default 0.5: loading must restore it
    csv = root / 'train_log.csv'
    csv.write_text('epoch,train_loss,val_top1\n1,2.1,31.5\n2,1.6,45.2\n3,1.3,52.8\n')
    png = root / 'curves.png'
    Image.new('RGB', (8, 6), (200, 30, 30)).save(png)
    manifest = root / 'manifest.json'
    folder = publish(model, root / 'weights', manifest, metrics_csv=csv, plot_png=png, label_names=CLASSES)
    yield SimpleNamespace(
        root=root, weights=root / 'weights', folder=folder, manifest=manifest, model=model, csv=csv, png=png,
        state_dict={k: v.clone() for k, v in model.state_dict().items()})
    now = DEFAULT_MANIFEST.read_bytes() if DEFAULT_MANIFEST.exists() else None
    assert now == real_manifest, 'a test wrote into the package manifest'


@pytest.fixture
def use_weights(monkeypatch, published):
    """Load only from the published tmp folder, trusting its tmp manifest."""
    monkeypatch.setenv('SDZOO_WEIGHTS', str(published.weights))
    monkeypatch.setenv('SDZOO_WEIGHTS_ONLY', '1')
    monkeypatch.setenv('SDZOO_MANIFEST', str(published.manifest))
    return published


def assert_same_weights(model: torch.nn.Module, state_dict, skip=()) -> None:
    sd = model.state_dict()
    assert sorted(sd) == sorted(state_dict)
    for k, v in state_dict.items():
        if k not in skip:
            assert torch.equal(sd[k], v), k


# -------------------------------------------------------------------------------------- publishing


def test_weights_folder_layout_config_card_and_manifest(published):
    folder = published.folder
    assert folder == published.weights / NAME
    assert sorted(p.name for p in published.weights.iterdir()) == [NAME]  # no temp folders left
    assert sorted(p.name for p in folder.iterdir()) == [
        'README.md', 'config.json', 'metrics.csv', 'model.safetensors', 'training_curves.png']

    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'sd_resnet20'
    assert config['num_classes'] == 10
    assert config['label_names'] == CLASSES
    assert config['pretrained_cfg']['tag'] == 'sd_cifar10'
    assert tuple(config['pretrained_cfg']['input_size']) == (3, 32, 32)
    assert config['model_args']['drop_path_rate'] == pytest.approx(0.2)
    assert config['model_args']['sd_scaling'] == 'paper'

    weights = load_file(folder / 'model.safetensors')
    assert sorted(weights) == sorted(published.state_dict)
    assert all(torch.equal(weights[k], v) for k, v in published.state_dict.items())
    assert (folder / 'metrics.csv').read_bytes() == published.csv.read_bytes()
    assert (folder / 'training_curves.png').read_bytes() == published.png.read_bytes()

    from huggingface_hub import ModelCard
    card = ModelCard.load(folder / 'README.md')
    assert card.data.library_name == 'timm'
    assert card.data.license == 'apache-2.0'
    assert card.data.datasets == ['uoft-cs/cifar10']
    assert card.data.metrics == ['accuracy']
    assert {'timm', 'sdzoo', 'image-classification'} <= set(card.data.tags)
    metrics = {e.metric_type: e.metric_value for e in card.data.eval_results}
    assert metrics == {'accuracy': RESULTS['top1'], 'top_5_accuracy': RESULTS['top5'], 'loss': RESULTS['loss']}
    assert {e.dataset_split for e in card.data.eval_results} == {'test'}
    text = card.text
    for needle in ('91.37', '99.71', '0.3012', '1h 10m 10s', '2 CPU cores', 'sdzoo train sd_resnet20 --epochs 3',
                   '(training_curves.png)', '(metrics.csv)', sha256_file(folder / 'model.safetensors')):
        assert needle in text, needle

    manifest = json.loads(published.manifest.read_text())
    assert list(manifest) == sorted(manifest)
    assert manifest[NAME] == dict(sha256=sha256_file(folder / 'model.safetensors'),
                                  bytes=(folder / 'model.safetensors').stat().st_size)


def test_save_weights_folder_replaces_only_when_asked_and_never_half_writes(tmp_path):
    root, manifest = tmp_path / 'weights', tmp_path / 'manifest.json'
    manifest.write_text(json.dumps({'zz_other.tag': {'bytes': 1, 'sha256': 'ab'}}))
    first = publish(_random_model(seed=1), root, manifest)
    sha1 = sha256_file(first / 'model.safetensors')
    with pytest.raises(FileExistsError, match='overwrite=True'):
        publish(_random_model(seed=2), root, manifest)
    # failing saves leave the folder and the manifest as they were
    with pytest.raises(ValueError, match='top1'):
        save_weights_folder(_random_model(seed=2), root, model_name='sd_resnet20', tag='sd_cifar10',
                            results=dict(top5=99.0), train_info={}, manifest_path=manifest, overwrite=True)
    with pytest.raises(ValueError, match='not a sd_resnet32'):
        save_weights_folder(_random_model(seed=2), root, model_name='sd_resnet32', tag='sd_cifar10',
                            results=RESULTS, train_info={}, manifest_path=manifest)
    assert sha256_file(first / 'model.safetensors') == sha1
    assert json.loads(manifest.read_text())[NAME]['sha256'] == sha1

    # the folder itself works as out_dir too
    second = publish(_random_model(seed=2), tmp_path / 'weights' / NAME, manifest, overwrite=True)
    assert second == first
    sha2 = sha256_file(second / 'model.safetensors')
    assert sha2 != sha1
    data = json.loads(manifest.read_text())
    assert data[NAME]['sha256'] == sha2 and list(data) == sorted(data) and 'zz_other.tag' in data
    assert sorted(p.name for p in root.iterdir()) == [NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['manifest.json', 'weights']


# ---------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize('name', ['sd_resnet20', NAME])
def test_offline_load_gives_exactly_the_published_model(use_weights, name):
    model = timm.create_model(name, pretrained=True).eval()
    assert_same_weights(model, use_weights.state_dict)
    assert Path(model.pretrained_cfg['file']) == use_weights.folder / 'model.safetensors'
    assert model.pretrained_cfg['hf_hub_id'] == f'sdzoo/{NAME}'
    # config.json's model_args rebuild the trained SD schedule, which scales branches at eval time
    assert model.survival_probs == use_weights.model.survival_probs
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), use_weights.model(x))


def test_pretrained_with_other_num_classes_and_in_chans(use_weights):
    sd = use_weights.state_dict
    model = timm.create_model('sd_resnet20', pretrained=True, num_classes=5)
    assert model.fc.weight.shape == (5, 64)
    assert not torch.equal(model.fc.weight[:5], sd['fc.weight'][:5])  # a fresh head
    assert_same_weights(model, sd, skip=('fc.weight', 'fc.bias'))

    model = timm.create_model('sd_resnet20', pretrained=True, in_chans=1)
    assert model.conv1.weight.shape == (16, 1, 3, 3)
    torch.testing.assert_close(model.conv1.weight, sd['conv1.weight'].sum(dim=1, keepdim=True))  # timm's adaptation
    assert_same_weights(model, sd, skip=('conv1.weight',))


def test_corrupt_file_is_a_clear_error_naming_the_file(monkeypatch, published, tmp_path):
    copy = tmp_path / 'weights' / NAME
    shutil.copytree(published.folder, copy)
    corrupt(copy / 'model.safetensors')
    assert sorted(load_file(copy / 'model.safetensors')) == sorted(published.state_dict)  # loads "fine" otherwise
    monkeypatch.setenv('SDZOO_WEIGHTS', str(tmp_path / 'weights'))
    monkeypatch.setenv('SDZOO_WEIGHTS_ONLY', '1')
    monkeypatch.setenv('SDZOO_MANIFEST', str(published.manifest))
    with pytest.raises(WeightsIntegrityError) as e:
        timm.create_model(NAME, pretrained=True)
    msg = str(e.value)
    assert str(copy / 'model.safetensors') in msg and 'sha256' in msg and 'corrupt' in msg


def test_weights_not_in_the_manifest_are_refused(monkeypatch, published, tmp_path):
    (tmp_path / 'manifest.json').write_text('{}')
    monkeypatch.setenv('SDZOO_WEIGHTS', str(published.weights))
    monkeypatch.setenv('SDZOO_WEIGHTS_ONLY', '1')
    monkeypatch.setenv('SDZOO_MANIFEST', str(tmp_path / 'manifest.json'))
    with pytest.raises(WeightsIntegrityError, match='not recorded in the weights manifest'):
        timm.create_model(NAME, pretrained=True)


def test_missing_weights_error_says_where_it_looked(monkeypatch, tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    monkeypatch.setenv('SDZOO_WEIGHTS', str(empty))
    monkeypatch.setenv('SDZOO_WEIGHTS_ONLY', '1')
    with pytest.raises(WeightsNotFoundError) as e:
        timm.create_model('sd_resnet32', pretrained=True)  # no shipped folder and no Hub id
    assert str(empty / 'sd_resnet32') in str(e.value)
    assert 'no Hugging Face Hub id' in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


def test_local_dir_names(monkeypatch, published, tmp_path):
    monkeypatch.setenv('SDZOO_MANIFEST', str(published.manifest))
    model = timm.create_model(f'local-dir:{published.folder}', pretrained=True).eval()
    assert_same_weights(model, published.state_dict)
    assert model.survival_probs == published.model.survival_probs

    # a copy of a published weight (same folder name) is checked against the manifest ...
    copy = tmp_path / NAME
    shutil.copytree(published.folder, copy)
    corrupt(copy / 'model.safetensors')
    with pytest.raises(WeightsIntegrityError, match=str(copy / 'model.safetensors')):
        timm.create_model(f'local-dir:{copy}', pretrained=True)

    # ... while the user's own folders (e.g. a fine-tune) load as they are
    mine = tmp_path / 'my_finetune'
    shutil.copytree(published.folder, mine)
    changed = dict(published.state_dict, **{'fc.bias': published.state_dict['fc.bias'] + 1})
    save_file(changed, mine / 'model.safetensors')
    assert_same_weights(timm.create_model(f'local-dir:{mine}', pretrained=True), changed)


# ------------------------------------------------------------------------------- push --dry-run


def test_push_dry_run_accepts_a_good_folder(published, capsys):
    rc = sdzoo_main(['push', str(published.folder), '--dry-run', '--manifest', str(published.manifest)])
    out = capsys.readouterr().out
    assert rc == 0
    assert 'FAIL' not in out
    for check in ('files', 'config.json', 'name', 'weights', 'forward', 'sha256', 'model card'):
        assert f'ok    {check}:' in out, check
    assert 'load strictly into sd_resnet20' in out
    assert sha256_file(published.folder / 'model.safetensors') in out
    assert 'accuracy=91.37' in out
    assert f'dry run: all checks passed; would upload 5 files' in out and f'/sdzoo/{NAME}' in out


def _drop_tensor(folder: Path) -> None:
    sd = load_file(folder / 'model.safetensors')
    del sd['layer2.0.conv1.weight']
    save_file(sd, folder / 'model.safetensors')


def _card_without_metrics(folder: Path) -> None:
    text = (folder / 'README.md').read_text()
    body = text.split('\n---\n', 1)[1]
    (folder / 'README.md').write_text('---\nlibrary_name: timm\nlicense: apache-2.0\n---\n' + body)


def _other_architecture(folder: Path) -> None:
    config = json.loads((folder / 'config.json').read_text())
    config['architecture'] = 'sd_resnet32'
    (folder / 'config.json').write_text(json.dumps(config))


@pytest.mark.parametrize('breakage, expected', [
    (lambda f: corrupt(f / 'model.safetensors'), 'sha256: model.safetensors has sha256'),
    (_drop_tensor, 'does not load strictly into sd_resnet20'),
    (_card_without_metrics, 'no model-index accuracy result'),
    (_other_architecture, 'config.json says sd_resnet32.sd_cifar10 but the folder is named'),
    (lambda f: (f / 'config.json').unlink(), 'missing config.json'),
], ids=['corrupt-weights', 'missing-tensor', 'card-without-metrics', 'wrong-architecture', 'no-config'])
def test_push_dry_run_rejects_a_broken_folder(published, tmp_path, capsys, breakage, expected):
    folder = tmp_path / NAME
    shutil.copytree(published.folder, folder)
    breakage(folder)
    with pytest.raises(SystemExit) as e:
        sdzoo_main(['push', str(folder), '--dry-run', '--manifest', str(published.manifest)])
    captured = capsys.readouterr()
    assert e.value.code == 2
    assert 'FAIL' in captured.out and expected in captured.out
    assert 'sdzoo push: error:' in captured.err and expected in captured.err
    assert 'dry run: all checks passed' not in captured.out


@pytest.mark.parametrize('env', [{'HF_HUB_OFFLINE': '1'}, {'HF_ENDPOINT': 'http://127.0.0.1:{port}'}])
def test_hf_hub_name_without_hub_fails_at_once_naming_the_shipped_copy(env, tmp_path):
    """HF_HUB_OFFLINE, or an endpoint nobody listens on (no network): no ~30 s of retries, a clear message."""
    import socket
    import subprocess
    import sys
    with socket.socket() as s:  # a port nobody listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = {k: v.format(port=port) for k, v in env.items()}
    code = ("import timm\n"
            "try:\n"
            "    timm.create_model('hf-hub:sdzoo/sd_resnet20.sd_cifar10', pretrained=True)\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, HF_HUB_CACHE=str(tmp_path / 'hf-cache'), **env)).stdout
    assert out.startswith('WeightsNotFoundError hf-hub:sdzoo/sd_resnet20.sd_cifar10: the Hugging Face Hub '
                          'cannot be reached'), out
    assert "timm.create_model('sd_resnet20.sd_cifar10', pretrained=True)" in out  # the offline alternative
    assert 'Retry' not in out
