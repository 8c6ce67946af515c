"""sdzoo.runtime: provider selection, input checks, timm-identical preprocessing, top-k."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from PIL import Image

from sdzoo.runtime import GPU_PROVIDERS, OrtModel, ProviderUnavailableError, resize_center_crop, select_providers, \
    softmax

TRT, CUDA, CPU = 'TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider'
HAS_GPU = any(p in GPU_PROVIDERS for p in ort.get_available_providers())


def _tiny_onnx(path: Path, *, size=(48, 40), uint8_nhwc=False, labels=('red', 'green', 'blue'), crop_pct=0.875,
               crop_mode='center', interpolation='bicubic', mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)) -> Path:
    """A real ONNX classifier whose 3 logits are the per-channel means of its input."""
    h, w = size
    if uint8_nhwc:
        inp = helper.make_tensor_value_info('image', TensorProto.UINT8, ['batch', h, w, 3])
        nodes = [helper.make_node('Cast', ['image'], ['f'], to=TensorProto.FLOAT),
                 helper.make_node('ReduceMean', ['f', 'axes'], ['logits'], keepdims=0)]
        inits = [helper.make_tensor('axes', TensorProto.INT64, [2], [1, 2])]
    else:
        inp = helper.make_tensor_value_info('input', TensorProto.FLOAT, ['batch', 3, h, w])
        nodes = [helper.make_node('GlobalAveragePool', ['input'], ['pooled']),
                 helper.make_node('Flatten', ['pooled'], ['logits'])]
        inits = []
    out = helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['batch', 3])
    graph = helper.make_graph(nodes, 'tiny', [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 20)])
    model.ir_version = 9
    meta = {'sdzoo.model': 'tiny', 'sdzoo.tag': '', 'sdzoo.mean': json.dumps(list(mean)),
            'sdzoo.std': json.dumps(list(std)), 'sdzoo.input_size': json.dumps([3, h, w]),
            'sdzoo.labels': json.dumps(list(labels)), 'sdzoo.preprocess': '1' if uint8_nhwc else '0',
            'sdzoo.precision': 'fp32', 'sdzoo.crop_pct': str(crop_pct), 'sdzoo.crop_mode': crop_mode,
            'sdzoo.interpolation': interpolation}
    for k, v in meta.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def tiny(tmp_path) -> OrtModel:
    return OrtModel(_tiny_onnx(tmp_path / 'tiny.onnx'), intra_op_num_threads=1)


# ------------------------------------------------------------------------------------------ providers
def test_select_providers_orders_tensorrt_cuda_cpu():
    assert select_providers(available=[CPU, CUDA, TRT]) == [TRT, CUDA, CPU]
    assert select_providers(available=['AzureExecutionProvider', CPU, CUDA]) == [CUDA, CPU]
    assert select_providers(available=[CPU]) == [CPU]
    assert select_providers(require_gpu=True, allow_fallback=False, available=[CUDA, CPU]) == [CUDA, CPU]


def test_select_providers_gpu_required(caplog):
    with pytest.raises(ProviderUnavailableError, match='GPU'):
        select_providers(require_gpu=True, allow_fallback=False, available=[CPU, 'AzureExecutionProvider'])
    with caplog.at_level(logging.WARNING, logger='sdzoo.runtime'):
        assert select_providers(require_gpu=True, allow_fallback=True, available=[CPU]) == [CPU]
    assert 'falling back' in caplog.text
    with pytest.raises(ProviderUnavailableError, match='none of'):
        select_providers(available=['AzureExecutionProvider'])


def test_select_providers_defaults_to_installed():
    chosen = select_providers()
    assert chosen[-1] == CPU and set(chosen) <= set(ort.get_available_providers())


@pytest.mark.skipif(HAS_GPU, reason='a GPU provider is installed here')
def test_ort_model_require_gpu_on_cpu_machine(tmp_path):
    path = _tiny_onnx(tmp_path / 'tiny.onnx')
    with pytest.raises(ProviderUnavailableError):
        OrtModel(path, require_gpu=True, allow_fallback=False)
    assert OrtModel(path, require_gpu=True, allow_fallback=True).provider == CPU
    with pytest.raises(ProviderUnavailableError, match='not available'):
        OrtModel(path, providers=[CUDA])


# ---------------------------------------------------------------------------------------- the session
def test_ort_model_reads_graph_and_metadata(tiny):
    assert tiny.provider == CPU
    assert (tiny.input_name, tiny.output_name) == ('input', 'logits')
    assert tiny.input_shape == ['batch', 3, 48, 40]
    assert tiny.input_dtype == np.float32 and tiny.num_classes == 3
    assert tiny.labels == ['red', 'green', 'blue']
    assert tiny.metadata['sdzoo.model'] == 'tiny'


def test_run_and_predict_top_k(tiny):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 48, 40), dtype=np.float32)
    logits = tiny.run(x)
    np.testing.assert_allclose(logits, x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    preds = tiny.predict(x, top_k=2)
    probs = softmax(x.mean(axis=(2, 3)).astype(np.float64))
    for p, row in zip(probs, preds):
        order = np.argsort(-p)[:2]
        assert [lab for lab, _ in row] == [tiny.labels[i] for i in order]
        np.testing.assert_allclose([pr for _, pr in row], p[order], rtol=1e-5)
    assert len(tiny.predict(x, top_k=10)[0]) == 3  # clipped to the number of classes
    with pytest.raises(ValueError, match='top_k'):
        tiny.predict(x, top_k=0)
    # float64 is a float: cast, not refused
    np.testing.assert_allclose(tiny.run(x.astype(np.float64)), logits, rtol=1e-6)


@pytest.mark.parametrize('bad,match', [
    (np.zeros((3, 48, 40), np.float32), 'rank 4'),
    (np.zeros((1, 4, 48, 40), np.float32), '3 channels'),
    (np.zeros((1, 48, 40, 3), np.float32), 'channels'),
    (np.zeros((1, 3, 48, 40), np.int64), 'dtype'),
    (np.zeros((1, 3, 32, 32), np.float32), 'spatial size must be 48x40'),
    (np.zeros((0, 3, 48, 40), np.float32), 'empty'),
    ([[0.0]], 'numpy array'),
])
def test_check_input_errors_name_the_problem(tiny, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny.run(bad)


def test_uint8_nhwc_model(tmp_path):
    m = OrtModel(_tiny_onnx(tmp_path / 'u8.onnx', uint8_nhwc=True))
    assert m.input_name == 'image' and m.input_dtype == np.uint8 and m.input_shape == ['batch', 48, 40, 3]
    x = np.random.default_rng(0).integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)
    np.testing.assert_allclose(m.run(x), x.mean(axis=(1, 2)), rtol=1e-5)
    with pytest.raises(ValueError, match='uint8'):
        m.run(x.astype(np.float32))
    img = Image.fromarray(np.full((60, 50, 3), 200, np.uint8))
    batch = m.preprocess([img])
    assert batch.dtype == np.uint8 and batch.shape == (1, 48, 40, 3)


def test_session_options_and_optimized_model_cache(tmp_path):
    path = _tiny_onnx(tmp_path / 'tiny.onnx')
    cache = tmp_path / 'cache' / 'tiny.opt.onnx'
    with pytest.raises(ValueError, match='graph_optimization_level'):
        OrtModel(path, graph_optimization_level='max')
    first = OrtModel(path, intra_op_num_threads=1, inter_op_num_threads=1, graph_optimization_level='basic',
                     optimized_model_path=cache)
    assert cache.is_file() and not list(cache.parent.glob('*.tmp'))
    stamp = cache.stat().st_mtime_ns
    second = OrtModel(path, optimized_model_path=cache)  # loads the cached graph, does not rewrite it
    assert cache.stat().st_mtime_ns == stamp
    x = np.random.default_rng(1).standard_normal((2, 3, 48, 40), dtype=np.float32)
    np.testing.assert_allclose(second.run(x), first.run(x), rtol=1e-6)
    with pytest.raises(FileNotFoundError):
        OrtModel(tmp_path / 'missing.onnx')


# ----------------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize('crop_mode', ['center', 'squash'])
@pytest.mark.parametrize('img_hw', [(70, 53), (41, 90), (48, 40), (20, 20)])
def test_preprocess_matches_timm_eval_transform(tmp_path, crop_mode, img_hw):
    from timm.data import create_transform
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    m = OrtModel(_tiny_onnx(tmp_path / 't.onnx', size=(48, 48), crop_mode=crop_mode, mean=mean, std=std))
    tf = create_transform(input_size=(3, 48, 48), crop_pct=0.875, crop_mode=crop_mode, interpolation='bicubic',
                          mean=mean, std=std, is_training=False)
    rng = np.random.default_rng(img_hw[0])
    img = Image.fromarray(rng.integers(0, 256, (*img_hw, 3), dtype=np.uint8))
    ours = m.preprocess([img])[0]
    np.testing.assert_allclose(ours, tf(img).numpy(), rtol=0, atol=1e-5)


def test_preprocess_cifar_jpegs_match_timm(cifar_root, tmp_path):
    from timm.data import create_transform
    from sdzoo.models.resnet_cifar import CIFAR10_MEAN, CIFAR10_STD
    m = OrtModel(_tiny_onnx(tmp_path / 'c.onnx', size=(32, 32), crop_pct=1.0, interpolation='bilinear',
                            mean=CIFAR10_MEAN, std=CIFAR10_STD))
    tf = create_transform(input_size=(3, 32, 32), crop_pct=1.0, interpolation='bilinear', mean=CIFAR10_MEAN,
                          std=CIFAR10_STD, is_training=False)
    files = sorted((cifar_root / 'test' / 'cat').glob('*.jpg'))[:4]
    images = [Image.open(f).convert('RGB') for f in files]
    ours = m.preprocess(images)
    ref = np.stack([tf(i).numpy() for i in images])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_resize_center_crop_rejects_unknown_modes():
    img = Image.new('RGB', (10, 10))
    with pytest.raises(ValueError, match='crop_mode'):
        resize_center_crop(img, (8, 8), crop_mode='border')
    with pytest.raises(ValueError, match='interpolation'):
        resize_center_crop(img, (8, 8), crop_pct=0.5, interpolation='cubic-ish')


def test_a_camera_photo_is_turned_upright_for_training_and_serving(onnx_file, cifar_root, tmp_path, capsys):
    """A phone stores a portrait photo sideways with an EXIF orientation tag that viewers apply. The training
    decoder, OrtModel.preprocess and `sdzoo predict` apply it too: the tagged file gives the pixels and the answer
    of the upright one. (They used to feed the network the sideways pixels.)"""
    from sdzoo.cli import main
    from sdzoo.data.images import EXIF_ORIENTATION, decode_images
    src = sorted((cifar_root / 'test' / 'cat').glob('*.jpg'))[0]
    upright = Image.open(src).convert('RGB').resize((32, 48), Image.BICUBIC)  # a portrait picture, 32 wide
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to view"
    upright.save(tmp_path / 'upright.png')
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / 'sideways.png', exif=exif)  # stored 48 wide
    files = [str(tmp_path / 'upright.png'), str(tmp_path / 'sideways.png')]
    assert Image.open(files[1]).size == (48, 32)
    pixels = decode_images(files, (32, 32), 'RGB')
    assert np.array_equal(pixels[0], pixels[1])
    model = OrtModel(onnx_file, intra_op_num_threads=1)
    x = model.preprocess([Image.open(f) for f in files])
    assert np.array_equal(x[0], x[1])
    capsys.readouterr()
    assert main(['predict', str(onnx_file), *files, '--top-k', '3', '--json', '--threads', '1']) == 0
    a, b = (p['top_k'] for p in json.loads(capsys.readouterr().out)['predictions'])
    assert a == b


def test_the_training_decoder_crops_as_served_also_at_the_input_size(tiny, cifar_root, tmp_path):
    """A model whose crop_pct is below 1 enlarges and center-crops even a picture already at its input size when
    served; the training / calibration decoder does the same (it used to leave such pictures as they were)."""
    from sdzoo.data.images import ImageGeometry, decode_images
    from sdzoo.data.sources import normalized
    files = []
    for i, f in enumerate(sorted((cifar_root / 'test' / 'dog').glob('*.jpg'))[:3]):
        Image.open(f).convert('RGB').resize((40, 48), Image.BICUBIC).save(tmp_path / f'{i}.png')  # 40 wide, 48 high
        files.append(str(tmp_path / f'{i}.png'))
    meta = tiny.metadata
    assert meta['sdzoo.crop_pct'] == '0.875' and tiny.spatial_size == (48, 40)
    pixels = decode_images(files, (48, 40), 'RGB', geometry=ImageGeometry.from_config(meta, 'sdzoo.'))
    as_trained = normalized(pixels, json.loads(meta['sdzoo.mean']), json.loads(meta['sdzoo.std']))
    np.testing.assert_allclose(as_trained, tiny.preprocess([Image.open(f) for f in files]), atol=1e-5)
    as_is = np.stack([np.asarray(Image.open(f)) for f in files])
    assert not np.array_equal(pixels, as_is)


def test_a_folder_cached_by_an_older_decoder_is_decoded_again(cifar_root, tmp_path, monkeypatch):
    """Decoded folders are cached by path and size; the decoder's version is part of the key, so a folder an older
    sdzoo decoded (here: before pictures were turned upright) is not served from its stale cache after an upgrade."""
    import sdzoo.data.images as images
    import sdzoo.data.sources as sources
    from sdzoo.data import load_splits
    monkeypatch.setenv('SDZOO_CACHE', str(tmp_path / 'cache'))
    src = sorted((cifar_root / 'test' / 'cat').glob('*.jpg'))[0]
    upright_img = Image.open(src).convert('RGB')
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = 6
    for c in ('a', 'b'):
        (tmp_path / 'data' / c).mkdir(parents=True)
        upright_img.transpose(Image.Transpose.ROTATE_90).save(tmp_path / 'data' / c / 'x.png', exif=exif)
    with monkeypatch.context() as old:  # what an sdzoo before DECODER_VERSION 2 decoded and cached
        old.setattr(images, 'upright', lambda im: im)
        old.setattr(sources, 'DECODER_VERSION', 1)
        stale = load_splits(str(tmp_path / 'data'), (3, 32, 32), val_size=0).train.images.numpy()
    fresh = load_splits(str(tmp_path / 'data'), (3, 32, 32), val_size=0).train.images.numpy()
    assert not np.array_equal(stale[0], np.asarray(upright_img))
    assert np.array_equal(fresh[0], np.asarray(upright_img)) and np.array_equal(fresh[1], np.asarray(upright_img))
    assert len(list((tmp_path / 'cache').glob('data-*.npz'))) == 2
