"""sdzoo.mc_predict: expectation over stochastic depths, exact and sampled."""
from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn as nn

import sdzoo
from sdzoo import StochasticDepth


class ThreeBlocks(nn.Module):
    """h = x * prod_l (1 + s_l a_l) (scalar linear branches), logits [h, -h]."""

    def __init__(self, a, p, scaling='paper'):
        super().__init__()
        self.a = a
        self.units = nn.ModuleList(StochasticDepth(pi, scaling=scaling) for pi in p)

    def forward(self, x):
        for unit, a in zip(self.units, self.a):
            x = unit(x, lambda t, a=a: a * t)
        return torch.cat([x, -x], dim=1)


A, P = (1.0, -0.5, 2.0), (0.9, 0.7, 0.5)


def _by_hand(x: float) -> float:
    """P(class 0) = E_S[sigmoid(2 h_S)], written out over the 8 masks."""
    a1, a2, a3 = A
    p1, p2, p3 = P
    total = 0.0
    for s1 in (0, 1):
        for s2 in (0, 1):
            for s3 in (0, 1):
                w = (p1 if s1 else 1 - p1) * (p2 if s2 else 1 - p2) * (p3 if s3 else 1 - p3)
                h = x * (1 + s1 * a1) * (1 + s2 * a2) * (1 + s3 * a3)
                total += w / (1 + math.exp(-2 * h))
    return total


def test_exact_matches_hand_computed_expectation():
    model = ThreeBlocks(A, P).eval()
    xs = [0.3, -1.0, 0.05]
    res = sdzoo.mc_predict(model, torch.tensor([[v] for v in xs]), exact=True)
    assert res.samples == 8
    for i, v in enumerate(xs):
        assert res.probs[i, 0].item() == pytest.approx(_by_hand(v), abs=1e-6)
        assert res.probs[i].sum().item() == pytest.approx(1.0, abs=1e-6)
    # entropy of the mean prediction, and the decomposition total = expected + mutual information
    p0 = torch.tensor([_by_hand(v) for v in xs], dtype=torch.float64)
    h = -(p0 * p0.log() + (1 - p0) * (1 - p0).log())
    torch.testing.assert_close(res.entropy.double(), h, atol=1e-5, rtol=0)
    torch.testing.assert_close(res.expected_entropy + res.mutual_info, res.entropy, atol=1e-6, rtol=0)
    # the expectation is not the deterministic eval network (the nonlinearity sits between)
    with torch.no_grad():
        det = torch.softmax(model(torch.tensor([[0.3]])), 1)[0, 0].item()
    assert abs(det - _by_hand(0.3)) > 1e-3


def test_sampling_converges_and_is_reproducible():
    model = ThreeBlocks(A, P).eval()
    x = torch.tensor([[0.3], [-1.0]])
    a = sdzoo.mc_predict(model, x, samples=3000, seed=7)
    b = sdzoo.mc_predict(model, x, samples=3000, generator=torch.Generator().manual_seed(7))
    c = sdzoo.mc_predict(model, x, samples=3000, seed=8)
    assert torch.equal(a.probs, b.probs) and a.samples == 3000
    assert not torch.equal(a.probs, c.probs)
    for i, v in enumerate((0.3, -1.0)):
        assert a.probs[i, 0].item() == pytest.approx(_by_hand(v), abs=0.02)


def test_inverted_scaling_uses_training_branch_scale():
    model = ThreeBlocks(A, P, scaling='inverted').eval()
    res = sdzoo.mc_predict(model, torch.tensor([[0.3]]), exact=True)
    expect = 0.0
    for mask in range(8):
        s = [(mask >> k) & 1 for k in range(3)]
        w = math.prod(p if si else 1 - p for p, si in zip(P, s))
        h = 0.3 * math.prod(1 + si * a / p for si, a, p in zip(s, A, P))
        expect += w / (1 + math.exp(-2 * h))
    assert res.probs[0, 0].item() == pytest.approx(expect, abs=1e-6)


def test_leaves_batchnorm_modes_and_sampler_untouched():
    model = timm.create_model('sd_resnet20', drop_path_rate=0.5)
    model.train()
    model.layer1[0].bn1.eval()  # a mixed-mode model must come back mixed
    modes = {n: m.training for n, m in model.named_modules()}
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    sampler_state = model.sd_sampler.state_dict()['rng_state'].clone()
    units = sdzoo.sd_modules(model)
    samplers = [u.sampler for u in units]
    x = torch.randn(3, 3, 32, 32)
    res = sdzoo.mc_predict(model, x, samples=3, seed=0)
    assert res.probs.shape == (3, 10) and res.entropy.shape == (3,)
    assert {n: m.training for n, m in model.named_modules()} == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), k  # BN running stats (and num_batches_tracked) unchanged
    assert torch.equal(model.sd_sampler.state_dict()['rng_state'], sampler_state)
    assert all(u.sampler is s for u, s in zip(units, samplers))
    assert all(u.mode == 'batch' for u in units)
    # BN ran in eval: the result does not depend on the rest of the batch
    single = sdzoo.mc_predict(model, x[:1], samples=3, seed=0)
    torch.testing.assert_close(single.probs[0], res.probs[0], atol=1e-5, rtol=1e-4)


def test_errors():
    small = ThreeBlocks(A, P).eval()
    with pytest.raises(ValueError, match='samples'):
        sdzoo.mc_predict(small, torch.zeros(1, 1), samples=0)
    big = timm.create_model('sd_resnet32').eval()  # 15 droppable blocks
    with pytest.raises(ValueError, match='L=15'):
        sdzoo.mc_predict(big, torch.zeros(1, 3, 32, 32), exact=True)
    with pytest.raises(ValueError, match='folded'):
        sdzoo.mc_predict(sdzoo.fold(big), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match='no StochasticDepth'):
        sdzoo.mc_predict(nn.Linear(1, 2), torch.zeros(1, 1))
