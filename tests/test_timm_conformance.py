"""What timm's own model tests expect of every sd_* model (benchmarks/timm_conformance.py runs those),
and the behaviour behind its documented exclusions."""
from __future__ import annotations

from typing import Dict, List, Set

import pytest
import timm
import torch

import sdzoo  # noqa: F401  (registers the models)
from sdzoo.layers import StochasticDepth, sd_modules
from sdzoo.models.resnet_cifar import CifarBasicBlock

FAMILIES = [('sd_resnet20', 32), ('sd_resnet18', 64), ('sd_vit_lite_patch4_32', 32)]


def _branch_params(model: torch.nn.Module) -> Dict[StochasticDepth, Set[str]]:
    """Parameter names of the residual branch each SD unit gates (shortcut/downsample excluded)."""
    owners: Dict[StochasticDepth, Set[str]] = {}
    for name, module in model.named_modules():
        prefix = f'{name}.' if name else ''
        if isinstance(getattr(module, 'drop_path1', None), StochasticDepth):  # ViT block: attention, MLP
            for unit, parts in ((module.drop_path1, ('norm1', 'attn', 'ls1')), (module.drop_path2, ('norm2', 'mlp', 'ls2'))):
                owners[unit] = {prefix + n for n, _ in module.named_parameters() if n.split('.')[0] in parts}
        elif isinstance(getattr(module, 'drop_path', None), StochasticDepth):  # ResNet block
            owners[module.drop_path] = {prefix + n for n, _ in module.named_parameters()
                                        if n.split('.')[0] not in ('downsample', 'shortcut')}
    assert set(owners) == set(sd_modules(model)), 'every SD unit gates one branch'
    return owners


def _train_step(model: torch.nn.Module, size: int) -> None:
    model.train()
    out = model(torch.randn(2, 3, size, size))
    out.mean().backward()  # what timm's test_model_backward does


@pytest.mark.parametrize('name,size', FAMILIES)
def test_every_parameter_gets_a_gradient_without_drop_path(name: str, size: int):
    torch.manual_seed(0)
    model = timm.create_model(name, drop_path_rate=0., num_classes=42)
    _train_step(model, size)
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f'no gradient for {missing[:5]}'
    # sd_resnet18 is timm's ResNet: zero_init_last leaves its branch interiors a zero gradient at step 1
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    if name != 'sd_resnet18':
        assert not zero, f'all-zero gradient for {zero[:5]}'
    assert all(u.last_kept is None for u in sd_modules(model)), 'with p_l = 1 no coin is drawn'


@pytest.mark.parametrize('name,size', FAMILIES)
def test_dropped_blocks_get_no_gradient_by_design(name: str, size: int):
    """The default drop_path_rate 0.5: a train step leaves exactly the dropped branches without grads."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=42, sd_seed=1)
    _train_step(model, size)
    owners = _branch_params(model)
    dropped: List[str] = sorted(n for u, names in owners.items() if u.last_kept is False for n in names)
    assert dropped, 'this seed drops at least one block'
    assert any(u.last_kept for u in owners), 'and keeps at least one'
    no_grad = sorted(n for n, p in model.named_parameters() if p.grad is None)
    assert no_grad == dropped


def test_sd_resnet1202_is_finite_in_eval_right_after_creation():
    """600 residual branches with BN at its default running stats overflow fp32 with the paper's init;
    sd_resnet1202 starts each branch at zero (timm's zero_init_last) instead."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    model = timm.create_model('sd_resnet1202').eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
        paper_init = timm.create_model('sd_resnet1202', zero_init_last=False).eval()
        assert not torch.isfinite(paper_init(x)).all(), 'the paper init overflows (why 1202 differs)'


def _last_bn_weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([m.bn2.weight.detach() for m in model.modules() if isinstance(m, CifarBasicBlock)])


@pytest.mark.parametrize('name', ['sd_resnet20', 'sd_resnet56', 'sd_resnet110'])
def test_paper_networks_keep_the_paper_init(name: str):
    """The published recipe's networks start as the paper's code does: every BN weight 1."""
    assert (_last_bn_weights(timm.create_model(name)) == 1).all()
    assert (_last_bn_weights(timm.create_model(name, zero_init_last=True)) == 0).all()


def test_sd_resnet1202_defaults_to_zero_init_last():
    model = timm.create_model('sd_resnet1202', device='meta')  # no memory, init runs on meta
    assert model.conv1.weight.device.type == 'meta'
    real = timm.create_model('sd_resnet1202')
    assert (_last_bn_weights(real) == 0).all()
    assert (_last_bn_weights(timm.create_model('sd_resnet1202', zero_init_last=False)) == 1).all()


@pytest.mark.parametrize('name', ['sd_resnet20', 'sd_resnet18', 'sd_vit_lite_patch4_32'])
def test_create_model_device_and_dtype_reach_every_tensor(name: str):
    """timm's create_model(device=, dtype=) (timm >= 1.0.20) builds directly on the target."""
    model = timm.create_model(name, device='meta')
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {'meta'}
    model = timm.create_model(name, dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    with pytest.raises(TypeError):
        timm.create_model(name, not_a_model_arg=1)
    assert timm.create_model(name, in_chans=1, device='meta').in_chans == 1  # timm's cfg test reads it


def test_cifar_reset_classifier_keeps_pooling_device_and_dtype():
    model = timm.create_model('sd_resnet20', global_pool='max', dtype=torch.float64)
    model.reset_classifier(5)
    assert model.global_pool.pool_type == 'max'
    assert model.fc.weight.dtype == torch.float64 and model.fc.out_features == 5
    out = model(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    assert out.shape == (2, 5)
    model.reset_classifier(0, '')
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).shape == (1, 64, 8, 8)


# --------------------------------------------------------------------------------------------
# benchmarks/timm_conformance.py: the exclusion list and the summary it prints
# --------------------------------------------------------------------------------------------

def _conformance_script():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / 'benchmarks' / 'timm_conformance.py'
    spec = importlib.util.spec_from_file_location('timm_conformance', path)
    module = importlib.util.module_from_spec(spec)
    import sys
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


def test_conformance_exclusions_name_their_reason():
    tc = _conformance_script()
    assert 'drop_path_rate=0' in tc.exclusion_reason('test_model_backward', 'sd_resnet20')
    assert 'by design' in tc.exclusion_reason('test_prune_intermediate_layers_contract', 'sd_resnet18')
    assert 'TorchScript' in tc.exclusion_reason('test_model_forward_torchscript', 'sd_vit_lite_patch4_32')
    assert 'non-standard' in tc.exclusion_reason('test_model_default_cfgs', 'sd_vit_tiny_patch16_224.augreg_in21k_ft_in1k')
    for test, model in [('test_model_forward', 'sd_resnet1202'), ('test_model_default_cfgs', 'sd_resnet20.sd_cifar10'),
                        ('test_model_forward_fx', 'sd_vit_base_patch16_224'),
                        ('test_model_load_pretrained', 'sd_resnet20.sd_cifar10'),  # sdzoo's own weights, offline
                        ('test_model_load_pretrained', 'sd_resnet50.tv_in1k')]:
        assert tc.exclusion_reason(test, model, include_hub=True) is None, (test, model)


def test_conformance_summary_counts_each_outcome():
    tc = _conformance_script()
    outcomes = {
        'a': dict(test='test_model_forward', model='sd_resnet20', outcome='passed'),
        'b': dict(test='test_model_forward', model='sd_resnet1202', outcome='failed', message='AssertionError: NaN'),
        'c': dict(test='test_model_backward', model='sd_resnet20', outcome='excluded', message='excluded: by design'),
        'd': dict(test='test_model_backward', model='sd_resnet32'),  # never reported: counts as failed
    }
    rows = {r['test']: r for r in tc.summarize(outcomes)}
    assert rows['test_model_forward'] == dict(test='test_model_forward', passed=1, failed=1, excluded=0, skipped=0)
    assert rows['test_model_backward'] == dict(test='test_model_backward', passed=0, failed=1, excluded=1, skipped=0)
    text = tc.render(outcomes, 'header')
    assert '| **total** | **1** | **2** | **1** | **0** |' in text
    assert '`test_model_forward[sd_resnet1202]`: AssertionError: NaN' in text and '- 1: by design' in text


def test_conformance_refuses_a_source_without_timm_tests(tmp_path, capsys):
    tc = _conformance_script()
    (tmp_path / 'src').mkdir()
    assert tc.main([str(tmp_path / 'src'), '--out', '']) == 2
    assert 'is not a timm source checkout' in capsys.readouterr().err


@pytest.mark.parametrize('name,size', FAMILIES)
def test_fx_feature_extraction_traces_every_block(name: str, size: int):
    """timm's fx feature extraction (its test_model_forward_fx) traces the model in train and eval mode.
    A per-step coin cannot be traced: the train-mode graph runs every block (as the eval graph does)
    instead of failing or baking one step's coin in, and the eval graph computes what the model does."""
    from timm.models._features_fx import create_feature_extractor, get_graph_node_names
    torch.manual_seed(0)
    model = timm.create_model(name, drop_path_rate=0.5, num_classes=10)
    train_nodes, eval_nodes = get_graph_node_names(model)
    weights = lambda nodes: [n for n in nodes if n.endswith(('conv1', 'conv2', 'fc1', 'fc2', 'qkv'))]  # noqa: E731
    assert weights(train_nodes) and weights(train_nodes) == weights(eval_nodes)
    x = torch.randn(2, 3, size, size)
    fx = create_feature_extractor(model.eval(), return_nodes=[eval_nodes[-1]])
    with torch.no_grad():
        torch.testing.assert_close(fx(x)[eval_nodes[-1]], model(x))
