"""Depth on demand (issue 50): sdzoo.prune_depth and `sdzoo export --keep-blocks`, on the shipped sd_resnet20."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sdzoo
from sdzoo.models.depth import SkippedBlock, load_images, residual_blocks


@pytest.fixture(scope='module')
def r20():
    import timm
    from sdzoo.hub.weights import find_weights_folder
    if find_weights_folder('sd_resnet20.sd_cifar10') is None:
        pytest.skip('sd_resnet20.sd_cifar10 is not shipped in this checkout')
    return timm.create_model('sd_resnet20', pretrained=True).eval()


@pytest.fixture(scope='module')
def cifar_small(cifar_subset):
    """60 train (54 train + 6 held out) and 20 test real CIFAR-10 images per class."""
    return cifar_subset(60, 20)


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_survival_removes_deepest_plain_blocks(r20):
    before = {k: v.clone() for k, v in r20.state_dict().items()}
    pruned = sdzoo.prune_depth(r20, keep=6, strategy='survival')
    depth = pruned.pretrained_cfg['depth']
    # layer2.0 / layer3.0 downsample: never removed; the rest go deepest (lowest survival) first
    assert depth['removed_blocks'] == ['layer2.2', 'layer3.1', 'layer3.2']
    assert depth['kept_blocks'] == ['layer1.0', 'layer1.1', 'layer1.2', 'layer2.0', 'layer2.1', 'layer3.0']
    assert depth['strategy'] == 'survival' and depth['blocks_total'] == 9
    assert sorted(b.name for b in residual_blocks(r20)) == sorted(depth['kept_blocks'] + depth['removed_blocks'])
    assert _n_params(pruned) < _n_params(r20)
    keys = pruned.state_dict().keys()
    for name in depth['removed_blocks']:
        assert isinstance(pruned.get_submodule(name), SkippedBlock)
        assert not any(k.startswith(name + '.') for k in keys)
    for name in depth['kept_blocks']:
        assert any(k.startswith(name + '.') for k in keys)
    assert not pruned.training
    with torch.no_grad():
        assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # the original is untouched
    assert all(torch.equal(before[k], v) for k, v in r20.state_dict().items())
    assert 'depth' not in (r20.pretrained_cfg or {})


def test_every_other_and_keep_all(r20):
    pruned = sdzoo.prune_depth(r20, keep=5, strategy='every_other')
    depth = pruned.pretrained_cfg['depth']
    assert len(depth['kept_blocks']) == 5 and {'layer2.0', 'layer3.0'} <= set(depth['kept_blocks'])
    same = sdzoo.prune_depth(r20, keep=9, strategy='greedy')  # nothing to remove: no data needed
    assert same.pretrained_cfg['depth']['removed_blocks'] == []
    assert _n_params(same) == _n_params(r20)


@pytest.mark.parametrize('kwargs, message', [
    (dict(keep=0, strategy='survival'), 'keep must lie in 2..9'),
    (dict(keep=10, strategy='survival'), 'keep must lie in 2..9'),
    (dict(keep=1, strategy='survival'), 'keep must lie in 2..9'),
    (dict(keep=5, strategy='deepest'), 'unknown strategy'),
    (dict(keep=5), "needs data="),
])
def test_bad_input_one_line(r20, kwargs, message):
    with pytest.raises(ValueError) as e:
        sdzoo.prune_depth(r20, **kwargs)
    assert message in str(e.value) and '\n' not in str(e.value)


def test_unsupported_model_one_line():
    with pytest.raises(ValueError, match='Linear') as e:
        sdzoo.prune_depth(torch.nn.Linear(3, 3), keep=1, strategy='survival')
    assert '\n' not in str(e.value)


def test_already_pruned_refused(r20):
    pruned = sdzoo.prune_depth(r20, keep=8, strategy='survival')
    with pytest.raises(ValueError, match='already removed'):
        sdzoo.prune_depth(pruned, keep=7, strategy='survival')


@torch.no_grad()
def _top1(model, x, y) -> float:
    return 100.0 * (model(x).argmax(1) == y).float().mean().item()


def test_greedy_keeps_accuracy_at_mild_cut(r20, cifar_small):
    from sdzoo.data.sources import load_splits
    pruned = sdzoo.prune_depth(r20, keep=8, data=str(cifar_small), calibration_images=100, bn_images=500, heal_steps=0)
    depth = pruned.pretrained_cfg['depth']
    assert depth['strategy'] == 'greedy' and len(depth['kept_blocks']) == 8
    assert 'val' in depth['calibration']  # held-out training images, never test ones
    # BN re-estimation (training images) unless the removed block is the last one (no BN after it)
    assert 'train' in depth.get('bn_recalibration', 'train') and 'test' not in json.dumps(depth)
    if depth['removed_blocks'] != ['layer3.2']:
        assert 'bn_recalibration' in depth
    assert _n_params(pruned) < _n_params(r20)
    test = load_splits(str(cifar_small), (3, 32, 32)).test
    from sdzoo.models.load import data_config
    cfg = data_config(r20)
    mean = torch.tensor(cfg['mean']).view(1, -1, 1, 1) * 255
    std = torch.tensor(cfg['std']).view(1, -1, 1, 1) * 255
    x = (test.images.permute(0, 3, 1, 2).float() - mean) / std
    full, cut = _top1(r20, x, test.labels), _top1(pruned, x, test.labels)
    assert len(x) == 200
    assert cut >= full - 5, (full, cut)


def test_greedy_ranks_by_kl_per_unit_saved_when_told(r20, cifar_small):
    """``greedy_order(..., saving=)`` ranks a candidate by its KL increase divided by what removing it saves (e.g. its
    measured latency): equal savings give the plain order, and a block that saves far more than the others goes first
    even when the plain order takes it late. The KL after each removal stays the real KL, not the ratio."""
    from sdzoo.models.depth import greedy_order
    x, _ = load_images(r20, str(cifar_small), 'val', 64, 0)
    plain = greedy_order(r20, x, 4)
    assert greedy_order(r20, x, 4, saving={b.name: 3.0 for b in residual_blocks(r20)}) == plain
    late = greedy_order(r20, x)[-1][0]  # the block plain greedy keeps longest
    weighted = greedy_order(r20, x, 4, saving={late: 1e6})
    assert weighted[0][0] == late and weighted[0][0] != plain[0][0]
    assert weighted[0][1] > plain[0][1] > 0  # the KL of removing the costly block first, not KL / 1e6
    with pytest.raises(ValueError, match="no residual block 'layer9.0'"):
        greedy_order(r20, x, 1, saving={'layer9.0': 2.0})
    with pytest.raises(ValueError, match='finite and > 0'):
        greedy_order(r20, x, 1, saving={late: 0.0})
    # prune_depth passes it on (same calibration draw: 64 val images, seed 0) and records it
    pruned = sdzoo.prune_depth(r20, keep=8, data=str(cifar_small), calibration_images=64, bn_images=0, heal_steps=0,
                               saving={late: 1e6})
    assert pruned.pretrained_cfg['depth']['removed_blocks'] == [late]
    assert pruned.pretrained_cfg['depth']['saving'] == {late: 1e6}
    with pytest.raises(ValueError, match="strategy 'survival' takes none"):
        sdzoo.prune_depth(r20, keep=8, strategy='survival', saving={late: 2.0})


@torch.no_grad()
def _kl_to(teacher, student, x) -> float:
    t = torch.log_softmax(teacher(x), -1)
    return torch.nn.functional.kl_div(torch.log_softmax(student(x), -1), t, log_target=True,
                                      reduction='batchmean').item()


def test_heal_distils_the_full_model_into_the_pruned_one(r20, cifar_small):
    """prune_depth(..., heal_steps=N): the pruned network moves towards the full one (KL on the training images it
    was healed on), only the kept blocks' tensors remain, the record says what was done, and the original and
    its removed blocks are untouched; the unhealed prune of the same blocks is the baseline."""
    kw = dict(keep=6, strategy='survival', data=str(cifar_small), bn_images=200, heal_images=300)
    before = {k: v.clone() for k, v in r20.state_dict().items()}
    plain = sdzoo.prune_depth(r20, heal_steps=0, **kw)
    healed = sdzoo.prune_depth(r20, heal_steps=150, **kw)
    assert 'heal' not in plain.pretrained_cfg['depth']
    h = healed.pretrained_cfg['depth']['heal']
    assert h['steps'] == 150 and h['optimizer'] == 'SGD' and h['lr'] == 0.002 and h['images'] == '300 train images of ' + cifar_small.name
    assert healed.pretrained_cfg['depth']['removed_blocks'] == plain.pretrained_cfg['depth']['removed_blocks']
    assert healed.state_dict().keys() == plain.state_dict().keys()
    assert not healed.training and all(p.grad is None for p in healed.parameters())
    x, _ = load_images(r20, str(cifar_small), 'train', 300, kw.get('seed', 0) + 2)
    kl_plain, kl_healed = _kl_to(r20, plain, x), _kl_to(r20, healed, x)
    assert kl_healed < 0.8 * kl_plain, (kl_plain, kl_healed)
    assert all(torch.equal(before[k], v) for k, v in r20.state_dict().items())


def test_heal_can_match_stage_outputs_too(r20, cifar_small):
    """heal(..., feature_weight=w) adds the stages' outputs (layer1..3) to the loss: with it, the pruned network's
    stage outputs end closer to the full one's than a logits-only heal of the same steps leaves them; the hooks it
    used are gone afterwards, and the record names the stages."""
    import copy
    from sdzoo.models.depth import heal, remove_blocks
    x, _ = load_images(r20, str(cifar_small), 'train', 200, 2)
    gone = ['layer1.1', 'layer2.1']
    students = {w: remove_blocks(copy.deepcopy(r20).eval(), gone) for w in (0.0, 10.0)}

    def hooks(model) -> list:
        return [len(m._forward_hooks) for m in model.modules()]
    before = hooks(r20), hooks(students[10.0])
    infos = {w: heal(s, r20, x, 40, seed=0, feature_weight=w) for w, s in students.items()}
    assert (hooks(r20), hooks(students[10.0])) == before  # heal's own hooks are gone
    assert infos[10.0]['feature_stages'] == ['layer1', 'layer2', 'layer3'] and 'feature_stages' not in infos[0.0]

    @torch.no_grad()
    def stage_outputs(model) -> list:
        out: list = []
        hooks = [getattr(model, n).register_forward_hook(lambda m, i, o: out.append(o)) for n in ('layer1', 'layer2', 'layer3')]
        model(x[:64])
        for h in hooks:
            h.remove()
        return out

    def stage_gap(student) -> float:
        return sum(((s - t) ** 2).mean().item() / (t ** 2).mean().item()
                   for s, t in zip(stage_outputs(student), stage_outputs(r20)))
    assert stage_gap(students[10.0]) < stage_gap(students[0.0])


def test_heal_defaults_follow_the_architecture():
    """SGD at lr 0.002 for a BatchNorm convnet, AdamW at 1e-4 for a ViT (the rates depth_heal_lr.md chose on held-out
    training images); the student moves, the teacher does not."""
    import copy
    import timm
    from sdzoo.models.depth import heal
    torch.manual_seed(0)
    x = torch.randn(16, 3, 32, 32)
    for name, optimizer, lr in (('sd_resnet20', 'SGD', 0.002), ('sd_vit_lite_patch4_32', 'AdamW', 1e-4)):
        teacher = timm.create_model(name, pretrained=False).eval()
        student = copy.deepcopy(teacher)
        with torch.no_grad():  # a student that disagrees with its teacher, as a pruned network does
            student.get_classifier().weight.mul_(3.0)
        before = {k: v.clone() for k, v in teacher.state_dict().items()}
        head0 = student.get_classifier().weight.detach().clone()
        rec = heal(student, teacher, x, steps=2, batch_size=8)
        assert (rec['optimizer'], rec['lr'], rec['steps']) == (optimizer, lr, 2) and rec['kl_first'] > 1e-3, rec
        assert (student.get_classifier().weight - head0).abs().max() > 1e-6
        assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize('kwargs, message', [
    (dict(keep=6, strategy='survival', heal_steps=5), 'heal_steps needs data='),
    (dict(keep=6, strategy='survival', heal_steps=-1), 'heal_steps must be an int >= 0'),
    (dict(keep=6, strategy='survival', heal_steps=5, heal_images=0, data='cifar10'), 'heal_images must be'),
])
def test_heal_bad_input_one_line(r20, kwargs, message):
    with pytest.raises(ValueError) as e:
        sdzoo.prune_depth(r20, **kwargs)
    assert message in str(e.value) and '\n' not in str(e.value)


def test_pruned_model_saves_as_a_timm_folder_and_loads_back(r20, cifar_small, tmp_path):
    """A pruned PyTorch model written as a Hub-layout folder (config.json's model_args carry removed_blocks) loads
    with timm's own local-dir: path into the same shallower network, and with another drop_path_rate still
    computes what was saved (its survival scaling rebased over full depth's schedule, not the kept blocks')."""
    import timm
    from sdzoo.hub.publish import write_model_folder
    pruned = sdzoo.prune_depth(r20, keep=6, data=str(cifar_small), calibration_images=50, bn_images=200, heal_steps=0)
    folder = write_model_folder(pruned, tmp_path / 'k6', model_name='sd_resnet20', tag='sd_cifar10_k6',
                                results={'top1': 80.0}, train_info={}, dataset={'id': 'cifar10', 'name': 'CIFAR-10'})
    config = json.loads((folder / 'config.json').read_text())
    removed = pruned.pretrained_cfg['depth']['removed_blocks']
    assert config['model_args']['removed_blocks'] == removed and config['depth']['strategy'] == 'greedy'
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want = pruned(x)
        again = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
        assert again.state_dict().keys() == pruned.state_dict().keys()
        assert all(isinstance(again.get_submodule(n), SkippedBlock) for n in removed)
        assert torch.equal(again(x), want)
        other = timm.create_model(f'local-dir:{folder}', pretrained=True, drop_path_rate=0.2).eval()
        torch.testing.assert_close(other(x), want, rtol=1e-5, atol=1e-5)
    # the same network rebuilt from scratch: only the constructor's removed_blocks, no weights
    assert timm.create_model('sd_resnet20', removed_blocks=removed).state_dict().keys() == pruned.state_dict().keys()


@pytest.mark.parametrize('names, message', [(['layer9.0'], "no residual block 'layer9.0'"),
                                            (['layer2.0'], 'layer2.0 changes the shape')])
def test_removed_blocks_bad_names_one_line(names, message):
    import timm
    with pytest.raises(ValueError) as e:
        timm.create_model('sd_resnet20', removed_blocks=names)
    assert message in str(e.value) and '\n' not in str(e.value)


def test_load_images_uses_training_splits(r20, cifar_small):
    x, desc = load_images(r20, str(cifar_small), 'val', 30)
    assert x.shape == (30, 3, 32, 32) and desc.startswith('30 val')
    with pytest.raises(ValueError, match='cannot read data set'):
        load_images(r20, str(cifar_small / 'nope'), 'val', 3)


def _conv_count_and_meta(path):
    import onnx
    proto = onnx.load(str(path))
    return sum(n.op_type == 'Conv' for n in proto.graph.node), {p.key: p.value for p in proto.metadata_props}


def test_export_keep_blocks(r20, tmp_path):
    from sdzoo.cli import main
    full, pruned = tmp_path / 'full.onnx', tmp_path / 'k6.onnx'
    assert main(['export', 'sd_resnet20', '--pretrained', '--out', str(full), '--exporter', 'torchscript']) == 0
    assert main(['export', 'sd_resnet20', '--pretrained', '--out', str(pruned), '--exporter', 'torchscript',
                 '--keep-blocks', '6', '--strategy', 'survival']) == 0
    n_full, meta_full = _conv_count_and_meta(full)
    n_cut, meta = _conv_count_and_meta(pruned)
    assert n_cut == n_full - 6  # three blocks of two convs each: a plain graph, not a masked one
    assert 'sdzoo.depth' not in meta_full
    depth = json.loads(meta['sdzoo.depth'])
    assert depth['kept_blocks'] == ['layer1.0', 'layer1.1', 'layer1.2', 'layer2.0', 'layer2.1', 'layer3.0']
    assert depth['strategy'] == 'survival' and depth['blocks_total'] == 9


def test_export_keeping_every_block_neither_heals_nor_says_it_will(r20, cifar_small, tmp_path, capsys):
    """--keep-blocks equal to the model's depth removes nothing: no distillation, and no notice promising one."""
    from sdzoo.cli import main
    out = tmp_path / 'k9.onnx'
    capsys.readouterr()
    assert main(['export', 'sd_resnet20', '--pretrained', '--out', str(out), '--exporter', 'torchscript',
                 '--keep-blocks', '9', '--data', str(cifar_small), '--max-accuracy-drop', '100']) == 0
    assert 'distillation' not in capsys.readouterr().err
    depth = json.loads(_conv_count_and_meta(out)[1]['sdzoo.depth'])
    assert depth['removed_blocks'] == [] and 'heal' not in depth and len(depth['kept_blocks']) == 9


def test_export_keep_blocks_heal_steps_records_the_distillation(r20, cifar_small, tmp_path):
    from sdzoo.cli import main
    out = tmp_path / 'k6.onnx'
    assert main(['export', 'sd_resnet20', '--pretrained', '--out', str(out), '--exporter', 'torchscript',
                 '--keep-blocks', '6', '--strategy', 'survival', '--data', str(cifar_small), '--heal-steps', '20',
                 '--max-accuracy-drop', '100']) == 0
    depth = json.loads(_conv_count_and_meta(out)[1]['sdzoo.depth'])
    assert depth['heal']['steps'] == 20 and 'train images' in depth['heal']['images'] and 'accuracy' in depth


@pytest.mark.parametrize('extra, message', [
    (['--keep-blocks', '0', '--strategy', 'survival'], '--keep-blocks must be >= 1'),
    (['--keep-blocks', '10', '--strategy', 'survival'], 'keep must lie in 2..9'),
    (['--keep-blocks', '5'], 'needs --data'),
    (['--strategy', 'survival'], 'add --keep-blocks'),
    (['--heal-steps', '10'], '--heal-steps acts on the blocks --keep-blocks N keeps'),
    (['--heal-steps', '0'], '--heal-steps acts on the blocks --keep-blocks N keeps'),
    (['--keep-blocks', '5', '--strategy', 'survival', '--heal-steps', '10'], '--heal-steps needs --data'),
    (['--keep-blocks', '5', '--strategy', 'survival', '--heal-steps', '-2', '--data', 'cifar10'], '--heal-steps must be >= 0'),
    (['--keep-blocks', '5', '--strategy', 'deepest'], 'invalid choice'),
])
def test_export_bad_input(r20, tmp_path, capsys, extra, message):
    from sdzoo.cli import main
    out = tmp_path / 'x.onnx'
    with pytest.raises(SystemExit) as e:
        main(['export', 'sd_resnet20', '--pretrained', '--out', str(out)] + extra)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()[-1]) > 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(600)
def test_pruned_int8_entry_is_gated_and_served_beside_full_depth(r20, cifar_small, tmp_path, capsys):
    """Issue 50's done-when on the small net: `export --keep-blocks N --int8 --data D --repository R` adds
    <entry>_k<N> and <entry>_k<N>_int8 beside the full-depth entry (it used to overwrite it), each gated (depth
    against full depth, INT8 against its fp32), the gate's numbers in the ONNX metadata; `sdzoo serve`'s app
    serves all three, and the pruned entries answer as onnxruntime does. A cut beyond the allowed drop: exit 2,
    no entry."""
    import httpx
    from PIL import Image
    from serve_support import ServerThread
    from sdzoo.cli import main
    from sdzoo.runtime import OrtModel
    from sdzoo.serve.app import ServeSettings, create_app
    repo = tmp_path / 'repo'
    base = ['export', 'sd_resnet20', '--pretrained', '--repository', str(repo), '--data', str(cifar_small),
            '--threads', '1', '--exporter', 'torchscript']
    assert main(base) == 0
    assert main(base + ['--keep-blocks', '7', '--int8', '--max-accuracy-drop', '10']) == 0
    err = capsys.readouterr().err
    assert 'depth: 7 of 9 blocks (greedy)' in err and '300 steps of distillation' in err and '--heal-steps 0' in err
    assert sorted(p.name for p in repo.iterdir()) == ['sd_resnet20', 'sd_resnet20_k7', 'sd_resnet20_k7_int8']
    _, meta = _conv_count_and_meta(repo / 'sd_resnet20_k7' / '1' / 'model.onnx')
    depth = json.loads(meta['sdzoo.depth'])
    assert len(depth['kept_blocks']) == 7 and depth['accuracy']['split'] == 'val'
    assert depth['heal']['steps'] == 300 and 'train images' in depth['heal']['images']  # healing is the default
    assert depth['accuracy']['images'] == 60 and 'optimistic' in depth['accuracy']['data']  # 60 held out: all scored
    images = [Image.open(f) for f in sorted((cifar_small / 'test' / 'cat').glob('*.jpg'))[:2]]
    with ServerThread(create_app(repo, ServeSettings(), intra_op_num_threads=1)) as s:
        for entry in ('sd_resnet20', 'sd_resnet20_k7', 'sd_resnet20_k7_int8'):
            ort = OrtModel(repo / entry / '1' / 'model.onnx', providers=['CPUExecutionProvider'])
            x = ort.preprocess(images)
            r = httpx.post(f'{s.url}/v2/models/{entry}/infer', timeout=60, json={'inputs': [{
                'name': ort.input_name, 'shape': list(x.shape), 'datatype': 'FP32', 'data': x.ravel().tolist()}]})
            assert r.status_code == 200, r.text
            got = np.array(r.json()['outputs'][0]['data']).reshape(2, 10)
            np.testing.assert_allclose(got, ort.run(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(SystemExit) as e:  # 2 of 9 blocks: far beyond the default 0.5-point limit
        main(base + ['--keep-blocks', '2', '--strategy', 'survival', '--heal-steps', '0'])
    assert e.value.code == 2 and 'exceeds the allowed 0.5' in capsys.readouterr().err
    assert not (repo / 'sd_resnet20_k2').exists()


def test_model_cards_depth_table_is_the_benchmark_record(tmp_path):
    """MODEL_CARDS.md's depth-on-demand tables come from benchmarks/results/depth.json, cell for cell; the committed
    MODEL_CARDS.md is what `sdzoo cards` renders from the committed record."""
    import json
    from pathlib import Path
    from sdzoo.reports.cards import depth_section
    record = dict(meta=dict(machine='test CPU', first_date='a', last_date='b'),
                  models=dict(m=dict(label='Model M', cuts=[0, 2, 4])),
                  cells=[dict(model='m', strategy='full', removed=0, blocks_total=9, top1=90.0),
                         dict(model='m', strategy='survival', removed=2, blocks_total=9, top1=80.5),
                         dict(model='m', strategy='greedy', removed=2, blocks_total=9, top1=88.25)],
                  latencies=[dict(machine='CPU one', date='d1', threads=2, rows=dict(
                      a=dict(keep=9, precision='fp32', batch1_median_ms=4.0, batch64_images_per_s=300, top1=90.0),
                      b=dict(keep=7, precision='int8', batch1_median_ms=2.0, batch64_images_per_s=600, top1=88.0))),
                      dict(machine='CPU two', date='d2', threads=1, graphs='export', rows=dict(
                          a=dict(keep=9, precision='fp32', batch1_median_ms=3.0, batch64_images_per_s=400, top1=90.0),
                          b=dict(keep=7, precision='int8', batch1_median_ms=1.0, batch64_images_per_s=900, top1=88.1)))],
                  paired=[dict(strategy='greedy', removed=2, sd_top1=88.25, constant_top1=87.0,
                               sd_minus_constant_error=-1.25, ci95=[-2.0, -0.5], p_value=0.001, differs=True)])
    (tmp_path / 'depth.json').write_text(json.dumps(record))
    text = '\n'.join(depth_section(tmp_path))
    assert '### Model M' in text and 'test CPU' in text
    assert '| 0 | 9 | 90.00 | 90.00 | 90.00 |' in text
    assert '| 2 | 7 | 80.50 | – | 88.25 |' in text and '| 4 | 5 | – | – | – |' in text
    # one latency table per CPU, each speed-up against that CPU's own full-depth fp32 graph
    one = text.index('CPU one, d1, 2 intra-op thread(s), greedy + BN graphs built by benchmarks/depth.py (not healed):')
    two = text.index('CPU two, d2, 1 intra-op thread(s), the graphs `sdzoo export --keep-blocks N --int8')
    assert one < text.index('| 7 | int8 | 2.00 | 2.00x | 600 | 88.00 |') < two
    assert two < text.index('| 7 | int8 | 1.00 | 3.00x | 900 | 88.10 |')
    assert '| greedy | 2 | 88.25 | 87.00 | -1.25 | [-2.00, -0.50] | 0.001 | differ |' in text
    repo = Path(__file__).resolve().parents[1]
    cards = (repo / 'MODEL_CARDS.md').read_text()
    section = '\n'.join(depth_section(repo / 'benchmarks' / 'results'))
    assert section and section in cards


def test_depth_report_adds_this_machines_latency_to_the_committed_record(repo_root, tmp_path):
    """benchmarks/depth.py --phase report keeps what earlier sessions measured (their WORK in /tmp is gone) and adds
    this session's: one latency run per CPU, a new run on the same CPU replacing its old one."""
    import json
    import subprocess
    import sys
    results, work = tmp_path / 'results', tmp_path / 'work'
    results.mkdir()
    work.mkdir()

    def lat(machine, ms, date):
        rows = {f'keep{k}_{p}': dict(keep=k, precision=p, batch1_median_ms=ms * k / 54 / (2 if p == 'int8' else 1),
                                     batch64_images_per_s=300.0, top1=90.0, test_images=10000)
                for k in (54, 36) for p in ('fp32', 'int8')}
        return dict(final=True, rows=rows, threads=2, warmup=1, iters=300, iters64=30, machine=machine, busy='idle.',
                    onnxruntime='1', torch='2', date=date, command='python benchmarks/depth.py --phase latency')
    cell = dict(model='r56', strategy='full', removed=0, kept=27, blocks_total=27, params=855770, top1=93.1,
                test_images=10000, command='python benchmarks/depth.py --phase accuracy', date='2026-12-01 00:00:00')
    (results / 'depth.json').write_text(json.dumps(dict(
        cells=[cell], greedy_orders=[], verify=[], meta=dict(runs=[]),
        latencies=[lat('CPU A', 6.0, 'old A'), lat('CPU B', 5.0, 'old B')])))
    (work / 'latency.json').write_text(json.dumps(lat('CPU B', 4.0, 'new B')))
    done = subprocess.run([sys.executable, str(repo_root / 'benchmarks' / 'depth.py'), '--phase', 'report',
                           '--work', str(work), '--results', str(results)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads((results / 'depth.json').read_text())
    assert [(r['machine'], r['date']) for r in record['latencies']] == [('CPU A', 'old A'), ('CPU B', 'new B')]
    assert [c['top1'] for c in record['cells']] == [93.1]  # the committed cell survives a report from an empty WORK
    md = (results / 'depth.md').read_text()
    assert '### CPU A' in md and '### CPU B' in md and 'Measured new B' in md and 'old B' not in md
    assert '| 36 | int8 | 1.33 | 3.00x |' in md  # against CPU B's own full-depth fp32 graph (4.00 ms)

    # one run timing the export's graphs at 1 and 2 threads writes a list: each thread count is its own table,
    # beside (not over) CPU B's run on graphs this script built; a rerun replaces only its own kind
    def export_run(threads, ms, date):
        return dict(lat('CPU B', ms, date), threads=threads, graphs='export', thread_counts=[1, 2])
    (work / 'latency.json').write_text(json.dumps([export_run(1, 3.0, 'x1'), export_run(2, 2.0, 'x2')]))
    done = subprocess.run([sys.executable, str(repo_root / 'benchmarks' / 'depth.py'), '--phase', 'report',
                           '--work', str(work), '--results', str(results)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads((results / 'depth.json').read_text())
    assert [(r['machine'], r['threads'], r['date']) for r in record['latencies']] == [
        ('CPU A', 2, 'old A'), ('CPU B', 2, 'new B'), ('CPU B', 1, 'x1'), ('CPU B', 2, 'x2')]
    md = (results / 'depth.md').read_text()
    assert '### CPU B: 1 intra-op thread(s), the graphs `sdzoo export' in md
    assert '### CPU B: 2 intra-op thread(s), greedy + BN graphs built by benchmarks/depth.py (not healed)' in md
    assert 'all 8 sessions (4 graphs x 1, 2 intra-op thread(s))' in md
    assert '| 36 | int8 | 1.00 | 3.00x |' in md  # the 1-thread table against its own 1-thread fp32 (3.00 ms)

    # the same graphs timed as served (--runs-per-turn 20: each session's calls in a row) sit beside the
    # call-by-call tables, said in their titles, and do not replace them
    (work / 'latency.json').write_text(json.dumps([dict(export_run(t, ms, 'w'), runs_per_turn=20)
                                                   for t, ms in ((1, 2.5), (2, 1.5))]))
    done = subprocess.run([sys.executable, str(repo_root / 'benchmarks' / 'depth.py'), '--phase', 'report',
                           '--work', str(work), '--results', str(results)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads((results / 'depth.json').read_text())
    assert [(r['threads'], r['date'], r.get('runs_per_turn', 1)) for r in record['latencies'][2:]] == [
        (1, 'x1', 1), (2, 'x2', 1), (1, 'w', 20), (2, 'w', 20)]
    md = (results / 'depth.md').read_text()
    assert md.count('20 consecutive runs per graph per turn') == 2 and '20 consecutive run(s) of a session per turn' in md
    assert '1 consecutive run(s) of a session per turn' in md


def test_depth_latency_reads_the_entries_sdzoo_export_wrote(repo_root, tmp_path):
    """benchmarks/depth.py --phase latency --repository DIR times what `sdzoo export [--keep-blocks N] [--int8]`
    wrote: blocks kept, precision and both gates come from each graph's sdzoo metadata, rows are keyed by entry (two
    strategies may keep as many blocks), exactly one full-depth fp32 entry is the base, and an empty directory says
    what to run."""
    import importlib.util
    import json
    import sys
    import onnx
    from onnx import TensorProto, helper

    def entry(name, **meta):
        node = helper.make_node('Identity', ['x'], ['y'])
        graph = helper.make_graph([node], 'g', [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1])])
        model = helper.make_model(graph)
        for k, v in meta.items():
            model.metadata_props.add(key=k, value=v)
        (tmp_path / 'repo' / name / '1').mkdir(parents=True)
        onnx.save(model, str(tmp_path / 'repo' / name / '1' / 'model.onnx'))

    gate = dict(top1_fp32=90.3, top1_int8=90.2, images=5000)
    depth = dict(kept_blocks=['b0', 'b2'], strategy='greedy', heal=dict(steps=300),
                 accuracy=dict(top1_fp32=91.0, top1_int8=90.5, images=4500, max_drop_points=0.5))
    entry('net')
    entry('net_int8', **{'sdzoo.precision': 'int8', 'sdzoo.accuracy': json.dumps(gate)})
    entry('net_k2', **{'sdzoo.precision': 'fp32', 'sdzoo.depth': json.dumps(depth)})
    sys.path.insert(0, str(repo_root / 'benchmarks'))
    try:
        spec = importlib.util.spec_from_file_location('bench_depth', repo_root / 'benchmarks' / 'depth.py')
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(repo_root / 'benchmarks'))
    entry('net_k2b', **{'sdzoo.precision': 'fp32', 'sdzoo.depth': json.dumps(dict(depth, strategy='survival'))})
    files = bench.repository_graphs(tmp_path / 'repo', n_total=3)
    assert list(files) == ['net', 'net_int8', 'net_k2', 'net_k2b']  # two 2-block graphs, told apart by entry
    assert [(r['keep'], r['precision']) for r in files.values()] == [(3, 'fp32'), (3, 'int8'), (2, 'fp32'), (2, 'fp32')]
    assert files['net_int8']['gate']['top1_int8'] == 90.2 and 'gate' not in files['net']
    assert files['net_k2']['depth_gate']['images'] == 4500 and files['net_k2b']['strategy'] == 'survival'
    entry('net_again')  # a second full-depth fp32 graph: which one are the speed-ups against?
    with pytest.raises(SystemExit, match='one full-depth fp32 entry, found 2 \\(net, net_again\\)'):
        bench.repository_graphs(tmp_path / 'repo', n_total=3)
    with pytest.raises(SystemExit, match='no \\*/1/model.onnx entries'):
        bench.repository_graphs(tmp_path / 'empty', n_total=3)
