"""INT8 export: onnxruntime static QDQ quantization of a real trained model, calibrated on real CIFAR-10
training images, with its accuracy gate, metadata, Triton entries, runtime, predict and serve paths."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sdzoo.cli import main

pytest.importorskip('onnxruntime.quantization')


@pytest.fixture(scope='module')
def r20_fp32(tmp_path_factory) -> Path:
    """The shipped sd_resnet20.sd_cifar10 as a validated fp32 ONNX file."""
    from sdzoo.export.onnx import export_onnx
    from sdzoo.hub.weights import find_weights_folder
    if find_weights_folder('sd_resnet20.sd_cifar10') is None:
        pytest.skip('sd_resnet20.sd_cifar10 is not shipped in this checkout')
    out = tmp_path_factory.mktemp('fp32') / 'r20.onnx'
    export_onnx('sd_resnet20.sd_cifar10', out, pretrained=True, dynamo=False, write_report=False)
    return out


@pytest.fixture(scope='module')
def r20_int8(r20_fp32, cifar_root, tmp_path_factory):
    from sdzoo.export.quantize import quantize_onnx
    out = tmp_path_factory.mktemp('int8') / 'r20_int8.onnx'
    report = quantize_onnx(r20_fp32, out, data=str(cifar_root), calibration_images=64, eval_images=500)
    return out, report


def _small_dataset(root: Path, cifar_root: Path, classes=None, train_per_class=3, test_per_class=10,
                   train_pixels=None) -> Path:
    """A data set folder from real CIFAR-10 files: train/ (or synthetic train images) and test/."""
    from PIL import Image
    classes = classes or sorted(p.name for p in (cifar_root / 'test').iterdir() if p.is_dir())
    for c in classes:
        (root / 'train' / c).mkdir(parents=True)
        (root / 'test' / c).mkdir(parents=True)
        for i, f in enumerate(sorted((cifar_root / 'train' / c).glob('*.jpg'))[:train_per_class]):
            if train_pixels is not None:
                Image.fromarray(np.full((32, 32, 3), train_pixels, np.uint8)).save(root / 'train' / c / f'{i}.png')
            else:
                shutil.copy(f, root / 'train' / c / f.name)
        for f in sorted((cifar_root / 'test' / c).glob('*.jpg'))[:test_per_class]:
            shutil.copy(f, root / 'test' / c / f.name)
    return root


def test_int8_model_is_qdq_per_channel_with_measured_accuracy(r20_int8, r20_fp32):
    import onnx
    from sdzoo.runtime import OrtModel
    out, report = r20_int8
    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear'} <= ops
    # per-channel: the convolution weights' scales are vectors (one per output channel)
    weight_scales = [i for i in proto.graph.initializer if i.name.endswith('_scale') and len(i.dims) == 1 and i.dims[0] > 1]
    assert weight_scales, 'expected per-channel weight scales'
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta['sdzoo.precision'] == 'int8'
    assert meta['sdzoo.calibration_images'] == '64' and meta['sdzoo.calibration_method'] == 'minmax'
    acc = json.loads(meta['sdzoo.accuracy'])
    assert acc['split'] == 'val' and acc['images'] == 500
    assert acc == report['accuracy'] and abs(acc['top1_fp32'] - acc['top1_int8']) <= 0.5 + 1e-9
    assert acc['top1_fp32'] > 75  # a trained ResNet-20 on held-out CIFAR-10 (JPEG q75 copy) images
    assert 'train images' in json.loads(meta['sdzoo.quantization'])['calibration_data']
    # AVX2-only x86 CPUs saturate 8-bit dot products: there the weights use 7 bits (reduce_range), recorded
    from sdzoo.train.hardware import cpu_has_vnni, cpu_info
    flags = set(cpu_info().get('flags', '').split())
    assert cpu_has_vnni() == (not flags or 'avx2' not in flags or bool({'avx512_vnni', 'avx_vnni', 'amx_int8'} & flags))
    assert json.loads(meta['sdzoo.quantization'])['reduce_range'] == (not cpu_has_vnni())
    assert out.stat().st_size < 0.5 * r20_fp32.stat().st_size  # int8 weights
    # what the runtime gives: same interface as fp32, logits close to it on real inputs
    fp32, int8 = OrtModel(r20_fp32), OrtModel(out)
    assert (int8.input_name, int8.input_dtype, int8.labels) == (fp32.input_name, fp32.input_dtype, fp32.labels)
    assert int8.metadata['sdzoo.model'] == fp32.metadata['sdzoo.model']
    json.loads(Path(report['report']).read_text())  # the report file landed next to the model


def test_calibration_never_uses_the_evaluation_images(cifar_root):
    from sdzoo.export.quantize import load_labelled_images
    kw = dict(input_size=(3, 32, 32), num_classes=10, mean=[0.5] * 3, std=[0.5] * 3)
    x_tr, y_tr, d_tr = load_labelled_images(str(cifar_root), 'train', limit=100, **kw)
    x_va, y_va, d_va = load_labelled_images(str(cifar_root), 'val', limit=100, **kw)
    assert np.bincount(y_tr, minlength=10).tolist() == [10] * 10  # class-balanced
    assert 'train images' in d_tr and 'val images' in d_va
    tr = {a.tobytes() for a in x_tr}
    assert not any(a.tobytes() in tr for a in x_va)


def test_accuracy_gate_refuses_and_writes_nothing(r20_fp32, cifar_root, tmp_path):
    """Calibrated on black images the activation ranges are useless: the real drop trips the gate."""
    from sdzoo.export.quantize import QuantizationError, quantize_onnx
    data = _small_dataset(tmp_path / 'black', cifar_root, train_pixels=0)
    out = tmp_path / 'out' / 'r20_int8.onnx'
    with pytest.raises(QuantizationError, match=r'INT8 top-1 .*% vs fp32 .*%.*exceeds the allowed 0\.5') as e:
        quantize_onnx(r20_fp32, out, data=str(data), calibration_images=30, eval_split='test')
    assert '100 test images' in str(e.value)
    assert not out.exists() and not (tmp_path / 'out').exists()


@pytest.mark.parametrize('case, needle', [
    ('missing', 'not found'),
    ('empty', 'no images'),
    ('classes', 'has 5 classes'),
])
def test_bad_calibration_data_is_one_clear_error(r20_fp32, cifar_root, tmp_path, case, needle):
    from sdzoo.export.quantize import QuantizationError, quantize_onnx
    data = tmp_path / 'data'
    if case == 'empty':
        for c in ('a', 'b'):
            (data / 'train' / c).mkdir(parents=True)
    elif case == 'classes':
        classes = sorted(p.name for p in (cifar_root / 'test').iterdir())[:5]
        _small_dataset(data, cifar_root, classes=classes, test_per_class=1)
    out = tmp_path / 'int8.onnx'
    with pytest.raises(QuantizationError, match=needle) as e:
        quantize_onnx(r20_fp32, out, data=str(data), calibration_images=8)
    assert '\n' not in str(e.value) and not out.exists()


def test_a_photo_folder_calibrates_on_the_pixels_the_served_model_sees(r20_fp32, photo_folder):
    """Pictures of other sizes and shapes (a user's folder) are brought to the input size with the model's own
    crop, as `sdzoo serve` / `predict` preprocess them: the calibration and gate images are the served inputs,
    value for value. They used to be refused ("the model expects 32x32"), even for the folder the model was
    fine-tuned on, and training squashed them where serving keeps the aspect ratio and crops the middle."""
    from PIL import Image
    from sdzoo.data.images import ImageGeometry
    from sdzoo.export.quantize import load_labelled_images
    from sdzoo.runtime import OrtModel
    m = OrtModel(r20_fp32, intra_op_num_threads=1)
    x, y, desc = load_labelled_images(
        str(photo_folder), 'test', [3, 32, 32], 3, json.loads(m.metadata['sdzoo.mean']),
        json.loads(m.metadata['sdzoo.std']), geometry=ImageGeometry.from_config(m.metadata, 'sdzoo.'))
    files = sorted(f for f in (photo_folder / 'test').rglob('*') if f.suffix.lower() in ('.jpg', '.jpeg', '.png'))
    files.sort(key=lambda f: (f.parent.name, str(f)))
    sizes = {Image.open(f).size for f in files}
    assert len(files) == len(x) == 30 and len(sizes) == 4 and all(w != h for w, h in sizes)
    served = m.preprocess([Image.open(f) for f in files])
    assert served.shape == x.shape == (30, 3, 32, 32)
    np.testing.assert_allclose(x, served, atol=1e-5)
    assert y.tolist() == [0] * 10 + [1] * 10 + [2] * 10


def test_cli_int8_repository_entries_serve_and_predict(cifar_root, tmp_path, capsys):
    """`sdzoo export … --int8 --data` writes NAME and NAME_int8; predict and the server run both."""
    from sdzoo.runtime import OrtModel
    from sdzoo.serve.repository import load_repository
    repo = tmp_path / 'repo'
    assert main(['export', 'sd_resnet20.sd_cifar10', '--pretrained', '--int8', '--data', str(cifar_root),
                 '--repository', str(repo), '--calibration-images', '32', '--eval-images', '300',
                 '--exporter', 'torchscript', '--val-images', '8']) == 0
    printed = capsys.readouterr().out
    assert 'int8' in printed and 'drop' in printed and '300 val images' in printed
    assert (repo / 'sd_resnet20' / '1' / 'model.onnx').is_file()
    fp32_report = json.loads((repo / 'sd_resnet20' / '1' / 'model.report.json').read_text())
    assert fp32_report['file'] == str(repo / 'sd_resnet20' / '1' / 'model.onnx')
    int8_file = repo / 'sd_resnet20_int8' / '1' / 'model.onnx'
    assert OrtModel(int8_file).metadata['sdzoo.precision'] == 'int8'
    assert 'int8' in (repo / 'sd_resnet20_int8' / 'config.pbtxt').read_text().splitlines()[0]
    entries = load_repository(repo)
    assert sorted(entries) == ['sd_resnet20', 'sd_resnet20_int8'] and all(e.ready for e in entries.values())

    cat = sorted((cifar_root / 'test' / 'cat').glob('*.jpg'))[:4]
    assert main(['predict', str(int8_file), *map(str, cat), '--top-k', '1', '--json']) == 0
    out = json.loads(capsys.readouterr().out)
    assert out['precision'] == 'int8'
    assert sum(p['top_k'][0]['label'] == 'cat' for p in out['predictions']) >= 2

    # `sdzoo serve REPO` over real HTTP: the INT8 entry answers like a direct onnxruntime call on it
    httpx = pytest.importorskip('httpx')
    from PIL import Image
    from sdzoo.serve.app import ServeSettings, create_app
    from serve_support import ServerThread
    expected = OrtModel(int8_file).predict([Image.open(f) for f in cat], top_k=1)
    with ServerThread(create_app(repo, ServeSettings(), intra_op_num_threads=1)) as s:
        for f, exp in zip(cat, expected):
            r = httpx.post(f'{s.url}/v2/models/sd_resnet20_int8/classify?top_k=1', content=f.read_bytes(), timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()['results'][0]['predictions'][0]['label'] == exp[0][0]
        assert httpx.get(f'{s.url}/v2/models/sd_resnet20/ready', timeout=30).status_code == 200


def test_cli_gate_failure_exits_2_and_leaves_repository_untouched(cifar_root, tmp_path, capsys):
    data = _small_dataset(tmp_path / 'black', cifar_root, train_pixels=0)
    repo = tmp_path / 'repo'
    with pytest.raises(SystemExit) as e:
        main(['export', 'sd_resnet20.sd_cifar10', '--pretrained', '--int8', '--data', str(data), '--repository',
              str(repo), '--calibration-images', '30', '--eval-split', 'test', '--exporter', 'torchscript'])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'exceeds the allowed 0.5' in err[0] and 'nothing written' in err[0]
    assert not repo.exists() or not any(repo.rglob('*.onnx'))


def test_tensorrt_int8_config_needs_symmetric_int8(pb2_or_skip, r20_fp32, r20_int8, cifar_root, tmp_path):
    from sdzoo.export.quantize import quantize_onnx
    from sdzoo.export.triton import triton_config
    uint8_file, _ = r20_int8
    with pytest.raises(ValueError, match='symmetric int8 activations'):
        triton_config('m', uint8_file, tensorrt=True)
    sym = tmp_path / 'm' / '1' / 'model.onnx'
    quantize_onnx(r20_fp32, sym, data=str(cifar_root), calibration_images=32, eval_images=200,
                  activation_type='int8', write_report=False)
    text = triton_config('m', sym, tensorrt=True)
    (tmp_path / 'm' / 'config.pbtxt').write_text(text)
    from google.protobuf import text_format
    cfg = pb2_or_skip.ModelConfig()
    text_format.Parse(text, cfg)
    [accel] = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    params = dict(accel.parameters)
    assert accel.name == 'tensorrt' and params['precision_mode'] == 'INT8'
    assert 'int8_calibration_table_name' not in params  # Q/DQ graphs carry their scales; a table would fail


@pytest.fixture
def pb2_or_skip():
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError) as e:
        pytest.skip(f'Triton ModelConfig proto unavailable: {e}')
    return model_config_pb2


def test_model_cards_int8_rows_come_from_the_committed_records(repo_root):
    """Every weights/<model>.<tag>/int8.json is a MODEL_CARDS.md row with its measured numbers."""
    from sdzoo.reports.cards import _int8
    records = sorted((repo_root / 'weights').glob('*/int8.json'))
    if not records:
        pytest.skip('no INT8 records committed')
    section = '\n'.join(_int8(repo_root / 'weights'))
    cards = (repo_root / 'MODEL_CARDS.md').read_text()
    for f in records:
        r = json.loads(f.read_text())
        assert r['test']['split'] == 'test' and r['quantization']['format'] == 'QDQ'
        row = next(line for line in section.splitlines() if line.startswith(f'| `{f.parent.name}` |'))
        assert f"| {r['test']['top1_fp32']:.2f} | {r['test']['top1_int8']:.2f} |" in row
        assert row in cards, 'MODEL_CARDS.md is stale: run sdzoo cards'


def test_rank1_weights_kept_per_tensor_are_recorded_not_logged(tmp_path, caplog):
    """A LayerNorm's scale has no channel axis 1: onnxruntime quantizes it per tensor and would log one
    root WARNING per weight; the export collects their names instead (into the report) and logs none."""
    import logging
    import torch
    from sdzoo.export.quantize import _quantize, format_int8_report

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4)).eval()
    fp32 = tmp_path / 'ln.onnx'
    torch.onnx.export(model, (torch.randn(2, 8),), str(fp32), input_names=['input'], output_names=['logits'],
                      dynamic_axes={'input': {0: 'batch'}}, dynamo=False)
    calib = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    with caplog.at_level(logging.WARNING):
        names = _quantize(fp32, tmp_path / 'ln_int8.onnx', 'static', 'minmax', calib, 'input', True, 'uint8',
                          ['MatMul', 'Gemm', 'LayerNormalization'])
    assert (tmp_path / 'ln_int8.onnx').is_file()
    assert len(names) == 1 and names[0].endswith('weight'), names  # the LayerNorm scale
    assert not [r for r in caplog.records if 'out-of-range' in r.getMessage()]
    assert logging.getLogger().filters == []  # the filter does not outlive the call
    report = {'file': 'm.onnx', 'bytes': 1, 'fp32_bytes': 4,
              'quantization': {'format': 'QDQ', 'per_channel': True, 'per_tensor_weights': names, 'mode': 'static',
                               'calibration_method': 'minmax', 'calibration_data': '16 images'},
              'accuracy': {'data': 'x', 'top1_fp32': 1.0, 'top1_int8': 1.0, 'drop_points': 0.0,
                           'max_drop_points': 0.5}}
    assert 'LayerNorm scales per tensor: 1' in format_int8_report(report)
