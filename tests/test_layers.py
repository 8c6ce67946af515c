"""StochasticDepth, the survival schedule, the shared sampler and the option-A shortcut."""
from __future__ import annotations

import copy
import math
import pickle

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import sdzoo  # noqa: F401  (registers the models)
from sdzoo.layers import (
    AvgPoolPadShortcut, SDSampler, StochasticDepth, apply_stochastic_depth, sd_blocks, sd_modules,
    set_sd_seed, survival_schedule,
)


# --------------------------------------------------------------------------------------------
# survival schedule
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('num_blocks,rate', [(54, 0.5), (9, 0.2), (12, 0.1), (1, 0.5)])
def test_linear_schedule_is_the_papers_decay(num_blocks: int, rate: float):
    probs = survival_schedule(num_blocks, rate, 'linear')
    p_last = 1.0 - rate
    assert len(probs) == num_blocks
    for l, p in enumerate(probs, start=1):
        assert p == pytest.approx(1.0 - l / num_blocks * (1.0 - p_last), abs=1e-12)
    assert probs[-1] == pytest.approx(p_last)            # drop_path_rate is 1 - p_L
    assert all(a > b for a, b in zip(probs, probs[1:]))  # strictly decaying with depth
    assert probs[0] < 1.0                                # block 1 is already droppable (as in main.lua)


def test_resnet110_expected_depth_is_the_papers_0745():
    probs = survival_schedule(54, 0.5)
    # E[#blocks run] / L = 1 - (L+1)/(2L) * (1 - p_L): the paper's "~25% less training time"
    assert sum(probs) / 54 == pytest.approx(1 - 55 / 108 * 0.5)
    assert sum(probs) / 54 == pytest.approx(0.745, abs=5e-4)


def test_uniform_and_explicit_schedules():
    assert survival_schedule(7, 0.3, 'uniform') == pytest.approx([0.7] * 7)
    assert survival_schedule(5, 0.0) == [1.0] * 5
    explicit = [1.0, 0.9, 0.5, 0.25]
    assert survival_schedule(4, 0.5, explicit) == explicit
    assert survival_schedule(2, 0.5, (0.8, 0.6)) == [0.8, 0.6]


@pytest.mark.parametrize('rate', [-0.1, 1.0, 1.5, float('nan'), float('inf'), '0.5', None, True])
def test_schedule_rejects_bad_drop_path_rate(rate):
    with pytest.raises(ValueError, match='drop_path_rate'):
        survival_schedule(10, rate)


@pytest.mark.parametrize('num_blocks', [0, -3, 2.0, True])
def test_schedule_rejects_bad_block_count(num_blocks):
    with pytest.raises(ValueError, match='num_blocks'):
        survival_schedule(num_blocks, 0.5)


def test_schedule_rejects_bad_names_and_lists():
    with pytest.raises(ValueError, match="unknown survival schedule 'cosine'"):
        survival_schedule(4, 0.5, 'cosine')
    with pytest.raises(ValueError, match='3 entries but the network has 4'):
        survival_schedule(4, 0.5, [0.9, 0.8, 0.7])
    for bad in (0.0, 1.1, -0.5, float('nan')):
        with pytest.raises(ValueError, match='survival probability of block 2'):
            survival_schedule(3, 0.5, [0.9, bad, 0.7])


def test_unit_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode 'drop'"):
        StochasticDepth(0.5, mode='drop')
    with pytest.raises(ValueError, match="scaling 'timm'"):
        StochasticDepth(0.5, scaling='timm')
    for p in (0.0, 1.5, -1.0, float('nan')):
        with pytest.raises(ValueError, match='survival_prob'):
            StochasticDepth(p)


# --------------------------------------------------------------------------------------------
# one unit: batch mode, row mode, scaling, eval
# --------------------------------------------------------------------------------------------

class _Affine:
    """A deterministic residual branch that records the batch sizes it was run on."""

    def __init__(self, a: float = 3.0, b: float = 1.0):
        self.a, self.b, self.calls = a, b, []

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        self.calls.append(t.shape[0])
        return t * self.a + self.b


@pytest.mark.parametrize('scaling', ['paper', 'inverted'])
def test_batch_mode_runs_branch_only_when_kept(scaling: str):
    p = 0.6
    unit = StochasticDepth(p, mode='batch', scaling=scaling, sampler=SDSampler(3)).train()
    branch = _Affine()
    x = torch.randn(4, 5)
    s = 1 / p if scaling == 'inverted' else 1.0
    kept_steps = 0
    for _ in range(40):
        n_calls = len(branch.calls)
        out = unit(x, branch)
        if unit.last_kept:
            kept_steps += 1
            assert len(branch.calls) == n_calls + 1
            torch.testing.assert_close(out, x + (3 * x + 1) * s)
        else:
            assert len(branch.calls) == n_calls  # skipped: the branch never ran
            assert torch.equal(out, x)
    assert 0 < kept_steps < 40


def test_dropped_unit_returns_the_shortcut_itself():
    # no copy and no work for a dropped block: the block decides what to do with it (see below)
    unit = StochasticDepth(0.5, sampler=SDSampler(0)).train()
    x = torch.randn(3, 4)
    while True:
        out = unit(x, _Affine())
        if not unit.last_kept:
            break
    assert out is x
    shortcut = torch.randn(3, 4)
    while True:
        out = unit(x, _Affine(), shortcut)
        if not unit.last_kept:
            break
    assert out is shortcut


@pytest.mark.parametrize('name', ['sd_resnet20', 'sd_resnet18'])
def test_all_blocks_dropped_trains_and_never_writes_into_block_inputs(name):
    """In-place post-activations must not touch a dropped block's input (autograd needs it)."""
    import timm
    n = 9 if name == 'sd_resnet20' else 8
    model = timm.create_model(name, sd_schedule=[1e-6] * n, num_classes=10).train()
    size = 32 if name == 'sd_resnet20' else 64
    x = torch.randn(2, 3, size, size, requires_grad=True)
    model(x).sum().backward()  # raises if an in-place op modified a tensor saved for backward
    assert all(not u.last_kept for u in sd_modules(model))
    assert all(p.grad is None for n_, p in model.named_parameters() if '.conv' in n_ and 'layer' in n_)
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize('scaling', ['paper', 'inverted'])
def test_row_mode_drops_samples_independently(scaling: str):
    torch.manual_seed(0)  # row coins come from torch's global generator
    p = 0.5
    unit = StochasticDepth(p, mode='row', scaling=scaling).train()
    branch = _Affine()
    x = torch.randn(64, 6, requires_grad=True)
    shortcut = x.detach() * -2.0  # a distinct identity path, as in a projection shortcut
    out = unit(x, branch, shortcut)
    s = 1 / p if scaling == 'inverted' else 1.0  # inverted scaling divides the branch by p
    full = shortcut + (3 * x.detach() + 1) * s
    dropped = (out == shortcut).all(1)
    kept = torch.isclose(out, full).all(1)
    assert bool((dropped ^ kept).all()), 'every row is either the identity path or identity + scaled branch'
    n_kept = int(kept.sum())
    assert 0 < n_kept < 64
    assert branch.calls == [n_kept]  # the branch ran on the surviving rows only

    out.sum().backward()
    # dropped rows get no gradient through the branch (shortcut is detached here)
    assert torch.equal(x.grad[dropped], torch.zeros_like(x.grad[dropped]))
    torch.testing.assert_close(x.grad[kept], torch.full_like(x.grad[kept], 3 * s))


def test_row_mode_all_or_none_kept():
    x = torch.randn(8, 3)
    unit = StochasticDepth(1e-9, mode='row').train()   # ~never kept
    branch = _Affine()
    out = unit(x, branch)
    assert branch.calls == [] and torch.equal(out, x) and out is x  # the shortcut itself, as in batch mode
    unit.survival_prob = 1.0 - 1e-9                     # ~always kept (still the stochastic path)
    out = unit(x, branch)
    assert branch.calls == [8]
    torch.testing.assert_close(out, x + 3 * x + 1)


@pytest.mark.parametrize('mode', ['batch', 'row'])
@pytest.mark.parametrize('scaling', ['paper', 'inverted'])
def test_monte_carlo_mean_matches_eval(mode: str, scaling: str):
    """E[train output] = eval output: the point of scaling the branch at test (or train) time."""
    torch.manual_seed(1)
    p, n = 0.7, 4000
    branch = nn.Linear(6, 6)  # deterministic branch
    x = torch.randn(1, 6)
    unit = StochasticDepth(p, mode=mode, scaling=scaling, sampler=SDSampler(11))
    with torch.no_grad():
        unit.train()
        if mode == 'batch':
            mean = torch.stack([unit(x, branch) for _ in range(n)]).mean(0)
        else:  # n independent per-sample coins in one call
            mean = unit(x.expand(n, 6), branch).mean(0, keepdim=True)
        unit.eval()
        ev = unit(x, branch)
        f = branch(x)
    s = 1 / p if scaling == 'inverted' else 1.0
    # mean - eval = f * s * (k/n - p) with k ~ Binomial(n, p)
    std = f.abs() * s * math.sqrt(p * (1 - p) / n)
    assert bool(((mean - ev).abs() <= 4.5 * std + 1e-5).all()), (mean - ev, std)
    # the test has power: the other convention's eval output is far outside that band
    wrong = x + f * (1.0 if scaling == 'paper' else p)
    assert bool(((mean - wrong).abs() > 4.5 * std).any())


@pytest.mark.parametrize('scaling', ['paper', 'inverted'])
def test_eval_is_deterministic_and_consumes_no_coins(scaling: str):
    sampler = SDSampler(5)
    unit = StochasticDepth(0.3, scaling=scaling, sampler=sampler).eval()
    x = torch.randn(4, 5)
    state = sampler.generator.get_state()
    outs = [unit(x, _Affine()) for _ in range(3)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    assert torch.equal(sampler.generator.get_state(), state)
    scale = 0.3 if scaling == 'paper' else 1.0
    assert unit.eval_scale == scale
    torch.testing.assert_close(outs[0], x + (3 * x + 1) * scale)
    unit.folded = True  # p_l moved into the weights: no scaling left at eval
    torch.testing.assert_close(unit(x, _Affine()), x + 3 * x + 1)


def test_survival_one_is_static_in_training():
    sampler = SDSampler(5)
    unit = StochasticDepth(1.0, scaling='inverted', sampler=sampler).train()
    state = sampler.generator.get_state()
    x = torch.randn(2, 3)
    torch.testing.assert_close(unit(x, _Affine()), x + 3 * x + 1)
    assert torch.equal(sampler.generator.get_state(), state)


# --------------------------------------------------------------------------------------------
# sampler
# --------------------------------------------------------------------------------------------

def test_sampler_is_seeded_and_resumable():
    a, b = SDSampler(7), SDSampler(7)
    seq = [a.coin(0.5) for _ in range(64)]
    assert seq == [b.coin(0.5) for _ in range(64)]
    assert 10 < sum(seq) < 54
    assert seq != [SDSampler(8).coin(0.5) for _ in range(64)]
    state = a.state_dict()
    ahead = [a.coin(0.5) for _ in range(16)]
    c = SDSampler(0)
    c.load_state_dict(state)
    assert [c.coin(0.5) for _ in range(16)] == ahead
    d = pickle.loads(pickle.dumps(b))  # checkpoints/multiprocessing pickle it
    assert [d.coin(0.5) for _ in range(16)] == ahead
    a.manual_seed(7)
    assert [a.coin(0.5) for _ in range(64)] == seq


def test_deepcopy_keeps_one_shared_sampler_per_copy():
    model = timm.create_model('sd_resnet20', sd_seed=3)
    clone = copy.deepcopy(model)
    for m in (model, clone):
        samplers = {id(u.sampler) for u in sd_modules(m)}
        assert samplers == {id(m.sd_sampler)}
    assert clone.sd_sampler is not model.sd_sampler
    # same coin state: both make the same decisions on the next step, then evolve independently
    x = torch.randn(2, 3, 32, 32)
    model.train(), clone.train()
    for _ in range(3):
        model(x), clone(x)
        assert [u.last_kept for u in sd_modules(model)] == [u.last_kept for u in sd_modules(clone)]
    set_sd_seed(clone, 99)
    assert clone.sd_sampler.seed == 99 and model.sd_sampler.seed == 3


# --------------------------------------------------------------------------------------------
# apply_stochastic_depth and friends
# --------------------------------------------------------------------------------------------

def test_apply_stochastic_depth_reassigns_every_unit():
    model = timm.create_model('sd_vit_lite_patch4_32')
    probs = apply_stochastic_depth(model, 0.3, 'linear', mode='row', scaling='inverted', seed=4)
    assert probs == pytest.approx([1 - l / 7 * 0.3 for l in range(1, 8)])
    groups = sd_blocks(model)
    assert len(groups) == 7 and all(len(g) == 2 for g in groups)  # attention + MLP per block
    for p, g in zip(probs, groups):
        for u in g:
            assert (u.survival_prob, u.mode, u.scaling) == (p, 'row', 'inverted')
            assert u.sampler is model.sd_sampler
    assert model.sd_sampler.seed == 4 and model.sd_drop_path_rate == 0.3
    apply_stochastic_depth(model, 0.3, [0.5] * 7)
    assert model.sd_drop_path_rate is None  # an explicit list has no single rate


def test_apply_stochastic_depth_errors_leave_model_untouched():
    model = timm.create_model('sd_resnet20', drop_path_rate=0.2)
    before = [(u.survival_prob, u.mode, u.scaling) for u in sd_modules(model)]
    with pytest.raises(ValueError, match="mode 'fast'"):
        apply_stochastic_depth(model, 0.5, mode='fast')
    with pytest.raises(ValueError, match="scaling 'none'"):
        apply_stochastic_depth(model, 0.5, scaling='none')
    with pytest.raises(ValueError, match='9 droppable residual blocks'):
        apply_stochastic_depth(model, 0.5, [0.5] * 8)
    with pytest.raises(ValueError, match='drop_path_rate'):
        apply_stochastic_depth(model, float('nan'))
    assert [(u.survival_prob, u.mode, u.scaling) for u in sd_modules(model)] == before
    sd_modules(model)[0].folded = True
    with pytest.raises(ValueError, match='folded'):
        apply_stochastic_depth(model, 0.5)
    with pytest.raises(ValueError, match='no StochasticDepth units'):
        apply_stochastic_depth(nn.Linear(2, 2), 0.5)
    with pytest.raises(ValueError, match='no stochastic-depth sampler'):
        set_sd_seed(nn.Linear(2, 2), 0)


# --------------------------------------------------------------------------------------------
# batch mode inside a network really skips compute (forward and backward)
# --------------------------------------------------------------------------------------------

def _cifar_block_conv_flops(depth: int, batch: int, widths=(16, 32, 64), size: int = 32):
    """FLOPs (2 per multiply-add) of each block's two 3x3 convs, from the architecture alone."""
    n = (depth - 2) // 6
    flops, c_in = [], widths[0]
    for i, w in enumerate(widths):
        hw = (size // 2 ** i) ** 2
        for j in range(n):
            cin = c_in if j == 0 else w
            flops.append(2 * batch * hw * 9 * (cin * w + w * w))
        c_in = w
    stem = 2 * batch * size * size * 9 * 3 * widths[0]
    head = 2 * batch * widths[-1] * 10
    return stem, flops, head


def test_batch_mode_skips_dropped_blocks_forward_and_backward():
    model = timm.create_model('sd_resnet110', drop_path_rate=0.5, sd_seed=1).train()
    units = sd_modules(model)
    blocks = [m for m in model.modules() if type(m).__name__ == 'CifarBasicBlock']
    assert len(units) == len(blocks) == 54

    ran = {}
    hooks = [blk.conv1.register_forward_hook(lambda m, i, o, k=k: ran.__setitem__(k, ran.get(k, 0) + 1))
             for k, blk in enumerate(blocks)]
    hooks += [blk.conv2.register_forward_hook(lambda m, i, o, k=k: ran.__setitem__(-k - 1, 1))
              for k, blk in enumerate(blocks)]
    # the coins this step will use: the shared sampler, one draw per block in network order
    g = torch.Generator()
    g.set_state(model.sd_sampler.generator.get_state())
    expected = [bool(torch.rand((), generator=g).item() < u.survival_prob) for u in units]

    batch = 2
    x = torch.randn(batch, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        logits = model(x)
    for h in hooks:
        h.remove()

    kept = [u.last_kept for u in units]
    assert kept == expected
    assert 5 < sum(kept) < 54, 'a step with both kept and dropped blocks'
    for k in range(54):
        assert (ran.get(k, 0), ran.get(-k - 1, 0)) == ((1, 1) if kept[k] else (0, 0)), k
    stem, block_flops, head = _cifar_block_conv_flops(110, batch)
    assert counter.get_total_flops() == stem + head + sum(f for f, k in zip(block_flops, kept) if k)
    assert logits.shape == (batch, 10)

    F.cross_entropy(logits, torch.tensor([1, 7])).backward()
    for blk, k in zip(blocks, kept):
        grads = [p.grad for p in blk.parameters()]
        if k:
            assert all(gr is not None for gr in grads) and any(bool(gr.abs().sum() > 0) for gr in grads)
        else:
            assert all(gr is None for gr in grads)  # no backward through a dropped branch either
    assert model.conv1.weight.grad is not None and model.fc.weight.grad is not None


def test_eval_runs_full_depth_deterministically():
    model = timm.create_model('sd_resnet20', drop_path_rate=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        a = model(x)
    stem, block_flops, head = _cifar_block_conv_flops(20, 2)
    assert counter.get_total_flops() == stem + sum(block_flops) + head
    with torch.no_grad():
        b = model(x)
    assert torch.equal(a, b)


def test_torch_compile_training_still_drops_blocks():
    """A torch.compile'd model in training mode draws the same coins as eager and really skips
    dropped blocks (the coin stays outside the graph), instead of compiling one full-depth path."""
    from sdzoo.models.resnet_cifar import CifarResNet
    torch.manual_seed(0)
    eager = CifarResNet(depth=8, drop_path_rate=0.9, sd_seed=3).train()  # 3 blocks: p = 0.7, 0.4, 0.1
    model = copy.deepcopy(eager)
    # aot_eager: Dynamo's graph capture and AOTAutograd as with inductor, without minutes of C++ codegen
    compiled = torch.compile(model, backend='aot_eager')
    x = torch.randn(4, 3, 32, 32)
    patterns = set()
    for _ in range(6):
        out, ref = compiled(x), eager(x)
        kept = [u.last_kept for u in sd_modules(model)]
        assert kept == [u.last_kept for u in sd_modules(eager)]
        patterns.add(tuple(kept))
        assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    assert len(patterns) > 1 and any(not all(k) for k in patterns)
    model.eval(), eager.eval()
    with torch.no_grad():
        assert torch.allclose(compiled(x), eager(x), atol=1e-4, rtol=1e-4)


@pytest.mark.timeout(900)
def test_torch_compile_inductor_trains_sd_resnet20_with_eager_coins_and_gradients():
    """Issue 48.8: timm's sd_resnet20 under torch.compile with the default inductor backend, training mode,
    channels_last as the trainer runs it: three SGD steps draw the eager model's coins, skip dropped blocks,
    match its loss and gradients, and never hit Dynamo's recompile limit (one graph per block shape)."""
    import timm
    import torch.nn.functional as F
    torch.manual_seed(0)
    eager = timm.create_model('sd_resnet20', drop_path_rate=0.5, sd_seed=5).train().to(
        memory_format=torch.channels_last)
    model = copy.deepcopy(eager)
    compiled = torch.compile(model)  # inductor
    x = torch.randn(8, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.arange(8) % 10
    dropped = 0
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        for _ in range(3):
            losses = []
            for m, run in ((eager, eager), (model, compiled)):
                m.zero_grad(set_to_none=True)
                loss = F.cross_entropy(run(x), y)
                loss.backward()
                losses.append(loss.item())
            kept = [u.last_kept for u in sd_modules(model)]
            assert kept == [u.last_kept for u in sd_modules(eager)]
            dropped += kept.count(False)
            assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-5)
            for (n, a), b in zip(eager.named_parameters(), model.parameters()):
                assert (a.grad is None) == (b.grad is None), n
                if a.grad is not None and a.grad.abs().max() > 0:  # fused kernels sum in another order
                    err = (b.grad - a.grad).abs().max() / a.grad.abs().max()
                    assert err < 1e-2, (n, err.item())
    assert dropped > 0


# --------------------------------------------------------------------------------------------
# option-A shortcut
# --------------------------------------------------------------------------------------------

def test_avgpool_pad_shortcut():
    x = torch.randn(2, 16, 8, 8)
    out = AvgPoolPadShortcut(16, 32, stride=2)(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, :16], F.avg_pool2d(x, 2))
    assert torch.equal(out[:, 16:], torch.zeros(2, 16, 4, 4))
    assert torch.equal(AvgPoolPadShortcut(16, 16)(x), x)
    assert sum(p.numel() for p in AvgPoolPadShortcut(16, 32, 2).parameters()) == 0
    with pytest.raises(ValueError, match='cannot shrink channels'):
        AvgPoolPadShortcut(32, 16)
