"""sdzoo.convert on timm's own models: same weights and rates, eval parity, dropped work really skipped."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Dict, List

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models.vision_transformer import ParallelThingsBlock, ResPostBlock

import sdzoo
from sdzoo.cli import main as cli_main
from sdzoo.convert import ADAPTERS
from sdzoo.layers import SkippingDropPath, sd_modules
from model_support import randomize_norms

# small members of each supported family (32x32 inputs): name, kwargs, has BatchNorm in the branch
MODELS = {
    'vit': ('vit_tiny_patch16_224', dict(img_size=32, patch_size=8, depth=4), False),
    'deit': ('deit_tiny_distilled_patch16_224', dict(img_size=32, patch_size=8, depth=3), False),
    'vit_respost': ('vit_tiny_patch16_224', dict(img_size=32, patch_size=8, depth=3, block_fn=ResPostBlock), False),
    'convnext': ('convnext_atto', {}, False),
    'convnextv2': ('convnextv2_atto', {}, False),
    'resnet': ('resnet18', {}, True),
    'seresnext_d': ('seresnext26d_32x4d', {}, True),
}
LAYERNORM = [k for k, v in MODELS.items() if not v[2]]
BATCHNORM = [k for k, v in MODELS.items() if v[2]]
# the first module of each slot's residual branch: its input batch is the work the branch does
ENTRY = {'drop_path1': 'attn', 'drop_path2': 'mlp'}
BATCH = 16


def _build(key: str, rate: float = 0.4) -> nn.Module:
    name, kwargs, _ = MODELS[key]
    torch.manual_seed(0)
    model = timm.create_model(name, drop_path_rate=rate, num_classes=10, **kwargs)
    # non-trivial layer scales / BN statistics, so the branches really contribute (timm initialises
    # ConvNeXt's gamma at 1e-6 and a ResNet's last BN weight at 0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith('gamma'):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return randomize_norms(model)


def _blocks(model: nn.Module) -> List[nn.Module]:
    kinds = tuple({a.timm_cls for a in ADAPTERS} | {a.skipping for a in ADAPTERS})
    return [m for m in model.modules() if isinstance(m, kinds)]


def _slots(block: nn.Module) -> List[str]:
    return [s for s in ('drop_path1', 'drop_path2', 'drop_path') if hasattr(block, s)]


def _entry(block: nn.Module, slot: str) -> nn.Module:
    if slot in ENTRY:
        return getattr(block, ENTRY[slot])
    return block.conv_dw if hasattr(block, 'conv_dw') else block.conv1


def _rows_per_slot(model: nn.Module) -> Dict[int, List[int]]:
    """Forward pre-hooks on every branch entry: how many samples each branch call computed."""
    rows: Dict[int, List[int]] = {}
    for i, (block, slot) in enumerate((b, s) for b in _blocks(model) for s in _slots(b)):
        rows[i] = []
        _entry(block, slot).register_forward_pre_hook(lambda m, a, i=i: rows[i].append(a[0].shape[0]))
    return rows


def _x(n: int = BATCH) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _step(model: nn.Module, x: torch.Tensor, seed: int, freeze_bn: bool = False) -> torch.Tensor:
    model.train()
    for m in model.modules():
        if freeze_bn and isinstance(m, nn.BatchNorm2d):
            m.eval()  # normalise with the running statistics (as many fine-tuning recipes do)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # timm's DropPath and the converted row mode both draw from the global RNG
    logits = model(x)
    F.cross_entropy(logits, torch.arange(x.shape[0]) % 10).backward()
    return logits.detach()


@pytest.mark.parametrize('key', list(MODELS))
def test_state_dict_round_trips_strictly(key):
    timm_model = _build(key)
    state = copy.deepcopy(timm_model.state_dict())
    converted = sdzoo.convert(timm_model)
    assert converted is timm_model  # in place
    assert any(isinstance(m, SkippingDropPath) for m in converted.modules())
    converted.load_state_dict(state, strict=True)
    back = timm.create_model(MODELS[key][0], drop_path_rate=0.4, num_classes=10, **MODELS[key][1])
    back.load_state_dict(converted.state_dict(), strict=True)
    assert list(converted.state_dict()) == list(state)
    assert all(torch.equal(converted.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize('key', list(MODELS))
def test_eval_outputs_equal_timm(key):
    timm_model = _build(key).eval()
    converted = sdzoo.convert(copy.deepcopy(timm_model)).eval()
    x = _x()
    with torch.no_grad():
        ref, out = timm_model(x), converted(x)
    assert ref.abs().max() > 0.1
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize('key', list(MODELS))
def test_per_block_rates_are_timms(key):
    timm_model = _build(key)
    expected = []
    for block in _blocks(timm_model):
        for slot in _slots(block):
            dp = getattr(block, slot)
            expected.append(dp.drop_prob if isinstance(dp, DropPath) else 0.0)
    assert max(expected) == pytest.approx(0.4) and min(expected) == 0.0
    converted = sdzoo.convert(timm_model)
    got = [1.0 - getattr(b, s).survival_prob for b in _blocks(converted) for s in _slots(b)]
    assert got == pytest.approx(expected, abs=1e-12)
    assert converted.sd_drop_path_rate == 0.4


@pytest.mark.parametrize('key', list(MODELS))
def test_train_step_runs_branches_only_on_surviving_samples(key):
    timm_model = _build(key)
    converted = sdzoo.convert(copy.deepcopy(timm_model))
    dropped: Dict[int, int] = {}  # samples timm's DropPath zeroed, per slot (same order as the hooks)
    slots = [(b, s) for b in _blocks(timm_model) for s in _slots(b)]
    for i, (block, slot) in enumerate(slots):
        if isinstance(getattr(block, slot), DropPath):
            getattr(block, slot).register_forward_hook(
                lambda m, a, out, i=i: dropped.__setitem__(i, int((out.flatten(1) == 0).all(1).sum())))
    timm_rows, rows = _rows_per_slot(timm_model), _rows_per_slot(converted)
    x = _x()
    _step(timm_model, x, seed=3)
    _step(converted, x, seed=3)
    assert all(r == [BATCH] for r in timm_rows.values())  # timm computes every branch for every sample
    for i in range(len(slots)):
        assert sum(rows[i]) == BATCH - dropped.get(i, 0), f'slot {i}'
    assert sum(dropped.values()) > 0
    assert sum(map(sum, rows.values())) < sum(map(sum, timm_rows.values()))


@pytest.mark.parametrize('key', ['vit', 'convnext', 'resnet'])
def test_batch_mode_skips_whole_branches(key):
    converted = sdzoo.convert(_build(key), mode='batch', seed=0)
    rows = _rows_per_slot(converted)
    for step in range(4):
        _step(converted, _x(), seed=step)
    calls = [len(r) for r in rows.values()]
    assert calls[0] == 4 and min(calls) < 4  # block 1 has rate 0; some later block was skipped
    assert all(n == BATCH for r in rows.values() for n in r)  # a block runs on the whole batch or not at all


@pytest.mark.parametrize('key', LAYERNORM)
def test_gradients_equal_timms_given_the_same_coins(key):
    timm_model = _build(key)
    converted = sdzoo.convert(copy.deepcopy(timm_model))
    rows = _rows_per_slot(converted)
    x = _x()
    ref, out = _step(timm_model, x, seed=5), _step(converted, x, seed=5)
    assert any(sum(r) < BATCH for r in rows.values())  # some samples were dropped somewhere
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    ref_g = dict(timm_model.named_parameters())
    for n, p in converted.named_parameters():
        torch.testing.assert_close(p.grad, ref_g[n].grad, rtol=1e-4, atol=1e-6, msg=lambda m: f'{n}: {m}')


@pytest.mark.parametrize('key', BATCHNORM)
def test_batchnorm_families_equal_timm_when_bn_is_frozen(key):
    """With BatchNorm on running statistics the survivors-only branch is exactly timm's; in train mode
    BN normalises by the survivors' statistics instead (docs/convert.md measures that difference)."""
    timm_model = _build(key)
    converted = sdzoo.convert(copy.deepcopy(timm_model))
    rows = _rows_per_slot(converted)
    x = _x()
    ref, out = _step(timm_model, x, seed=7, freeze_bn=True), _step(converted, x, seed=7, freeze_bn=True)
    assert any(sum(r) < BATCH for r in rows.values())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    ref_g = dict(timm_model.named_parameters())
    for n, p in converted.named_parameters():
        torch.testing.assert_close(p.grad, ref_g[n].grad, rtol=1e-4, atol=1e-6, msg=lambda m: f'{n}: {m}')


def test_convert_again_changes_mode_and_copies_share_one_sampler():
    model = sdzoo.convert(_build('vit'), mode='batch', seed=3)
    probs = [u.survival_prob for u in sdzoo.sd_modules(model)]
    sdzoo.convert(model, mode='row')
    units = sdzoo.sd_modules(model)
    assert [u.survival_prob for u in units] == probs and {u.mode for u in units} == {'row'}
    ema = copy.deepcopy(model)  # what timm's ModelEmaV3 does
    assert all(u.sampler is ema.sd_sampler for u in sdzoo.sd_modules(ema))
    assert ema.sd_sampler is not model.sd_sampler


def test_unsupported_blocks_are_a_clear_error_and_nothing_changes():
    model = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, depth=3, drop_path_rate=0.2)
    model.blocks[1] = ParallelThingsBlock(192, 3, drop_path=0.1)
    before = [(type(m), type(m.drop_path1) if hasattr(m, 'drop_path1') else None) for m in model.blocks]
    with pytest.raises(ValueError, match=r'ParallelThingsBlock \(1 blocks.*Supported: .*vision_transformer'):
        sdzoo.convert(model)
    assert [(type(m), type(m.drop_path1) if hasattr(m, 'drop_path1') else None) for m in model.blocks] == before
    assert not hasattr(model, 'sd_sampler')
    with pytest.raises(ValueError, match=r'InvertedResidual.*Supported: .*convnext.*resnet'):
        sdzoo.convert(timm.create_model('mobilenetv3_small_050', drop_path_rate=0.1))
    with pytest.raises(ValueError, match='no blocks of a supported family'):
        sdzoo.convert(timm.create_model('mobilenetv3_small_050'))
    with pytest.raises(ValueError, match='already skip dropped work'):
        sdzoo.convert(timm.create_model('sd_resnet20'))
    with pytest.raises(ValueError, match='unknown stochastic-depth mode'):
        sdzoo.convert(timm.create_model('resnet18'), mode='sample')


def test_export_is_a_static_graph_equal_to_timm(tmp_path):
    import onnxruntime as ort
    timm_model = _build('vit').eval()
    converted = sdzoo.convert(copy.deepcopy(timm_model), mode='batch').eval()
    x = _x(2)
    program = torch.export.export(converted, (x,))
    ops = {str(n.target) for n in program.graph.nodes if n.op == 'call_function'}
    assert not [o for o in ops if any(k in o for k in ('bernoulli', 'rand', 'nonzero', 'index_add'))], ops
    torch.testing.assert_close(program.module()(x), timm_model(x), rtol=0, atol=1e-5)
    path = tmp_path / 'vit.onnx'
    torch.onnx.export(converted, (x,), str(path), dynamo=False, input_names=['x'])
    sess = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    ort_out = sess.run(None, {'x': x.numpy()})[0]
    assert abs(ort_out - timm_model(x).detach().numpy()).max() <= 1e-4


@pytest.fixture(scope='module')
def micro_cifar(cifar_subset) -> Path:
    """3 train / 1 test CIFAR-10 JPEGs per class: enough for a CLI train step."""
    return cifar_subset(3, 1)


def _train_timm(name: str, data: Path, out: Path, *extra: str) -> int:
    return cli_main(['train', name, '--data', str(data), '--drop-path-rate', '0.3', '--num-classes', '10',
                     '--batch-size', '8', '--val-size', '10', '--max-steps', '2', '--epochs', '1', '--threads', '1',
                     '--workers', '0', '--amp', 'none', '--no-test', '--no-progress', '--out', str(out), *extra])


def test_train_cli_converts_by_default_only_the_families_measured_faster(tmp_path, micro_cifar, capsys):
    # ConvNeXt (and ViT) train faster converted: converted by default
    assert _train_timm('convnext_atto', micro_cifar, tmp_path / 'cnx') == 0
    err = capsys.readouterr().err
    assert 'SD units' in err and 'mode=row, scaling=inverted' in err, err
    # ResNets measured no faster in row mode (benchmarks/results/train_speed_timm*.md): trained as they are
    assert _train_timm('resnet18', micro_cifar, tmp_path / 'r18') == 0
    err = capsys.readouterr().err
    assert 'resnet blocks are not converted by default' in err and 'no SD units' in err, err
    timm.create_model('resnet18', num_classes=10).load_state_dict(
        torch.load(tmp_path / 'r18' / 'last.pt', weights_only=True)['model'], strict=True)


def test_train_cli_converts_a_resnet_when_asked(tmp_path, micro_cifar, capsys):
    out = tmp_path / 'run'
    assert _train_timm('resnet18', micro_cifar, out, '--convert') == 0
    err = capsys.readouterr().err
    assert 'SD units' in err and 'mode=row, scaling=inverted' in err
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['convert'] is True and cfg['sd_mode'] == 'row' and cfg['drop_path_rate'] == 0.3
    state = torch.load(out / 'last.pt', weights_only=True)['model']
    timm.create_model('resnet18', num_classes=10).load_state_dict(state, strict=True)
    # the eval network of a converted run is plain timm's: validate rebuilds it from the checkpoint
    assert cli_main(['validate', 'resnet18', '--checkpoint', str(out / 'last.pt'), '--data', str(micro_cifar),
                     '--threads', '1', '--workers', '0', '--out', str(tmp_path / 'v.json')]) == 0
    assert json.loads((tmp_path / 'v.json').read_text())['images'] == 10


@pytest.mark.parametrize('argv, message', [
    (['train', 'mobilenetv3_small_050', '--drop-path-rate', '0.1', '--convert'], 'cannot convert'),
    (['train', 'resnet18', '--convert'], 'drop_path_rate 0'),
    (['train', 'resnet18', '--no-convert', '--sd-mode', 'batch'], 'is not converted (--no-convert)'),
    (['train', 'sd_resnet20', '--convert'], 'already skips dropped blocks'),
    (['train', 'resnet18', '--drop-path-rate', '0.1', '--sd-scaling', 'paper'], "timm's inverted scaling"),
])
def test_train_cli_conversion_errors(argv, message, capsys, tmp_path, micro_cifar):
    with pytest.raises(SystemExit) as e:
        cli_main(argv + ['--data', str(micro_cifar), '--num-classes', '10', '--out', str(tmp_path / 'o')])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / 'o' / 'last.pt').exists()


def test_gradient_checkpointing_recomputes_with_the_same_coins():
    converted = sdzoo.convert(_build('vit'))
    checkpointed = copy.deepcopy(converted)
    checkpointed.set_grad_checkpointing(True)  # torch.utils.checkpoint restores the RNG before recomputing
    x = _x()
    torch.testing.assert_close(_step(checkpointed, x, seed=4), _step(converted, x, seed=4), rtol=0, atol=0)
    for a, b in zip(converted.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('key', ['convnext', 'resnet'])
def test_channels_last_row_mode_equals_timm_and_keeps_the_layout(key):
    timm_model = _build(key).to(memory_format=torch.channels_last)
    converted = sdzoo.convert(copy.deepcopy(timm_model))
    frozen = MODELS[key][2]  # BatchNorm: compare on running statistics (see the frozen-BN test)
    layouts = []
    for blk in _blocks(converted):
        blk.register_forward_hook(lambda m, a, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last)))
    x = _x().to(memory_format=torch.channels_last)
    rows = _rows_per_slot(converted)
    ref, out = _step(timm_model, x, seed=6, freeze_bn=frozen), _step(converted, x, seed=6, freeze_bn=frozen)
    assert any(sum(r) < BATCH for r in rows.values()) and all(layouts)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    ref_g = dict(timm_model.named_parameters())
    for n, p in converted.named_parameters():
        torch.testing.assert_close(p.grad, ref_g[n].grad, rtol=1e-4, atol=1e-6, msg=lambda m: f'{n}: {m}')


@pytest.mark.parametrize('key', ['vit', 'convnext', 'resnet'])
def test_batch_mode_under_gradient_checkpointing_replays_the_coins(key):
    """Issue 46.9: convert(mode='batch') + set_grad_checkpointing: backward recomputes each checkpointed
    block with the coin its forward drew (ConvNeXt keeps the flag per stage), so the gradients equal the
    unchekpointed model's instead of raising torch.utils.checkpoint.CheckpointError."""
    plain = sdzoo.convert(_build(key, rate=0.6), mode='batch', seed=3)
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    frozen = MODELS[key][2]
    x = _x()
    dropped = 0
    for step in range(3):
        out_plain = _step(plain, x, seed=step, freeze_bn=frozen)
        out_ckpt = _step(ckpt, x, seed=step, freeze_bn=frozen)
        kept = [u.last_kept for u in sd_modules(plain)]
        assert kept == [u.last_kept for u in sd_modules(ckpt)]
        dropped += kept.count(False)
        torch.testing.assert_close(out_ckpt, out_plain, rtol=1e-5, atol=1e-5)
        for (n, a), b in zip(plain.named_parameters(), ckpt.parameters()):
            assert (a.grad is None) == (b.grad is None), n
            if a.grad is not None:
                torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f'{n}: {m}')
    assert dropped > 0
