"""ONNX export: folded graphs, parity through real onnxruntime sessions, CLI and Triton repository."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image

import sdzoo
from sdzoo.cli import main
from sdzoo.export.onnx import ExportError, op_histogram
from sdzoo.models.load import CIFAR10_CLASSES
from sdzoo.runtime import OrtModel
from model_support import randomize_norms  # noqa: E402

CONTRACT_KEYS = ('sdzoo.model', 'sdzoo.tag', 'sdzoo.mean', 'sdzoo.std', 'sdzoo.input_size', 'sdzoo.labels',
                 'sdzoo.preprocess', 'sdzoo.precision')


_randomize_norms = randomize_norms


def _images(cifar_root: Path, n: int):
    files = [sorted((cifar_root / 'test' / c).glob('*.jpg'))[0] for c in CIFAR10_CLASSES][:n]
    return files, [Image.open(f).convert('RGB') for f in files]


def _hist(path) -> dict:
    return op_histogram(onnx.load(str(path)))


@pytest.fixture(scope='module')
def resnet(tmp_path_factory, cifar_root):
    """A randomly initialised sd_resnet20 (non-trivial BN) exported once, fp32, checked on CIFAR images."""
    torch.manual_seed(0)
    model = _randomize_norms(timm.create_model('sd_resnet20', drop_path_rate=0.5)).eval()
    out = tmp_path_factory.mktemp('resnet') / 'model.onnx'
    report = sdzoo.export_onnx(model, out, data_dir=cifar_root / 'test', val_images=12)
    return model, out, report


def test_export_report_and_metadata(resnet):
    model, out, report = resnet
    assert out.is_file() and report['bytes'] == out.stat().st_size
    saved = json.loads(out.with_name('model.report.json').read_text())
    assert saved['op_histogram'] == report['op_histogram'] == _hist(out)
    assert saved['nodes'] == sum(saved['op_histogram'].values())
    parity = saved['parity']
    assert parity['passed'] and parity['random']['n'] == 6 and parity['images']['n'] == 12
    assert parity['random']['rel_max_diff'] <= 1e-4 and parity['images']['top1_agreement'] == 1.0
    assert 'accuracy_onnx' in parity['images']  # folder classes match the CIFAR-10 labels
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert all(k in meta for k in CONTRACT_KEYS)
    assert meta['sdzoo.model'] == 'sd_resnet20' and meta['sdzoo.precision'] == 'fp32'
    assert json.loads(meta['sdzoo.labels']) == list(CIFAR10_CLASSES)
    assert json.loads(meta['sdzoo.input_size']) == [3, 32, 32]
    assert json.loads(meta['sdzoo.mean']) == pytest.approx(model.pretrained_cfg['mean'])
    assert not list(out.parent.glob('*.tmp')) and not list(out.parent.glob('.*'))


def test_export_graph_is_the_plain_architecture(resnet, tmp_path):
    _, out, _ = resnet
    hist = _hist(out)
    assert not {'Mul', 'Dropout', 'BatchNormalization'} & set(hist)
    # same architecture without stochastic depth (p = 1 everywhere: nothing to fold)
    plain = timm.create_model('sd_resnet20', drop_path_rate=0.0).eval()
    ref = sdzoo.export_onnx(plain, tmp_path / 'plain.onnx', write_report=False)
    assert ref['op_histogram'] == hist
    # without folding the survival multiplies are there: one per residual block
    unfolded = sdzoo.export_onnx(timm.create_model('sd_resnet20').eval(), tmp_path / 'unfolded.onnx',
                                 fold_survival=False, write_report=False)
    assert unfolded['op_histogram'].get('Mul') == 9
    # the legacy TorchScript exporter spells the padding shortcut differently, but folds the same way
    legacy = sdzoo.export_onnx(timm.create_model('sd_resnet20').eval(), tmp_path / 'legacy.onnx',
                               dynamo=False, write_report=False)
    legacy_plain = sdzoo.export_onnx(plain, tmp_path / 'legacy_plain.onnx', dynamo=False, write_report=False)
    assert legacy['op_histogram'] == legacy_plain['op_histogram']
    assert legacy['op_histogram']['Conv'] == hist['Conv'] and 'BatchNormalization' not in legacy['op_histogram']


def test_export_parity_through_onnxruntime(resnet, cifar_root):
    model, out, _ = resnet
    ort_model = OrtModel(out)
    assert ort_model.input_shape == ['batch', 3, 32, 32]
    graph = onnx.load(str(out)).graph
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == 'batch'
    _, images = _images(cifar_root, 7)  # odd batch: the batch dimension is dynamic
    x = ort_model.preprocess(images)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = ort_model.run(x)
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert np.abs(ort_model.run(x[:1]) - ref[:1]).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_vit_export_matches_no_sd_architecture(tmp_path):
    torch.manual_seed(0)
    kw = dict(depth=2)
    folded = sdzoo.export_onnx(timm.create_model('sd_vit_lite_patch4_32', drop_path_rate=0.5, **kw).eval(),
                               tmp_path / 'vit.onnx', write_report=False)
    plain = sdzoo.export_onnx(timm.create_model('sd_vit_lite_patch4_32', drop_path_rate=0.0, **kw).eval(),
                              tmp_path / 'plain.onnx', write_report=False)
    assert folded['op_histogram'] == plain['op_histogram']
    assert not {'Dropout', 'BatchNormalization'} & set(folded['op_histogram'])
    assert folded['parity']['random']['rel_max_diff'] <= 1e-4 and folded['sd_units_folded'] == 4


def test_fp16_export(resnet, tmp_path, cifar_root):
    model, fp32_path, _ = resnet
    out = tmp_path / 'fp16.onnx'
    report = sdzoo.export_onnx(model, out, fp16=True, data_dir=cifar_root / 'test', val_images=8)
    proto = onnx.load(str(out))
    weights = [t for t in proto.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {p.key: p.value for p in proto.metadata_props}['sdzoo.precision'] == 'fp16'
    assert out.stat().st_size < 0.6 * fp32_path.stat().st_size
    assert report['parity']['tolerance'] == 1e-2
    assert 0 < report['parity']['images']['rel_max_diff'] <= 1e-2
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = OrtModel(out).run(x)
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() <= 1e-2 * max(1.0, np.abs(ref).max())


def test_preprocessing_in_graph(resnet, tmp_path, cifar_root):
    model, fp32_path, _ = resnet
    out = tmp_path / 'pre.onnx'
    sdzoo.export_onnx(model, out, preprocess=True, write_report=False)
    pre = OrtModel(out)
    assert pre.input_name == 'image' and pre.input_dtype == np.uint8
    assert pre.input_shape == ['batch', 32, 32, 3] and pre.metadata['sdzoo.preprocess'] == '1'
    _, images = _images(cifar_root, 5)
    pixels = pre.preprocess(images)
    assert pixels.dtype == np.uint8 and pixels.shape == (5, 32, 32, 3)
    plain = OrtModel(fp32_path)
    ref = plain.run(plain.preprocess(images))
    got = pre.run(pixels)
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


class _ExportsSomethingElse(nn.Module):
    """Behaves differently while being exported: the validation must catch it."""

    def __init__(self):
        super().__init__()
        self.net = timm.create_model('sd_resnet20')

    def forward(self, x):
        out = self.net(x)
        if torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
            out = out + 1.0
        return out


def test_failed_validation_writes_nothing(tmp_path):
    out = tmp_path / 'bad.onnx'
    model = _ExportsSomethingElse().eval()
    model.pretrained_cfg = model.net.pretrained_cfg
    model.num_classes = 10
    with pytest.raises(ExportError, match='does not match'):
        sdzoo.export_onnx(model, out)
    assert list(tmp_path.iterdir()) == []


def test_export_argument_errors(tmp_path):
    model = timm.create_model('sd_resnet20').eval()
    with pytest.raises(ValueError, match='.onnx'):
        sdzoo.export_onnx(model, tmp_path / 'model.pb')
    with pytest.raises(ValueError, match='opset'):
        sdzoo.export_onnx(model, tmp_path / 'm.onnx', opset=7)
    with pytest.raises(ValueError, match='unknown model'):
        sdzoo.export_onnx('sd_resnet_nope', tmp_path / 'm.onnx')
    with pytest.raises(FileNotFoundError):
        sdzoo.export_onnx(model, tmp_path / 'm.onnx', data_dir=tmp_path / 'nowhere')
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ CLI
def _exit_code(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code, capsys.readouterr().err


def test_cli_export_and_predict_end_to_end(tmp_path, cifar_root, capsys, monkeypatch):
    from safetensors.torch import save_file
    from timm.data import create_transform, resolve_data_config
    torch.manual_seed(1)
    model = _randomize_norms(timm.create_model('sd_resnet20'), seed=1).eval()
    ckpt = tmp_path / 'weights.safetensors'
    save_file(model.state_dict(), str(ckpt))
    out = tmp_path / 'out' / 'r20.onnx'
    # --data by name, as for train/validate: the data set's held-out test split is what gets compared
    monkeypatch.setenv('SDZOO_DATA', str(cifar_root.parent))
    assert main(['export', 'sd_resnet20', '--checkpoint', str(ckpt), '--out', str(out),
                 '--data', cifar_root.name, '--val-images', '10']) == 0
    printed = capsys.readouterr().out
    assert 'parity images (n=10)' in printed and 'Conv 19' in printed
    report = json.loads((tmp_path / 'out' / 'r20.report.json').read_text())
    assert report['parity']['passed'] and report['parity']['images']['n'] == 10
    assert report['parity']['images']['data'] == str(cifar_root / 'test')

    files, images = _images(cifar_root, 3)
    assert main(['predict', str(out), *map(str, files), '--top-k', '3']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 * 4
    tf = create_transform(**resolve_data_config({}, model=model))
    for i, f in enumerate(files):
        assert lines[4 * i] == str(f)
        ranked = [line.split() for line in lines[4 * i + 1: 4 * i + 4]]
        assert [r[0] for r in ranked] == ['1.', '2.', '3.']
        probs = [float(r[2]) for r in ranked]
        assert probs == sorted(probs, reverse=True) and all(r[1] in CIFAR10_CLASSES for r in ranked)
        with torch.no_grad():
            torch_top1 = model(tf(images[i])[None]).argmax(1).item()
        assert ranked[0][1] == CIFAR10_CLASSES[torch_top1]  # same answer as PyTorch + timm's transform

    assert main(['predict', str(out), str(files[0]), '--top-k', '2', '--json']) == 0
    data = json.loads(capsys.readouterr().out)
    assert data['provider'] == 'CPUExecutionProvider' and len(data['predictions'][0]['top_k']) == 2


def test_cli_trainer_checkpoint_rebuilds_the_trained_schedule(tmp_path, capsys):
    """A .pt trainer checkpoint's recorded drop_path_rate sets the survival factors that get folded."""
    torch.manual_seed(2)
    model = _randomize_norms(timm.create_model('sd_resnet20', drop_path_rate=0.2), seed=2).eval()
    ckpt = tmp_path / 'checkpoint.pt'
    torch.save({'model': model.state_dict(), 'epoch': 3,
                'config': {'model': 'sd_resnet20', 'drop_path_rate': 0.2, 'sd_scaling': None}}, ckpt)
    out = tmp_path / 'r20.onnx'
    assert main(['export', 'sd_resnet20', '--checkpoint', str(ckpt), '--out', str(out)]) == 0
    capsys.readouterr()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    got = OrtModel(out).run(x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
        default = timm.create_model('sd_resnet20').eval()  # drop_path_rate 0.5
        default.load_state_dict(model.state_dict())
        wrong = default(torch.from_numpy(x)).numpy()
    scale = max(1.0, np.abs(ref).max())
    assert np.abs(got - ref).max() <= 1e-4 * scale
    assert np.abs(got - wrong).max() > 1e-2 * scale


def test_cli_trainer_run_folder(tmp_path, capsys):
    """A run folder's model.safetensors (metadata: classes) + config.json (drop_path_rate) rebuild the model."""
    from safetensors.torch import save_file
    torch.manual_seed(3)
    model = _randomize_norms(timm.create_model('sd_resnet20', drop_path_rate=0.1, num_classes=3), seed=3).eval()
    run = tmp_path / 'run'
    run.mkdir()
    classes = ['ant', 'bee', 'cow']
    save_file(model.state_dict(), str(run / 'model.safetensors'),
              {'architecture': 'sd_resnet20', 'num_classes': '3', 'classes': json.dumps(classes)})
    (run / 'config.json').write_text(json.dumps({'model': 'sd_resnet20', 'drop_path_rate': 0.1, 'epochs': 1,
                                                 'num_classes': None}))
    out = tmp_path / 'm.onnx'
    assert main(['export', 'sd_resnet20', '--checkpoint', str(run / 'model.safetensors'), '--out', str(out),
                 '--exporter', 'torchscript']) == 0
    capsys.readouterr()
    m = OrtModel(out)
    assert m.labels == classes and m.num_classes == 3
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(m.run(x) - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    code, err = _exit_code(['export', 'sd_resnet32', '--checkpoint', str(run / 'model.safetensors'), '--out',
                            str(tmp_path / 'n.onnx')], capsys)
    assert code == 2 and 'trained as sd_resnet20' in err


def test_cli_num_classes(tmp_path, capsys):
    from safetensors.torch import save_file
    ckpt = tmp_path / 'five.safetensors'
    save_file(timm.create_model('sd_resnet20', num_classes=5).state_dict(), str(ckpt))
    out = tmp_path / 'five.onnx'
    code, err = _exit_code(['export', 'sd_resnet20', '--checkpoint', str(ckpt), '--out', str(out)], capsys)
    assert code == 2 and 'does not fit' in err and '--num-classes' in err and not out.exists()
    assert main(['export', 'sd_resnet20', '--checkpoint', str(ckpt), '--num-classes', '5', '--out', str(out),
                 '--exporter', 'torchscript']) == 0
    m = OrtModel(out)
    assert m.num_classes == 5 and m.labels == []
    capsys.readouterr()
    img = tmp_path / 'img.png'
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(img)
    assert main(['predict', str(out), str(img), '--top-k', '5']) == 0
    labels = [line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]]
    assert sorted(labels) == ['0', '1', '2', '3', '4']  # no names: class indices


def test_cli_parity_failure_exits_nonzero_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / 'm.onnx'
    code, err = _exit_code(['export', 'sd_resnet20', '--out', str(out), '--tolerance', '1e-12',
                            '--exporter', 'torchscript'], capsys)
    assert code == 2 and 'does not match' in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('argv,match', [
    (['export', 'sd_resnet20', '--checkpoint', 'missing.safetensors', '--out', 'm.onnx'], 'no such file'),
    (['export', 'sd_resnet20', '--out', 'model.txt'], '.onnx'),
    (['export', 'sd_resnet20', '--out', 'm.onnx', '--repository', 'repo'], 'not both'),
    (['export', 'sd_resnet20', '--repository', 'repo'], 'needs trained weights'),
    (['export', 'sd_resnet20'], 'where to'),
    (['export'], 'give a MODEL'),
    (['export', 'sd_nope', '--out', 'm.onnx'], 'unknown model'),
    (['export', 'sd_resnet20', '--out', 'm.onnx', '--data', 'no_such_dir'], 'no such folder'),
    (['export', 'sd_resnet20', '--out', 'm.onnx', '--name', 'x'], '--repository'),
    (['export', 'sd_resnet20', '--out', 'm.onnx', '--val-images', '-1'], 'val-images'),
    (['export', 'sd_resnet20', '--out', 'm.onnx', '--tolerance', '0'], 'tolerance'),
    (['export', 'sd_resnet20', '--pretrained', '--checkpoint', 'a.pt', '--out', 'm.onnx'], 'not allowed with'),
    (['export', 'sd_resnet20', '--out', 'm.onnx', '--fp17'], 'unrecognized'),
    (['predict', 'missing.onnx', 'img.png'], 'no such file'),
])
def test_cli_bad_arguments(argv, match, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _exit_code(argv, capsys)
    assert code == 2 and match in err
    assert list(tmp_path.iterdir()) == []


def test_cli_predict_bad_inputs(resnet, tmp_path, capsys):
    _, out, _ = resnet
    code, err = _exit_code(['predict', str(out), str(tmp_path / 'nope.jpg')], capsys)
    assert code == 2 and 'no such file' in err
    junk = tmp_path / 'junk.jpg'
    junk.write_bytes(b'not an image')
    code, err = _exit_code(['predict', str(out), str(junk)], capsys)
    assert code == 2 and 'cannot be read' in err
    code, err = _exit_code(['predict', str(out), str(junk), '--top-k', '0'], capsys)
    assert code == 2 and 'top-k' in err
    code, err = _exit_code(['predict', str(junk), str(junk)], capsys)  # not an ONNX file
    assert code == 2


def test_loading_a_checkpoint_without_a_state_dict(tmp_path):
    from sdzoo.models.load import load_checkpoint
    bad = tmp_path / 'opt.pt'
    torch.save({'optimizer': {'lr': 0.1}}, bad)
    with pytest.raises(ValueError, match='no state dict'):
        load_checkpoint(bad)
    junk = tmp_path / 'junk.safetensors'
    junk.write_bytes(b'\x00' * 16)
    with pytest.raises(ValueError, match='safetensors'):
        load_checkpoint(junk)


# ------------------------------------------------------------------------------------------ repository
def test_repository_without_shipped_weights_fails_clearly(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('SDZOO_WEIGHTS', str(tmp_path / 'weights'))
    monkeypatch.setenv('SDZOO_WEIGHTS_ONLY', '1')
    code, err = _exit_code(['export', '--repository', str(tmp_path / 'repo')], capsys)
    assert code == 2 and 'no shipped weights' in err
    assert not (tmp_path / 'repo').exists() or not any((tmp_path / 'repo').iterdir())


def test_repository_from_shipped_weights(tmp_path, capsys, monkeypatch):
    """A weights/<model>.<tag>/model.safetensors becomes a Triton entry that parses as a ModelConfig."""
    from safetensors.torch import save_file
    from sdzoo.hub.weights import sha256_file
    folder = tmp_path / 'weights' / 'sd_resnet20.sd_cifar10'
    folder.mkdir(parents=True)
    model = timm.create_model('sd_resnet20').eval()
    save_file(model.state_dict(), str(folder / 'model.safetensors'))
    manifest = tmp_path / 'manifest.json'
    manifest.write_text(json.dumps({'sd_resnet20.sd_cifar10': {
        'sha256': sha256_file(folder / 'model.safetensors'), 'bytes': (folder / 'model.safetensors').stat().st_size}}))
    monkeypatch.setenv('SDZOO_WEIGHTS', str(tmp_path / 'weights'))
    monkeypatch.setenv('SDZOO_WEIGHTS_ONLY', '1')
    monkeypatch.setenv('SDZOO_MANIFEST', str(manifest))
    repo = tmp_path / 'repo'
    assert main(['export', '--repository', str(repo), '--tensorrt', '--max-batch-size', '32']) == 0
    entry = repo / 'sd_resnet20'
    assert (entry / '1' / 'model.onnx').is_file() and (entry / '1' / 'model.report.json').is_file()
    assert (entry / 'labels.txt').read_text().splitlines() == list(CIFAR10_CLASSES)
    m = OrtModel(entry / '1' / 'model.onnx')
    assert m.metadata['sdzoo.tag'] == 'sd_cifar10' and m.metadata['sdzoo.model'] == 'sd_resnet20'

    model_config_pb2 = pytest.importorskip('tritonclient.grpc.model_config_pb2')
    from google.protobuf import text_format
    cfg = text_format.Parse((entry / 'config.pbtxt').read_text(), model_config_pb2.ModelConfig())
    assert cfg.name == 'sd_resnet20' and cfg.platform == 'onnxruntime_onnx' and cfg.max_batch_size == 32
    assert (cfg.input[0].name, list(cfg.input[0].dims)) == ('input', [3, 32, 32])
    assert cfg.input[0].data_type == model_config_pb2.TYPE_FP32
    assert (cfg.output[0].name, list(cfg.output[0].dims)) == ('logits', [10])
    assert cfg.output[0].label_filename == 'labels.txt'
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    trt = cfg.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert trt.name == 'tensorrt' and trt.parameters['precision_mode'] == 'FP16'
    assert trt.parameters['trt_profile_max_shapes'] == 'input:32x3x32x32'


def test_repository_entry_from_checkpoint_cpu(tmp_path, capsys):
    from safetensors.torch import save_file
    ckpt = tmp_path / 'w.safetensors'
    save_file(timm.create_model('sd_resnet20').state_dict(), str(ckpt))
    repo = tmp_path / 'repo'
    assert main(['export', 'sd_resnet20', '--checkpoint', str(ckpt), '--repository', str(repo), '--name', 'mine',
                 '--instance-kind', 'cpu', '--preprocess', '--exporter', 'torchscript']) == 0
    text = (repo / 'mine' / 'config.pbtxt').read_text()
    assert 'name: "mine"' in text and 'kind: KIND_CPU' in text and 'TYPE_UINT8' in text
    assert 'dims: [ 32, 32, 3 ]' in text and 'tensorrt' not in text
    code, err = _exit_code(['export', 'sd_resnet20', '--checkpoint', str(ckpt), '--repository', str(repo),
                            '--name', '../escape'], capsys)
    assert code == 2 and 'model name' in err


def test_shipped_sd_resnet110_exports_to_plain_resnet110_and_predicts(shipped_r110_repository, cifar_root, tmp_path,
                                                                    capsys):
    """The export issue's done-when on the shipped weights: `sdzoo export sd_resnet110 --pretrained` puts a
    validated graph with plain ResNet-110's op histogram in the model repository, and `sdzoo predict`
    classifies real images with it."""
    out = shipped_r110_repository / 'sd_resnet110' / '1' / 'model.onnx'
    report = json.loads(out.with_name('model.report.json').read_text())
    assert report['parity']['passed'] and report['parity']['images']['n'] == 20
    assert OrtModel(out).metadata['sdzoo.tag'] == 'sd_cifar10'
    plain = sdzoo.export_onnx(timm.create_model('sd_resnet110', drop_path_rate=0.0).eval(), tmp_path / 'plain.onnx',
                              write_report=False)
    assert plain['op_histogram'] == _hist(out) and 'Mul' not in plain['op_histogram']
    capsys.readouterr()
    # 3 held-out images per class (not the ones the export checked): trained weights, not chance (10%)
    files = [f for c in CIFAR10_CLASSES for f in sorted((cifar_root / 'test' / c).glob('*.jpg'))[-3:]]
    assert main(['predict', str(out), *map(str, files), '--top-k', '1', '--json']) == 0
    preds = json.loads(capsys.readouterr().out)['predictions']
    correct = sum(p['top_k'][0]['label'] == Path(f).parent.name for p, f in zip(preds, files))
    assert correct >= 0.6 * len(files), f'{correct}/{len(files)} right'
