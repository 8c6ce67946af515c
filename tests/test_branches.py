"""Building pretrained weights with other survival settings than they were trained with keeps the trained
test-time network (sdzoo.models.branches.rebase_survival): with the paper's scaling, `drop_path_rate=0` used to
drop the trained p_l instead of moving it into the weights (sd_resnet20.sd_cifar10: 88.0 -> 84.0% on 200 test
images before any fine-tuning step)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

SETTINGS = [dict(drop_path_rate=0.0), dict(drop_path_rate=0.2), dict(sd_scaling='inverted'),
            dict(drop_path_rate=0.3, sd_schedule='uniform')]


@pytest.fixture(scope='module')
def test_images(cifar_root):
    from sdzoo.data import load_splits
    splits = load_splits(str(cifar_root), (3, 32, 32), val_size=0, only='test')
    idx = np.arange(0, len(splits.test), len(splits.test) // 200)[:200]  # every class, not the first one only
    sub = splits.test.subset(idx)
    assert sub.images is not None  # CIFAR-10 test images, decoded uint8 NHWC
    return sub.images.permute(0, 3, 1, 2).float() / 255.0, sub.labels


def _normalized(model, x):
    from timm.data import resolve_data_config
    cfg = resolve_data_config(model=model)
    mean, std = torch.tensor(cfg['mean']).view(1, 3, 1, 1), torch.tensor(cfg['std']).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize('name', ['sd_resnet20', 'sd_vit_lite_patch4_32'])
@pytest.mark.parametrize('settings', SETTINGS, ids=lambda s: ','.join(f'{k}={v}' for k, v in s.items()))
def test_other_survival_settings_keep_the_trained_test_time_network(name, settings, test_images):
    import timm
    x, y = test_images
    trained = timm.create_model(name, pretrained=True).eval()
    rebuilt = timm.create_model(name, pretrained=True, **settings).eval()
    assert getattr(trained, 'sd_rebased_from', None) is None
    assert rebuilt.sd_rebased_from['drop_path_rate'] == trained.sd_drop_path_rate
    xin = _normalized(trained, x)
    with torch.no_grad():
        a, b = trained(xin), rebuilt(xin)
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert (a.argmax(1) == y).float().mean() > 0.8  # the real trained network, on real images


def test_trained_settings_load_the_file_untouched():
    import timm
    from safetensors.torch import load_file
    from sdzoo.hub.weights import weights_dirs
    model = timm.create_model('sd_resnet20', pretrained=True)
    folder = next(d / 'sd_resnet20.sd_cifar10' for d in weights_dirs() if (d / 'sd_resnet20.sd_cifar10').is_dir())
    state = load_file(str(folder / 'model.safetensors'))
    for k, v in model.state_dict().items():
        if k in state:
            assert torch.equal(v, state[k]), k


def test_no_sd_weights_equal_the_folded_trained_weights():
    import timm
    from sdzoo.export.fold import fold
    folded = fold(timm.create_model('sd_resnet20', pretrained=True).eval())
    no_sd = timm.create_model('sd_resnet20', pretrained=True, drop_path_rate=0).eval()
    for (k, v), w in zip(folded.state_dict().items(), no_sd.state_dict().values()):
        torch.testing.assert_close(w, v, msg=k)


def test_a_checkpoint_with_its_model_args_is_rebased_too(tmp_path, test_images):
    from sdzoo.hub.weights import weights_dirs
    from sdzoo.models.load import create_model
    src = next(d / 'sd_resnet20.sd_cifar10' for d in weights_dirs() if (d / 'sd_resnet20.sd_cifar10').is_dir())
    shutil.copy(src / 'model.safetensors', tmp_path / 'model.safetensors')
    shutil.copy(src / 'config.json', tmp_path / 'config.json')
    x, _ = test_images
    trained = create_model('sd_resnet20', checkpoint=tmp_path / 'model.safetensors')
    no_sd = create_model('sd_resnet20', checkpoint=tmp_path / 'model.safetensors', drop_path_rate=0.0)
    xin = _normalized(trained, x)
    with torch.no_grad():
        torch.testing.assert_close(no_sd(xin), trained(xin), atol=1e-4, rtol=1e-4)
    assert no_sd.sd_rebased_from == {'drop_path_rate': 0.5, 'sd_schedule': 'linear', 'sd_scaling': 'paper'}
