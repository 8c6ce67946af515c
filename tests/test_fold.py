"""sdzoo.fold: survival factors folded into the weights, parity with the unfolded eval model."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

import sdzoo
from sdzoo.export import fold_batchnorm, is_folded, timm_equivalent, to_timm
from model_support import randomize_norms  # noqa: E402


_randomize_norms = randomize_norms


FAMILIES = [
    ('sd_resnet20', {}, (2, 3, 32, 32)),
    ('sd_vit_lite_patch4_32', dict(depth=3), (2, 3, 32, 32)),
    ('sd_vit_lite_patch4_32', dict(depth=2, init_values=0.5), (2, 3, 32, 32)),  # LayerScale gamma
    ('sd_resnet18', dict(num_classes=10), (2, 3, 64, 64)),
    ('sd_resnet50', dict(num_classes=10, layers=(1, 1, 1, 1)), (2, 3, 64, 64)),  # bottleneck: bn3
    ('sd_vit_tiny_patch16_224', dict(num_classes=10, depth=2), (1, 3, 224, 224)),
]


@pytest.mark.parametrize('name,kwargs,shape', FAMILIES, ids=[f[0] + ('_ls' if 'init_values' in f[1] else '')
                                                               for f in FAMILIES])
def test_fold_matches_unfolded_eval(name, kwargs, shape):
    torch.manual_seed(0)
    model = _randomize_norms(timm.create_model(name, drop_path_rate=0.5, **kwargs)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(*shape)
    folded = sdzoo.fold(model)

    assert folded is not model and not folded.training
    assert is_folded(folded) and not is_folded(model)
    assert all(u.eval_scale == 1.0 for u in sdzoo.sd_modules(folded))
    # the input model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        ref, out = model(x), folded(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    # the factors really moved into the weights: un-marking the units changes the output
    changed = [k for k, v in folded.state_dict().items() if not torch.equal(before[k], v)]
    assert changed
    for u in sdzoo.sd_modules(folded):
        u.folded = False
    with torch.no_grad():
        assert not torch.allclose(folded(x), ref, rtol=1e-3, atol=1e-3)


def test_fold_inverted_scaling_is_a_marked_copy():
    model = timm.create_model('sd_resnet20', sd_scaling='inverted').eval()
    folded = sdzoo.fold(model)
    assert folded is not model and is_folded(folded)
    for (k, a), b in zip(model.state_dict().items(), folded.state_dict().values()):
        assert torch.equal(a, b), k
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))


def test_fold_inplace_returns_same_model():
    model = timm.create_model('sd_resnet20').eval()
    assert sdzoo.fold(model, inplace=True) is model
    assert is_folded(model)


def test_fold_errors():
    model = timm.create_model('sd_resnet20')
    with pytest.raises(ValueError, match='eval-mode'):
        sdzoo.fold(model.train())
    folded = sdzoo.fold(model.eval())
    with pytest.raises(ValueError, match='already folded'):
        sdzoo.fold(folded)
    with pytest.raises(ValueError, match='no StochasticDepth'):
        sdzoo.fold(nn.Sequential(nn.Linear(2, 2)).eval())
    # a folded model cannot be re-scheduled either (its p_l live in the weights)
    with pytest.raises(ValueError, match='folded'):
        sdzoo.apply_stochastic_depth(folded, 0.2)


@pytest.mark.parametrize('name,kwargs,shape', [
    ('sd_resnet18', dict(num_classes=10), (2, 3, 64, 64)),
    ('sd_resnet50', dict(num_classes=10), (1, 3, 64, 64)),
    ('sd_vit_tiny_patch16_224', dict(num_classes=10), (1, 3, 224, 224)),
])
def test_folded_weights_load_into_vanilla_timm(name, kwargs, shape):
    torch.manual_seed(0)
    model = _randomize_norms(timm.create_model(name, drop_path_rate=0.3, **kwargs)).eval()
    folded = sdzoo.fold(model)
    plain_name = timm_equivalent(name)
    assert plain_name == name[3:]
    plain = timm.create_model(plain_name, pretrained=False, num_classes=10).eval()
    plain.load_state_dict(folded.state_dict(), strict=True)
    assert not sdzoo.sd_modules(plain)
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(plain(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
        torch.testing.assert_close(to_timm(folded)(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    with pytest.raises(ValueError, match='folded'):
        to_timm(model)


def test_to_timm_needs_a_timm_counterpart():
    folded = sdzoo.fold(timm.create_model('sd_resnet20').eval())
    assert timm_equivalent('sd_resnet20') is None
    with pytest.raises(ValueError, match='no vanilla timm'):
        to_timm(folded)


def test_fold_batchnorm_fuses_every_bn():
    torch.manual_seed(0)
    model = _randomize_norms(timm.create_model('sd_resnet18', num_classes=10)).eval()
    fused = fold_batchnorm(sdzoo.fold(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(fused(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    with pytest.raises(ValueError, match='eval-mode'):
        fold_batchnorm(timm.create_model('sd_resnet20').train())
