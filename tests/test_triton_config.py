"""Every config.pbtxt is valid Triton model-config text and matches its ONNX file's inputs and outputs.

Parsed with ``google.protobuf.text_format`` against Triton's own ``ModelConfig`` proto (the generated
``model_config_pb2`` that tritonclient ships in ``tritonclient.grpc``; needs ``tritonclient[grpc]``).
Checks the committed ``export/*/config.pbtxt`` (skipped when there are none) and ones written by the
exporter (``sdzoo.export.triton.write_triton_model``) in tmp_path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from sdzoo.serve.repository import load_repository, parse_config_pbtxt
from serve_support import CIFAR10_LABELS, config_pbtxt, export_onnx

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted((REPO_ROOT / 'export').glob('*/config.pbtxt'))


@pytest.fixture(scope='module')
def pb2():
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError) as e:  # tritonclient raises RuntimeError when grpcio is missing
        pytest.skip(f'Triton ModelConfig proto unavailable (pip install "tritonclient[grpc]"): {e}')
    return model_config_pb2


def parse_triton(pb2, path: Path):
    from google.protobuf import text_format
    config = pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)  # raises ParseError on unknown fields / bad syntax
    return config


_ONNX_TO_TRITON = {1: 'TYPE_FP32', 2: 'TYPE_UINT8', 3: 'TYPE_INT8', 6: 'TYPE_INT32', 7: 'TYPE_INT64',
                   10: 'TYPE_FP16', 11: 'TYPE_FP64', 16: 'TYPE_BF16'}


def _onnx_tensors(values):
    out = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField('dim_value') else -1 for d in t.shape.dim]
        out.append((v.name, _ONNX_TO_TRITON[t.elem_type], dims))
    return out


def check_config(pb2, config_path: Path, onnx_path: Optional[Path] = None) -> None:
    """The checks Triton's onnxruntime backend would make at load time, plus the sdzoo contract."""
    cfg = parse_triton(pb2, config_path)
    entry = config_path.parent
    dtype_name = pb2.DataType.Name
    assert cfg.name == entry.name, 'Triton requires the config name to equal the model folder name'
    assert cfg.platform == 'onnxruntime_onnx' or cfg.backend == 'onnxruntime'
    assert cfg.max_batch_size > 0, 'sdzoo exports have a dynamic batch dimension'
    assert cfg.HasField('dynamic_batching')
    assert len(cfg.input) == 1 and len(cfg.output) == 1
    assert [g.kind for g in cfg.instance_group] in ([pb2.ModelInstanceGroup.KIND_GPU],
                                                    [pb2.ModelInstanceGroup.KIND_CPU])
    for out in cfg.output:
        if out.label_filename:
            labels = (entry / out.label_filename).read_text().splitlines()
            assert len(labels) == out.dims[-1], f'{out.label_filename}: one label per class'

    # the schema-free reader the server uses sees the same values as Triton's parser
    ours = parse_config_pbtxt(config_path)
    assert ours.name == cfg.name and ours.platform == cfg.platform and ours.max_batch_size == cfg.max_batch_size
    assert ours.max_queue_delay_us == cfg.dynamic_batching.max_queue_delay_microseconds
    assert [(t.name, 'TYPE_' + t.data_type, t.dims) for t in ours.inputs + ours.outputs] == [
        (t.name, dtype_name(t.data_type), list(t.dims)) for t in list(cfg.input) + list(cfg.output)]

    if onnx_path is None:
        versions = sorted((p for p in entry.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        onnx_path = versions[-1] / 'model.onnx' if versions else entry / '1' / 'model.onnx'
    if not onnx_path.is_file():
        pytest.skip(f'{onnx_path.relative_to(entry.parent)} is not here (ONNX files are git-ignored)')
    import onnx
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    for kind, declared, actual in (('input', cfg.input, _onnx_tensors(graph.input)),
                                   ('output', cfg.output, _onnx_tensors(graph.output))):
        assert [t.name for t in declared] == [a[0] for a in actual], f'{kind} names differ from the ONNX file'
        for t, (name, data_type, dims) in zip(declared, actual):
            assert dtype_name(t.data_type) == data_type, f'{kind} {name}: data_type'
            assert dims[0] == -1, f'{kind} {name}: the ONNX batch dimension must be dynamic'
            assert list(t.dims) == dims[1:], f'{kind} {name}: dims (without batch) {list(t.dims)} vs ONNX {dims}'


@pytest.mark.parametrize('config_path', COMMITTED or [None], ids=[p.parent.name for p in COMMITTED] or ['none'])
def test_committed_repository_configs(pb2, config_path):
    if config_path is None:
        pytest.skip('no export/*/config.pbtxt in the repository yet')
    check_config(pb2, config_path)


@pytest.mark.parametrize('kwargs', [
    {},
    {'max_batch_size': 8, 'max_queue_delay_us': 0, 'instance_kind': 'cpu', 'instance_count': 2},
    {'tensorrt': True},
])
def test_exporter_written_configs(pb2, tmp_path, onnx_file, kwargs):
    triton = pytest.importorskip('sdzoo.export.triton')
    (tmp_path / 'cifar_r20' / '1').mkdir(parents=True)
    (tmp_path / 'cifar_r20' / '1' / 'model.onnx').write_bytes(onnx_file.read_bytes())
    folder = triton.write_triton_model(tmp_path, 'cifar_r20', **kwargs)
    check_config(pb2, folder / 'config.pbtxt')
    if kwargs.get('tensorrt'):
        accel = parse_triton(pb2, folder / 'config.pbtxt').optimization.execution_accelerators
        assert [a.name for a in accel.gpu_execution_accelerator] == ['tensorrt']
    entry = load_repository(tmp_path)['cifar_r20']  # and `sdzoo serve` accepts the entry
    assert entry.ready, entry.error
    assert entry.labels == CIFAR10_LABELS


def test_test_helper_configs_are_valid_triton(pb2, tmp_path, onnx_file):
    """The hand-written configs of the serving tests are valid Triton configs too."""
    (tmp_path / 'm' / '1').mkdir(parents=True)
    (tmp_path / 'm' / '1' / 'model.onnx').write_bytes(onnx_file.read_bytes())
    (tmp_path / 'm' / 'labels.txt').write_text('\n'.join(CIFAR10_LABELS) + '\n')
    (tmp_path / 'm' / 'config.pbtxt').write_text(config_pbtxt('m', max_batch_size=16, delay_us=2000))
    check_config(pb2, tmp_path / 'm' / 'config.pbtxt')


def test_mismatched_config_is_reported_not_served(pb2, tmp_path, onnx_file):
    """A config.pbtxt that disagrees with its ONNX file makes the entry not ready, with the reason."""
    (tmp_path / 'm' / '1').mkdir(parents=True)
    (tmp_path / 'm' / '1' / 'model.onnx').write_bytes(onnx_file.read_bytes())
    (tmp_path / 'm' / 'labels.txt').write_text('\n'.join(CIFAR10_LABELS) + '\n')
    cases = {
        config_pbtxt('m', dims=(3, 64, 64)): 'dims [3, 64, 64] do not match the ONNX shape [3, 32, 32]',
        config_pbtxt('m', num_classes=100): 'dims [100] do not match the ONNX shape [10]',
        config_pbtxt('other'): "name 'other' does not match the directory name 'm'",
        config_pbtxt('m').replace('"input"', '"pixels"'): "input ['pixels'] does not match the ONNX input 'input'",
        config_pbtxt('m').replace('TYPE_FP32', 'TYPE_FP16', 1): 'data_type TYPE_FP16',
        config_pbtxt('m') + 'input [': "missing ']'",
    }
    for text, needle in cases.items():
        (tmp_path / 'm' / 'config.pbtxt').write_text(text)
        entry = load_repository(tmp_path)['m']
        assert not entry.ready and needle in entry.error, (needle, entry.error)
