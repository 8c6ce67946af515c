"""Stochastic depth (Huang et al., ECCV 2016) that really skips dropped residual branches.

timm's and torchvision's drop-path compute every residual branch and multiply dropped samples by
zero. Here the residual branch is passed in as a callable, so that in ``batch`` mode a dropped
block never runs its branch, forward or backward: that is where the paper's training-time saving
comes from.

Conventions:
  * survival probability ``p_l`` of residual block ``l`` (1-based, network order, all L blocks);
    the paper's linear decay is ``p_l = 1 - l / L * (1 - p_L)`` (the original ``main.lua``);
  * timm's ``drop_path_rate`` is ``1 - p_L``;
  * ``scaling='paper'``: train unscaled, eval multiplies the branch by ``p_l``;
    ``scaling='inverted'``: train divides the branch by ``p_l``, eval unscaled (timm's DropPath).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

__all__ = [
    'SD_MODES', 'SD_SCALINGS', 'SD_SCHEDULES', 'survival_schedule', 'SDSampler', 'StochasticDepth',
    'apply_stochastic_depth', 'sd_modules', 'sd_blocks', 'sd_settings', 'set_sd_seed', 'track_forwards',
]

SD_MODES = ('batch', 'row')
SD_SCALINGS = ('paper', 'inverted')
SD_SCHEDULES = ('linear', 'uniform')

Schedule = Union[str, Sequence[float]]


def survival_schedule(
        num_blocks: int,
        drop_path_rate: float = 0.5,
        schedule: Schedule = 'linear',
) -> List[float]:
    """Survival probabilities ``p_1 … p_L`` for ``num_blocks`` residual blocks.

    ``schedule`` is ``'linear'`` (the paper: ``p_l = 1 - l/L * drop_path_rate``, so block 1 is
    already droppable and block L has ``p_L = 1 - drop_path_rate``), ``'uniform'`` (every block
    ``1 - drop_path_rate``) or an explicit list of per-block *survival* probabilities.
    """
    if not isinstance(num_blocks, int) or isinstance(num_blocks, bool) or num_blocks < 1:
        raise ValueError(f'num_blocks must be a positive int, got {num_blocks!r}')
    if isinstance(schedule, str):
        if schedule not in SD_SCHEDULES:
            raise ValueError(f'unknown survival schedule {schedule!r}; expected one of {SD_SCHEDULES} '
                             'or a list of per-block survival probabilities')
        _check_rate(drop_path_rate)
        if schedule == 'uniform':
            return [1.0 - float(drop_path_rate)] * num_blocks
        return [1.0 - (l / num_blocks) * float(drop_path_rate) for l in range(1, num_blocks + 1)]
    probs = [float(p) for p in schedule]
    if len(probs) != num_blocks:
        raise ValueError(f'survival schedule has {len(probs)} entries but the network has '
                         f'{num_blocks} droppable residual blocks')
    for i, p in enumerate(probs):
        if not (0.0 < p <= 1.0) or math.isnan(p):
            raise ValueError(f'survival probability of block {i + 1} is {p}; it must lie in (0, 1]')
    return probs


def _check_rate(rate: float) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or math.isnan(rate):
        raise ValueError(f'drop_path_rate must be a number in [0, 1), got {rate!r}')
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f'drop_path_rate must lie in [0, 1) (it is 1 - p_L), got {rate}')


class SDSampler:
    """The coin source shared by all blocks of one network.

    A dedicated generator (not the global RNG) so that every DDP rank, seeded alike, draws the same
    coins for the same step while data augmentation draws differ. Its state is saved in checkpoints.
    """

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator(device='cpu')
        self.seed = int(seed)
        self.generator.manual_seed(self.seed)
        self._reset_forward_state()

    def _reset_forward_state(self) -> None:
        # set by the model's forward hooks (see track_forwards): > 0 while a model forward runs, so a
        # unit running outside one in training mode is activation-checkpoint recomputation in backward
        self.forward_depth = 0
        self.recording = False  # this forward runs under activation checkpointing: keep its coins
        self.segment_key: Optional[Tuple] = None  # input of the residual block that is running

    def manual_seed(self, seed: int) -> None:
        self.seed = int(seed)
        self.generator.manual_seed(self.seed)

    def coin(self, survival_prob: float) -> bool:
        """True when the block survives this step."""
        return bool(torch.rand((), generator=self.generator).item() < survival_prob)

    def state_dict(self) -> dict:
        return {'seed': self.seed, 'rng_state': self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state['seed'])
        self.generator.set_state(state['rng_state'])

    def __deepcopy__(self, memo) -> 'SDSampler':
        new = SDSampler(self.seed)  # forward state is per process and per pass: not copied
        new.generator.set_state(self.generator.get_state())
        return new

    def __getstate__(self) -> dict:
        return self.state_dict()

    def __setstate__(self, state: dict) -> None:
        self.generator = torch.Generator(device='cpu')
        self._reset_forward_state()
        self.load_state_dict(state)


# activation-checkpoint coin records kept per unit (a forward without backward leaves its records behind)
_MAX_RECORDS = 256
_MAX_PER_INPUT = 4


def _segment_key(x: torch.Tensor) -> Tuple:
    """Identity of a residual block's input that survives checkpoint recomputation: recomputation gets
    the saved input (same storage) back, while a second forward has other tensors alive at the same time."""
    return (x.untyped_storage().data_ptr(), x.storage_offset(), tuple(x.shape), x.device)


def _enter_forward(model: nn.Module, args) -> None:
    sampler = getattr(model, 'sd_sampler', None)
    if isinstance(sampler, SDSampler):
        sampler.forward_depth += 1
        # timm keeps the flag on the model (ViT, ResNet) or on each stage (ConvNeXt): any of them may recompute
        flags = getattr(model, '_sd_checkpoint_flags', None) or (model,)
        sampler.recording = torch.is_grad_enabled() and any(getattr(m, 'grad_checkpointing', False) for m in flags)


def _exit_forward(model: nn.Module, args, output) -> None:
    sampler = getattr(model, 'sd_sampler', None)
    if isinstance(sampler, SDSampler):
        sampler.forward_depth = max(0, sampler.forward_depth - 1)


def track_forwards(model: nn.Module) -> None:
    """Let the SD units tell a model forward from activation-checkpoint recomputation (public hooks)."""
    if getattr(model, '_sd_tracks_forwards', False):
        return
    object.__setattr__(model, '_sd_checkpoint_flags',
                       tuple(m for m in model.modules() if hasattr(m, 'grad_checkpointing')))
    model.register_forward_pre_hook(_enter_forward)
    model.register_forward_hook(_exit_forward, always_call=True)
    model._sd_tracks_forwards = True


class StochasticDepth(nn.Module):
    """Residual connection with stochastic depth: ``shortcut + SD(branch(x))``.

    Parameter-free, so state dicts match the plain (timm) architectures. In eval mode, under
    tracing/export, or with ``survival_prob == 1`` it is a static full-depth residual add.
    A dropped block returns the ``shortcut`` tensor itself (no copy, no work): a block with an
    in-place post-activation must check ``out is shortcut`` before applying it.
    """

    def __init__(
            self,
            survival_prob: float = 1.0,
            mode: str = 'batch',
            scaling: str = 'paper',
            sampler: Optional[SDSampler] = None,
    ):
        super().__init__()
        if mode not in SD_MODES:
            raise ValueError(f'unknown stochastic-depth mode {mode!r}; expected one of {SD_MODES}')
        if scaling not in SD_SCALINGS:
            raise ValueError(f'unknown stochastic-depth scaling {scaling!r}; expected one of {SD_SCALINGS}')
        if not 0.0 < float(survival_prob) <= 1.0:
            raise ValueError(f'survival_prob must lie in (0, 1], got {survival_prob}')
        self.survival_prob = float(survival_prob)
        self.mode = mode
        self.scaling = scaling
        self.sampler = sampler if sampler is not None else SDSampler()
        self.folded = False  # set by sdzoo.fold once p_l lives in the weights
        self.last_kept: Optional[bool] = None  # batch mode: did the branch run on the last train step
        self.leads_block = True  # first unit of its residual block (a ViT block's MLP unit is not)
        self._records: 'OrderedDict[Tuple, List[bool]]' = OrderedDict()  # coins awaiting recomputation

    @property
    def eval_scale(self) -> float:
        """Factor applied to the branch at test time (1 once folded or with inverted scaling)."""
        if self.folded or self.scaling == 'inverted':
            return 1.0
        return self.survival_prob

    def _static(self) -> bool:
        # torch.compile is not in this list: a compiled *training* model must still drop blocks
        # (the coin is drawn outside the graph, see _draw); in eval mode it is static anyway
        return (not self.training or self.survival_prob >= 1.0 or torch.jit.is_scripting()
                or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())

    @torch.compiler.disable
    def _draw(self, x: torch.Tensor) -> bool:
        """This step's batch-mode coin. Kept out of torch.compile graphs: the compiled model branches
        on the returned bool (one graph per outcome) instead of baking a single outcome in.

        Activation checkpointing reruns a block's forward inside backward, possibly after further
        forwards (two views, then one backward): the rerun must take the coin of the forward it
        recomputes, or it builds another graph than the one being differentiated. Each coin drawn
        under checkpointing is recorded with its block's input; a rerun (a unit running outside any
        model forward) takes the newest coin recorded for the same input.
        """
        sampler = self.sampler
        if not isinstance(sampler, SDSampler):  # a stand-in coin source (sdzoo.mc): no checkpoint bookkeeping
            self.last_kept = sampler.coin(self.survival_prob)
            return self.last_kept
        if self.leads_block:
            sampler.segment_key = _segment_key(x)
        key = sampler.segment_key
        if sampler.forward_depth == 0 and self._records:
            coins = self._records.get(key)
            if coins:
                self.last_kept = coins.pop()
                if not coins:
                    del self._records[key]
                return self.last_kept
        self.last_kept = sampler.coin(self.survival_prob)
        if sampler.recording and sampler.forward_depth > 0:
            coins = self._records.setdefault(key, [])
            coins.append(self.last_kept)
            del coins[:-_MAX_PER_INPUT]  # older coins for a reused input: forwards never recomputed
            self._records.move_to_end(key)
            while len(self._records) > _MAX_RECORDS:
                self._records.popitem(last=False)
        return self.last_kept

    def forward(
            self,
            x: torch.Tensor,
            branch: Callable[[torch.Tensor], torch.Tensor],
            shortcut: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        identity = x if shortcut is None else shortcut
        # torch.fx symbolic tracing (timm's feature extraction) cannot trace a per-step coin: a traced graph
        # runs every block, like the other tracers above, instead of baking one step's coin in for good
        if self._static() or isinstance(x, torch.fx.Proxy):
            out = branch(x)
            scale = self.eval_scale if not self.training else 1.0
            if scale != 1.0:
                out = out * scale
            return identity + out

        p = self.survival_prob
        train_scale = 1.0 / p if self.scaling == 'inverted' else 1.0
        if self.mode == 'batch':
            if not self._draw(x):
                return identity
            out = branch(x)
            return identity + (out * train_scale if train_scale != 1.0 else out)

        # row mode: an independent coin per sample, the branch runs only on the survivors
        keep = self._row_keep(x, p)
        n_keep = int(keep.sum())
        if n_keep == 0:
            return identity
        if n_keep == x.shape[0]:
            out = branch(x)
            return identity + (out * train_scale if train_scale != 1.0 else out)
        idx = keep.nonzero().squeeze(1)
        out = branch(_select_rows(x, idx))
        if train_scale != 1.0:
            out = out * train_scale
        return _add_rows(identity, idx, out.to(identity.dtype))

    def _row_keep(self, x: torch.Tensor, p: float) -> torch.Tensor:
        """Row mode: this step's per-sample survival mask (bool, one entry per sample of ``x``)."""
        return torch.rand(x.shape[0], device=x.device) < p

    def extra_repr(self) -> str:
        return f'survival_prob={self.survival_prob:.4f}, mode={self.mode}, scaling={self.scaling}'


def _nhwc(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _select_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[idx]`` along the batch, keeping channels_last. index_select (backward: index_add_) on the
    NHWC view: ``x[idx]``'s backward is a serial index_put_ (9x slower on a CPU ConvNeXt activation)."""
    if _nhwc(x):
        return x.permute(0, 2, 3, 1).index_select(0, idx).permute(0, 3, 1, 2)
    return x.index_select(0, idx)


def _add_rows(identity: torch.Tensor, idx: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``identity`` with ``out`` added to rows ``idx``, keeping channels_last (index_add_ on an NHWC
    tensor takes a slow strided path: add on its contiguous NHWC view instead)."""
    if _nhwc(identity):
        res = identity.clone(memory_format=torch.channels_last)
        res.permute(0, 2, 3, 1).index_add_(0, idx, out.permute(0, 2, 3, 1))
        return res
    return identity.index_add(0, idx, out)


def sd_modules(model: nn.Module) -> List[StochasticDepth]:
    """All stochastic-depth units of a model, in network order."""
    return [m for m in model.modules() if isinstance(m, StochasticDepth)]


def sd_settings(model: nn.Module) -> dict:
    """``drop_path_rate`` / ``sd_mode`` / ``sd_scaling`` a built model carries, as
    :func:`apply_stochastic_depth` set them (None where unknown, e.g. an explicit schedule's rate)."""
    units = sd_modules(model)
    return dict(drop_path_rate=getattr(model, 'sd_drop_path_rate', None),
                sd_mode=units[0].mode if units else None, sd_scaling=units[0].scaling if units else None)


def sd_blocks(model: nn.Module) -> List[List[StochasticDepth]]:
    """SD units grouped by residual block (a ViT block has two: attention and MLP)."""
    groups = getattr(model, 'sd_block_groups', None)
    if callable(groups):
        return groups()
    return [[m] for m in sd_modules(model)]


def apply_stochastic_depth(
        model: nn.Module,
        drop_path_rate: float = 0.5,
        schedule: Schedule = 'linear',
        mode: Optional[str] = None,
        scaling: Optional[str] = None,
        seed: Optional[int] = None,
) -> List[float]:
    """(Re)assign the survival schedule, mode and scaling of every SD unit of ``model``.

    All units share one :class:`SDSampler` (attached as ``model.sd_sampler``). Returns ``p_1 … p_L``.
    """
    blocks = sd_blocks(model)
    if not blocks:
        raise ValueError(f'{type(model).__name__} has no StochasticDepth units')
    if any(u.folded for g in blocks for u in g):
        raise ValueError('model has been folded; its survival probabilities live in its weights now')
    probs = survival_schedule(len(blocks), drop_path_rate, schedule)
    if mode is not None and mode not in SD_MODES:
        raise ValueError(f'unknown stochastic-depth mode {mode!r}; expected one of {SD_MODES}')
    if scaling is not None and scaling not in SD_SCALINGS:
        raise ValueError(f'unknown stochastic-depth scaling {scaling!r}; expected one of {SD_SCALINGS}')
    sampler = getattr(model, 'sd_sampler', None)
    if not isinstance(sampler, SDSampler):
        sampler = SDSampler(0 if seed is None else seed)
        model.sd_sampler = sampler
    elif seed is not None:
        sampler.manual_seed(seed)
    for p, group in zip(probs, blocks):
        for i, unit in enumerate(group):
            unit.survival_prob = p
            unit.sampler = sampler
            unit.leads_block = i == 0
            if mode is not None:
                unit.mode = mode
            if scaling is not None:
                unit.scaling = scaling
    model.sd_drop_path_rate = float(drop_path_rate) if isinstance(schedule, str) else None
    track_forwards(model)
    return probs


def set_sd_seed(model: nn.Module, seed: int) -> None:
    """Seed the coin source of a model (use the same seed on every DDP rank)."""
    sampler = getattr(model, 'sd_sampler', None)
    if not isinstance(sampler, SDSampler):
        raise ValueError(f'{type(model).__name__} has no stochastic-depth sampler')
    sampler.manual_seed(seed)
