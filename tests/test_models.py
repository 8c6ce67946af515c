"""The sd_* models: parameter counts, timm integration, state-dict compatibility, static graphs."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import sdzoo  # noqa: F401  (registers the models)
from sdzoo.layers import apply_stochastic_depth, sd_blocks, sd_modules
from sdzoo.models import CifarResNet, SDResNet, SDVisionTransformer

CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)


def cifar_resnet_params(depth: int, num_classes: int = 10, widths=(16, 32, 64)) -> int:
    """Parameters of the paper's 6n+2 CIFAR ResNet: 3x3 convs without bias, BN (gamma, beta),
    parameter-free option-A shortcuts, linear classifier."""
    n = (depth - 2) // 6
    total = 3 * widths[0] * 9 + 2 * widths[0]  # stem conv + BN
    c_in = widths[0]
    for w in widths:
        for j in range(n):
            cin = c_in if j == 0 else w
            total += cin * w * 9 + 2 * w + w * w * 9 + 2 * w
        c_in = w
    return total + widths[-1] * num_classes + num_classes


def vit_params(img: int, patch: int, dim: int, depth: int, mlp_ratio: float, num_classes: int) -> int:
    """Parameters of a class-token ViT with qkv bias and a final LayerNorm (timm's layout)."""
    hidden = int(dim * mlp_ratio)
    tokens = (img // patch) ** 2 + 1
    embed = 3 * patch * patch * dim + dim + dim + tokens * dim  # patch proj, cls token, pos embed
    block = 2 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + 2 * dim \
        + (dim * hidden + hidden) + (hidden * dim + dim)
    return embed + depth * block + 2 * dim + dim * num_classes + num_classes


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# parameter counts
# --------------------------------------------------------------------------------------------

def test_cifar_resnet_parameter_counts_match_the_architecture():
    assert 0.26e6 < cifar_resnet_params(20) < 0.28e6    # the papers' "0.27M"
    assert 1.65e6 < cifar_resnet_params(110) < 1.75e6   # "1.7M"
    assert 19.3e6 < cifar_resnet_params(1202) < 19.5e6  # "19.4M"
    for depth in CIFAR_DEPTHS:
        with torch.device('meta'):  # counting only: skip the weight init
            model = timm.create_model(f'sd_resnet{depth}')
        assert n_params(model) == cifar_resnet_params(depth), depth
    with torch.device('meta'):
        assert n_params(timm.create_model('sd_resnet110', num_classes=100)) == cifar_resnet_params(110, 100)


@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152])
def test_imagenet_resnet_counts_equal_timm(depth: int):
    with torch.device('meta'):
        assert n_params(timm.create_model(f'sd_resnet{depth}')) == n_params(timm.create_model(f'resnet{depth}'))


@pytest.mark.parametrize('size', ['tiny', 'small', 'base'])
def test_vit_counts_equal_timm(size: str):
    with torch.device('meta'):
        ours = timm.create_model(f'sd_vit_{size}_patch16_224')
        theirs = timm.create_model(f'vit_{size}_patch16_224')
    assert n_params(ours) == n_params(theirs)
    dim = dict(tiny=192, small=384, base=768)[size]
    assert n_params(ours) == vit_params(224, 16, dim, 12, 4.0, 1000)


def test_vit_lite_count():
    with torch.device('meta'):
        model = timm.create_model('sd_vit_lite_patch4_32')
    assert n_params(model) == vit_params(32, 4, 256, 7, 2.0, 10)


# --------------------------------------------------------------------------------------------
# every model creates and runs with the right shapes
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('depth', CIFAR_DEPTHS)
def test_cifar_resnet_forward_shapes(depth: int):
    model = timm.create_model(f'sd_resnet{depth}')
    assert isinstance(model, CifarResNet)
    assert len(sd_blocks(model)) == (depth - 2) // 2  # every 2-conv block is droppable
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == (3, 32, 32) and cfg['num_classes'] == 10
    x = torch.randn(1 if depth == 1202 else 2, 3, 32, 32)
    with torch.no_grad():
        assert model.eval()(x).shape == (x.shape[0], 10)
        if depth != 1202:
            assert model.train()(x).shape == (2, 10)
            assert model.forward_features(x).shape == (2, 64, 8, 8)
            assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 64)


@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152])
def test_imagenet_resnet_forward_tiny_input(depth: int):
    model = timm.create_model(f'sd_resnet{depth}')
    assert isinstance(model, SDResNet)
    assert len(sd_blocks(model)) == dict(zip((18, 34, 50, 101, 152), (8, 16, 16, 33, 50)))[depth]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 1000)
    if depth == 18:
        with torch.no_grad():
            assert model.train()(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


@pytest.mark.parametrize('name,size', [
    ('sd_vit_tiny_patch16_224', 224), ('sd_vit_small_patch16_224', 224), ('sd_vit_base_patch16_224', None),
    ('sd_vit_lite_patch4_32', 32)])
def test_vit_create_and_forward(name: str, size):
    model = timm.create_model(name)
    assert isinstance(model, SDVisionTransformer)
    groups = sd_blocks(model)
    assert len(groups) == len(model.blocks) and all(len(g) == 2 for g in groups)
    assert [g[0].survival_prob for g in groups] == [g[1].survival_prob for g in groups]
    if size is None:  # ViT-B: created above, not run (too slow for the suite)
        return
    n_cls = model.num_classes
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, size, size)).shape == (1, n_cls)
        if size == 32:
            assert model.train()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_features_only():
    model = timm.create_model('sd_resnet20', features_only=True)
    feats = model(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(2, 16, 32, 32), (2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8)]
    assert model.feature_info.reduction() == [1, 1, 2, 4]
    model = timm.create_model('sd_resnet20', features_only=True, out_indices=(1, 3))
    assert [f.shape[1] for f in model(torch.randn(2, 3, 32, 32))] == [16, 64]


def test_cifar_forward_intermediates_and_pruning_follow_timm():
    """timm's feature API (forward_intermediates / prune_intermediate_layers / reset_classifier(0, ''))
    behaves as on timm's own ResNet."""
    model = timm.create_model('sd_resnet20').eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert [tuple(f.shape) for f in feats] == [(2, 16, 32, 32), (2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8)]
        assert torch.equal(feats[2], model.forward_intermediates(x, indices=[2], intermediates_only=True)[0])
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [f.shape[1] for f in last2] == [32, 64]
        with pytest.raises(ValueError, match='output_fmt'):
            model.forward_intermediates(x, output_fmt='NHWC')
        assert model.prune_intermediate_layers([2]) == [2]
        assert model(x).shape == (2, 32, 16, 16)  # stage 3 and the head are gone, features come out
        assert len(model.layer3) == 0 and model.num_features == 32
        model = timm.create_model('sd_resnet20').eval()
        model.reset_classifier(0, '')
        assert model(x).shape == (2, 64, 8, 8)
        model.reset_classifier(0)  # keeps the current (no) pooling, as timm's ResNet
        assert model(x).shape == (2, 64, 8, 8)
        model.reset_classifier(0, 'avg')
        assert model(x).shape == (2, 64)


# --------------------------------------------------------------------------------------------
# timm's create_model arguments reach the blocks
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name,num_blocks', [
    ('sd_resnet110', 54), ('sd_resnet18', 8), ('sd_vit_tiny_patch16_224', 12), ('sd_vit_lite_patch4_32', 7)])
def test_drop_path_rate_and_overrides_reach_the_blocks(name: str, num_blocks: int):
    with torch.device('meta'):
        default = timm.create_model(name)
        model = timm.create_model(name, drop_path_rate=0.2)
        uni = timm.create_model(name, drop_path_rate=0.3, sd_schedule='uniform', sd_mode='row',
                                sd_scaling='inverted')
        explicit = [1.0 - 0.01 * i for i in range(num_blocks)]
        exp = timm.create_model(name, sd_schedule=explicit)
    linear = lambda rate: [1 - l / num_blocks * rate for l in range(1, num_blocks + 1)]  # noqa: E731
    per_unit = len(sd_blocks(model)[0])  # ViT: attention and MLP units share their block's p_l
    probs = lambda m: [u.survival_prob for g in sd_blocks(m) for u in g]  # noqa: E731
    per_block = lambda ps: [p for p in ps for _ in range(per_unit)]  # noqa: E731
    assert probs(default) == pytest.approx(per_block(linear(0.5)))  # the paper's p_L = 0.5
    assert probs(model) == pytest.approx(per_block(linear(0.2)))
    assert model.sd_drop_path_rate == 0.2 and model.survival_probs == pytest.approx(linear(0.2))
    assert probs(uni) == pytest.approx([0.7] * num_blocks * per_unit)
    assert {(u.mode, u.scaling) for u in sd_modules(uni)} == {('row', 'inverted')}
    assert {(u.mode, u.scaling) for u in sd_modules(model)} == {('batch', 'paper')}
    assert probs(exp) == pytest.approx(per_block(explicit))


@pytest.mark.parametrize('kwargs,match', [
    (dict(drop_path_rate=1.0), 'drop_path_rate'),
    (dict(drop_path_rate=-0.1), 'drop_path_rate'),
    (dict(drop_path_rate=float('nan')), 'drop_path_rate'),
    (dict(sd_mode='fast'), "mode 'fast'"),
    (dict(sd_scaling='timm'), "scaling 'timm'"),
    (dict(sd_schedule='cosine'), "schedule 'cosine'"),
    (dict(sd_schedule=[0.9] * 3), '3 entries but the network has 9'),
    (dict(sd_schedule=[0.9] * 8 + [0.0]), 'block 9'),
])
def test_bad_model_arguments(kwargs, match: str):
    with pytest.raises(ValueError, match=match):
        timm.create_model('sd_resnet20', **kwargs)


def test_bad_cifar_depth():
    with pytest.raises(ValueError, match='6n\\+2'):
        CifarResNet(depth=21)


# --------------------------------------------------------------------------------------------
# compute skipping in the ImageNet ResNet and ViT blocks
# --------------------------------------------------------------------------------------------

def _count_calls(modules):
    counts = [0] * len(modules)
    hooks = [m.register_forward_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
             for i, m in enumerate(modules)]
    return counts, hooks


def test_imagenet_resnet_skips_dropped_branches():
    model = timm.create_model('sd_resnet18', drop_path_rate=0.5, sd_seed=2).train()
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
    convs, h1 = _count_calls([b.conv1 for b in blocks])
    downs, h2 = _count_calls([b.downsample for b in blocks if b.downsample is not None])
    seen = set()
    for _ in range(4):
        convs[:] = [0] * len(convs)
        model(torch.randn(2, 3, 64, 64)).sum().backward()
        kept = [b.drop_path.last_kept for b in blocks]
        assert convs == [int(k) for k in kept]
        seen.update(kept)
    assert downs == [4, 4, 4]  # projection shortcuts run whether or not the branch does
    assert seen == {True, False}
    for h in h1 + h2:
        h.remove()


def test_vit_skips_dropped_attention_and_mlp():
    model = timm.create_model('sd_vit_lite_patch4_32', drop_path_rate=0.5, sd_seed=5).train()
    qkv, h1 = _count_calls([b.attn.qkv for b in model.blocks])
    fc1, h2 = _count_calls([b.mlp.fc1 for b in model.blocks])
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    attn_kept = [b.drop_path1.last_kept for b in model.blocks]
    mlp_kept = [b.drop_path2.last_kept for b in model.blocks]
    assert qkv == [int(k) for k in attn_kept] and fc1 == [int(k) for k in mlp_kept]
    assert 0 < sum(attn_kept) + sum(mlp_kept) < 14
    for b, ka, km in zip(model.blocks, attn_kept, mlp_kept):
        assert (b.attn.qkv.weight.grad is not None) == ka and (b.mlp.fc1.weight.grad is not None) == km
    for h in h1 + h2:
        h.remove()


def test_row_mode_trains_in_every_family():
    for name, size in (('sd_resnet20', 32), ('sd_resnet18', 64), ('sd_vit_lite_patch4_32', 32)):
        model = timm.create_model(name, sd_mode='row', sd_scaling='inverted').train()
        out = model(torch.randn(4, 3, size, size))
        out.sum().backward()
        assert torch.isfinite(out).all()


@pytest.mark.parametrize('name', ['sd_resnet20', 'sd_vit_lite_patch4_32'])
def test_grad_checkpointing_replays_the_coins(name: str):
    """Activation checkpointing recomputes blocks in backward; the recomputation must reuse the
    forward's drop decisions (same graph, same gradients as without checkpointing)."""
    torch.manual_seed(0)
    plain = timm.create_model(name, drop_path_rate=0.5, sd_seed=4).train()
    ckpt = copy.deepcopy(plain)  # same weights, same coin state
    ckpt.set_grad_checkpointing(True)
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 3, 5, 9])
    dropped = 0
    for _ in range(3):
        for m in (plain, ckpt):
            m.zero_grad()
            F.cross_entropy(m(x), y).backward()
        kept = [u.last_kept for u in sd_modules(plain)]
        assert kept == [u.last_kept for u in sd_modules(ckpt)]
        dropped += kept.count(False)
        for (n, a), b in zip(plain.named_parameters(), ckpt.parameters()):
            assert (a.grad is None) == (b.grad is None), n
            if a.grad is not None:
                torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=n)
    assert dropped > 0


@pytest.mark.parametrize('name', ['sd_resnet20', 'sd_vit_lite_patch4_32'])
def test_grad_checkpointing_with_several_forwards_before_one_backward(name: str):
    """Two views (and the same batch twice) through the model, one backward: each recomputed block
    must replay the coin of the forward it belongs to (this raised CheckpointError)."""
    torch.manual_seed(0)
    plain = timm.create_model(name, drop_path_rate=0.5, sd_seed=7).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 3, 5, 9])
    differed = 0
    for views in ((x1, x2), (x1, x2, x1), (x2, x2)):
        for m in (plain, ckpt):
            m.zero_grad()
            kept = []
            loss = 0
            for v in views:
                loss = loss + F.cross_entropy(m(v), y)
                kept.append([u.last_kept for u in sd_modules(m)])
            loss.backward()
        differed += any(a != kept[0] for a in kept[1:])
        for (n, a), b in zip(plain.named_parameters(), ckpt.parameters()):
            if a.grad is not None:
                torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=n)
    assert differed, 'the forwards of one step must draw different coins for the test to mean anything'


# --------------------------------------------------------------------------------------------
# state-dict compatibility with timm
# --------------------------------------------------------------------------------------------

def _scale_branch_outputs(timm_model: torch.nn.Module, ours: torch.nn.Module) -> None:
    """Multiply each residual branch's last affine layer by p_l: the paper's test-time rule
    written into a plain timm model (branch(x) * p_l)."""
    if isinstance(ours, SDResNet):
        blocks = [b for s in (timm_model.layer1, timm_model.layer2, timm_model.layer3, timm_model.layer4) for b in s]
        last = [[b.bn3] for b in blocks]
    else:
        blocks = list(timm_model.blocks)
        last = [[b.attn.proj, b.mlp.fc2] for b in blocks]
    probs = [g[0].survival_prob for g in sd_blocks(ours)]
    assert len(probs) == len(last)
    with torch.no_grad():
        for p, layers in zip(probs, last):
            for layer in layers:
                layer.weight.mul_(p)
                layer.bias.mul_(p)


def _randomize_norms(model: torch.nn.Module) -> None:
    """Non-trivial norm parameters/statistics (timm zero-inits the last BN of each ResNet branch,
    which would make every branch, and so any branch scaling, invisible)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize('ours_name,timm_name,size', [
    ('sd_resnet50', 'resnet50', 64), ('sd_vit_small_patch16_224', 'vit_small_patch16_224', 224)])
def test_state_dict_compatible_with_timm(ours_name: str, timm_name: str, size: int):
    torch.manual_seed(0)
    theirs = timm.create_model(timm_name).eval()
    _randomize_norms(theirs)
    ours = timm.create_model(ours_name, drop_path_rate=0.0).eval()
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)   # timm weights -> sdzoo (fine-tuning)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = theirs(x)
        torch.testing.assert_close(ours(x), ref)              # p_L = 1: the same network
        back = timm.create_model(timm_name).eval()
        back.load_state_dict(ours.state_dict(), strict=True)  # sdzoo weights -> timm (deployment)
        torch.testing.assert_close(back(x), ref)

        # inverted scaling (timm's DropPath convention) needs no test-time scaling
        apply_stochastic_depth(ours, 0.5, scaling='inverted')
        torch.testing.assert_close(ours(x), ref)

        # paper scaling multiplies branch l by p_l at test time: a timm model with each branch's
        # last affine layer scaled by p_l computes the same function; the unscaled one does not
        apply_stochastic_depth(ours, 0.5, scaling='paper')
        out = ours(x)
        assert not torch.allclose(out, ref, rtol=1e-3, atol=1e-3)
        _scale_branch_outputs(back, ours)
        torch.testing.assert_close(out, back(x), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# static full-depth graphs for tracing and export
# --------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning', 'ignore:.*is deprecated:FutureWarning')
def test_jit_trace_in_train_mode_is_full_depth():
    model = timm.create_model('sd_resnet110', drop_path_rate=0.5).train()
    x = torch.randn(2, 3, 32, 32)
    coins = model.sd_sampler.generator.get_state()
    traced = torch.jit.trace(model, x, check_trace=False)  # deprecated, still used by tools
    assert torch.equal(model.sd_sampler.generator.get_state(), coins)  # no coin drawn while tracing
    n_conv = sum(1 for n in traced.inlined_graph.nodes() if n.kind() == 'aten::_convolution')
    assert n_conv == 1 + 2 * 54
    full = copy.deepcopy(model)
    apply_stochastic_depth(full, 0.0)
    torch.testing.assert_close(traced(x), full(x))


def test_torch_export_of_eval_model():
    model = timm.create_model('sd_resnet20', drop_path_rate=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    ep = torch.export.export(model, (x,))
    convs = [n for n in ep.graph.nodes if n.op == 'call_function' and 'conv' in str(n.target)]
    assert len(convs) == 1 + 2 * 9
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x))
        x2 = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(ep.module()(x2), model(x2))


# --------------------------------------------------------------------------------------------
# real CIFAR-10 images through timm's data pipeline and the model's pretrained cfg
# --------------------------------------------------------------------------------------------

def test_cifar_images_through_the_pretrained_cfg(cifar_root):
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model('sd_resnet20').eval()
    cfg = resolve_data_config({}, model=model)
    assert cfg['input_size'] == (3, 32, 32) and cfg['crop_pct'] == 1.0
    transform = create_transform(**cfg)
    classes = sorted(p.name for p in (cifar_root / 'test').iterdir() if p.is_dir())
    assert classes == ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
    files = [sorted((cifar_root / 'test' / c).glob('*.jpg'))[0] for c in classes[:4]]
    images = [Image.open(f).convert('RGB') for f in files]
    assert all(im.size == (32, 32) for im in images)
    x = torch.stack([transform(im) for im in images])
    assert x.shape == (4, 3, 32, 32)
    # normalised with the CIFAR-10 statistics: roughly zero-mean, unit-scale pixels
    assert abs(float(x.mean())) < 0.75 and 0.3 < float(x.std()) < 2.0
    with torch.no_grad():
        out = model(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
