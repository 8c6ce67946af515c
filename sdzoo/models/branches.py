"""Where each residual branch ends, and moving the survival scaling of stochastic depth in and out
of the weights there.

With the paper's scaling a trained network computes ``x + p_l * f_l(x)`` at test time, so its weights
only make sense together with the ``p_l`` they were trained with. Build the same weights with another
``drop_path_rate`` (say 0, to fine-tune without SD) and the test-time network silently changes:
measured on ``sd_resnet20.sd_cifar10``, 88.0 -> 84.0% on 200 CIFAR-10 test images before a single
step. :func:`rebase_survival` instead multiplies each branch's last affine layer by
``trained scale / new scale``, so the test-time network is exactly the trained one whatever the new
schedule; :func:`sdzoo.fold` is the special case "new scale 1".
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ..layers import SD_SCALINGS, StochasticDepth, sd_blocks, survival_schedule

__all__ = ['BranchEnd', 'branch_ends', 'scale_branches', 'trained_eval_scales', 'rebase_survival']

# (unit, module holding the residual branch's last affine, its parameter names, the module's name in the block):
# what a block's sd_branch_ends() returns
BranchEnd = Tuple[StochasticDepth, nn.Module, Tuple[str, ...], str]


def branch_ends(model: nn.Module) -> Iterator[BranchEnd]:
    """(unit, module holding the branch's last affine, parameter names, where) for every SD unit of a block
    that says where its branch ends (``sd_branch_ends``: CIFAR / basic blocks in ``bn2``, bottlenecks in
    ``bn3``, ViT blocks in their LayerScale or output projection)."""
    for name, block in model.named_modules():
        ends = getattr(block, 'sd_branch_ends', None)
        if callable(ends):
            try:
                found = ends()
            except ValueError as e:
                raise ValueError(f'{name}: {e}') from None
            for unit, module, names, where in found:
                yield unit, module, names, f'{name}.{where}' if name else where


@torch.no_grad()
def scale_branches(model: nn.Module, factors: Mapping[StochasticDepth, float]) -> None:
    """Multiply the last affine layer of each unit's residual branch by its factor, in place."""
    ends = {unit: (module, names, where) for unit, module, names, where in branch_ends(model)}
    for unit, factor in factors.items():
        if factor == 1.0:
            continue
        if unit not in ends:
            raise ValueError(f'do not know where the residual branch of {unit!r} ends in '
                             f'{type(model).__name__}: cannot scale it by {factor}')
        module, names, where = ends[unit]
        params = [getattr(module, n, None) for n in names]
        if params[0] is None:
            raise ValueError(f'{where} has no affine {names[0]} to scale the branch by {factor}')
        for p in params:
            if p is not None:
                p.mul_(factor)


def trained_eval_scales(model: nn.Module, trained: Mapping[str, Any]) -> Optional[List[float]]:
    """The test-time branch factor of each SD unit (network order) under the settings the weights were
    trained with (``drop_path_rate``, ``sd_schedule``, ``sd_scaling`` as in a weights' ``model_args``);
    None when those settings do not say (no ``drop_path_rate``)."""
    rate, scaling = trained.get('drop_path_rate'), trained.get('sd_scaling') or 'paper'
    schedule = trained.get('sd_schedule') or 'linear'
    if rate is None and isinstance(schedule, str):
        return None
    if scaling not in SD_SCALINGS:
        raise ValueError(f"the weights were trained with sd_scaling {scaling!r}; expected one of {SD_SCALINGS}")
    groups = sd_blocks(model)
    kept = getattr(model, 'sd_kept_groups', None)  # a network prune_depth shortened: its schedule is full depth's
    probs = survival_schedule(len(model.sd_full_survival_probs) if kept is not None else len(groups),
                              0.0 if rate is None else float(rate), schedule)
    if kept is not None:
        probs = [probs[i] for i in kept]
    return [1.0 if scaling == 'inverted' else p for p, group in zip(probs, groups) for _ in group]


def rebase_survival(model: nn.Module, trained: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """Make ``model``'s test-time network the one its weights were trained as, after it was built with
    other survival settings than ``trained`` (the weights' ``model_args``).

    Each branch is scaled by ``trained scale / current scale``. Returns the trained settings when
    something changed (also kept as ``model.sd_rebased_from``), else None (same settings, weights already
    folded, no SD units, or the trained settings unknown).
    """
    units = [u for group in sd_blocks(model) for u in group]
    if not units or any(u.folded for u in units):
        return None
    old = trained_eval_scales(model, trained)
    if old is None:
        return None
    factors = {u: o / u.eval_scale for u, o in zip(units, old)}
    if all(abs(f - 1.0) < 1e-12 for f in factors.values()):
        return None
    scale_branches(model, factors)
    rebased = {k: trained[k] for k in ('drop_path_rate', 'sd_schedule', 'sd_scaling') if trained.get(k) is not None}
    model.sd_rebased_from = rebased
    return rebased
