"""Monte-Carlo stochastic depth at inference: ``f_SD(x) = E_S[softmax(NN(x, S))]``.

The deterministic eval network approximates the expectation over the random depths ``S`` seen in
training (the paper's test-time rule); :func:`mc_predict` computes it by sampling depths (or, for
up to 12 droppable units, by enumerating all ``2^L`` masks weighted by ``P(S)``), and reports the
predictive entropy as an uncertainty score.

Only the stochastic-depth units drop: BatchNorm, dropout and everything else stay in eval mode, no
running statistic moves, and the model's own coin source (``SDSampler``) is not touched; modes and
samplers are restored afterwards. A dropped branch is not computed, so a sample costs less than a
full forward pass.
"""
from __future__ import annotations

import itertools
from typing import List, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import StochasticDepth, sd_modules

__all__ = ['MCPrediction', 'mc_predict', 'MAX_EXACT_UNITS']

MAX_EXACT_UNITS = 12


class MCPrediction(NamedTuple):
    probs: torch.Tensor             # [B, C] mean softmax over depths
    entropy: torch.Tensor           # [B] predictive entropy H[E_S p] (nats): total uncertainty
    expected_entropy: torch.Tensor  # [B] E_S H[p]: the part each single depth already has
    mutual_info: torch.Tensor       # [B] entropy - expected_entropy: disagreement between depths
    samples: int                    # depth samples drawn, or masks enumerated with exact=True


class _Coin:
    """Stands in for a unit's SDSampler while a mask is evaluated: the coin is the mask bit."""

    def __init__(self):
        self.kept = True

    def coin(self, survival_prob: float) -> bool:
        return self.kept


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


@torch.no_grad()
def mc_predict(
        model: nn.Module,
        x: torch.Tensor,
        samples: int = 32,
        *,
        exact: bool = False,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
) -> MCPrediction:
    """Mean softmax of ``model`` over stochastic depths, and its predictive entropy.

    ``samples`` depth masks are drawn with ``generator`` (default: a CPU generator seeded with
    ``seed``, 0 if not given, so results are reproducible); one mask is shared by the batch. With
    ``exact=True`` all ``2^L`` masks of the ``L`` droppable units (``p < 1``) are enumerated and weighted
    by ``P(S) = prod p^s (1-p)^(1-s)``; ``L > 12`` is refused. ViT blocks have two units with
    independent coins, as in training. A kept branch is scaled as in training (``1/p`` for inverted
    scaling, 1 for the paper's), so the expectation is over the networks training sampled.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f'x must be a tensor, got {type(x).__name__}')
    units: List[StochasticDepth] = sd_modules(model)
    if not units:
        raise ValueError(f'{type(model).__name__} has no StochasticDepth units: nothing to sample')
    if any(u.folded for u in units):
        raise ValueError('model is folded (survival factors live in its weights): Monte-Carlo depth sampling '
                         'needs the unfolded model')
    droppable = [u for u in units if u.survival_prob < 1.0]
    if exact:
        if len(droppable) > MAX_EXACT_UNITS:
            raise ValueError(f'exact=True enumerates 2^L masks; this model has L={len(droppable)} droppable '
                             f'stochastic-depth units (> {MAX_EXACT_UNITS}): use sampling (exact=False)')
    elif isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f'samples must be a positive int, got {samples!r}')
    if generator is None:
        generator = torch.Generator(device='cpu').manual_seed(0 if seed is None else int(seed))

    modes = [(m, m.training) for m in model.modules()]
    saved = [(u, u.mode, u.sampler, u.last_kept) for u in units]
    coins = [_Coin() for _ in droppable]
    try:
        model.eval()
        for u, c in zip(droppable, coins):
            u.train()  # only the unit: its training path draws from the coin we control
            u.mode = 'batch'
            u.sampler = c

        def forward(mask) -> torch.Tensor:
            for c, keep in zip(coins, mask):
                c.kept = bool(keep)
            return F.softmax(model(x).float(), dim=-1)

        probs = torch.tensor([u.survival_prob for u in droppable], dtype=torch.float64)
        mean, mean_h, n = None, None, 0
        if exact:
            for mask in itertools.product((True, False), repeat=len(droppable)):
                m = torch.tensor(mask, dtype=torch.bool)
                w = float(torch.where(m, probs, 1.0 - probs).prod()) if len(droppable) else 1.0
                p = forward(mask)
                mean = w * p if mean is None else mean + w * p
                mean_h = w * _entropy(p) if mean_h is None else mean_h + w * _entropy(p)
                n += 1
        else:
            masks = torch.rand((samples, len(droppable)), generator=generator, dtype=torch.float64) < probs
            for mask in masks.tolist():
                p = forward(mask)
                mean = p if mean is None else mean + p
                h = _entropy(p)
                mean_h = h if mean_h is None else mean_h + h
            mean, mean_h, n = mean / samples, mean_h / samples, samples
    finally:
        for u, mode, sampler, last_kept in saved:
            u.mode, u.sampler, u.last_kept = mode, sampler, last_kept
        for m, training in modes:
            m.training = training
    entropy = _entropy(mean)
    return MCPrediction(mean, entropy, mean_h, (entropy - mean_h).clamp_min(0.0), n)
