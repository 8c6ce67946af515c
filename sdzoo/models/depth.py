"""Depth on demand (issue 50): ``sdzoo.prune_depth(model, keep=N, strategy=...)``.

A removed residual block becomes its parameter-free shortcut (:class:`SkippedBlock`), so its parameters
leave the state dict and an export is a plain, shallower graph; the kept blocks keep their survival
probabilities and therefore their eval scaling ``p_l``.

Families: sdzoo ``CifarResNet`` (``CifarBasicBlock``), sdzoo / timm ``VisionTransformer`` (``Block`` /
``SDBlock`` / ``ResPostBlock``: identity), sdzoo / timm ``ResNet`` (``BasicBlock`` / ``Bottleneck``). Blocks
that change the shape (downsampling) always stay.

Strategies (measured on sd_resnet110.sd_cifar10 in issue 50: greedy + BN re-estimation keeps 90.51% at 42 of 54
blocks vs 91.02% full; survival / every_other collapse at deeper cuts):
  * ``greedy``      (default) repeatedly remove the block whose removal moves the output least (KL to the full
                    model) on calibration images: held-out training images (the val split), never test ones
  * ``survival``    remove the lowest-survival-probability blocks first (the deepest)
  * ``every_other`` LayerDrop-style: keep an evenly spaced subset of the removable blocks
With ``data``, the BatchNorms after the first removed block then re-estimate their running statistics on
``bn_images`` training images.
"""
from __future__ import annotations

import copy
import heapq
import math
import statistics
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['SkippedBlock', 'BlockInfo', 'residual_blocks', 'prune_depth', 'remove_blocks', 'heal', 'greedy_order',
           'DEFAULT_HEAL_STEPS', 'default_heal_steps',
           'bn_recalibrate', 'load_images', 'STRATEGIES']

STRATEGIES = ('greedy', 'survival', 'every_other')
_BATCH = 250


class SkippedBlock(nn.Module):
    """A removed residual block: its (parameter-free) shortcut. Accepts and ignores extra args (ViT attn_mask)."""

    def __init__(self, shortcut: Optional[nn.Module] = None, name: str = ''):
        super().__init__()
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.removed_name = name

    def forward(self, x, *args, **kwargs):
        return self.shortcut(x)

    def extra_repr(self) -> str:
        return f'removed={self.removed_name!r}'


@dataclass
class BlockInfo:
    name: str                 # module path, e.g. 'layer2.0'
    index: int                # network order
    survival_prob: float      # p_l (1.0 when unknown)
    downsampling: bool        # changes the shape or has a shortcut with parameters: never removed
    replacement: Callable[[], nn.Module] = field(repr=False, default=None)


def _sd_prob(block: nn.Module) -> float:
    from ..layers import StochasticDepth
    probs = [m.survival_prob for m in block.modules() if isinstance(m, StochasticDepth)]
    if probs:
        return float(min(probs))
    for m in block.modules():  # plain timm block: DropPath drop_prob
        if type(m).__name__ == 'DropPath':
            return 1.0 - float(m.drop_prob)
    return 1.0


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return cfg.get('architecture') or type(model).__name__


def residual_blocks(model: nn.Module) -> List[BlockInfo]:
    """The residual blocks of ``model`` in network order, with survival probability and replacement.

    ValueError (one line) for a model of no supported family or one already pruned."""
    from timm.models.resnet import BasicBlock, Bottleneck
    from timm.models.vision_transformer import Block, ResPostBlock
    out: List[BlockInfo] = []
    for name, m in model.named_modules():
        if getattr(m, 'residual_shortcut', None):  # sdzoo's CIFAR block names its shortcut module
            sc = getattr(m, m.residual_shortcut)
            ds = not isinstance(sc, nn.Identity)
            out.append(BlockInfo(name, len(out), _sd_prob(m), ds,
                                 (lambda sc=sc, name=name: SkippedBlock(copy.deepcopy(sc), name))))
        elif isinstance(m, (Block, ResPostBlock)):
            out.append(BlockInfo(name, len(out), _sd_prob(m), False, (lambda name=name: SkippedBlock(None, name))))
        elif isinstance(m, (BasicBlock, Bottleneck)):
            out.append(BlockInfo(name, len(out), _sd_prob(m), m.downsample is not None,
                                 (lambda name=name: SkippedBlock(None, name))))
        elif isinstance(m, SkippedBlock):
            raise ValueError(f'{_model_name(model)}: block {name} was already removed: prune the original model')
    if not out:
        raise ValueError(f'{_model_name(model)} ({type(model).__name__}): prune_depth supports CIFAR/ImageNet '
                         'ResNets and ViTs, found no residual blocks it knows')
    for b in out:
        parent = b.name.rsplit('.', 1)[0] if '.' in b.name else ''
        if not isinstance(model.get_submodule(parent), nn.Sequential):
            raise ValueError(f'{_model_name(model)}: block {b.name} does not sit in an nn.Sequential')
    return out


# ----------------------------------------------------------------------------------------------------
# a model as  stem -> [block_0 ... block_{L-1}] -> head  (what greedy's activation caching needs)

class _Chain:
    def __init__(self, model: nn.Module, blocks: List[BlockInfo]):
        from timm.models.resnet import ResNet
        from timm.models.vision_transformer import VisionTransformer
        self.blocks = [model.get_submodule(b.name) for b in blocks]
        if hasattr(model, 'forward_stem'):  # sdzoo's CIFAR ResNet: stem -> stages of blocks -> head
            self.stem = model.forward_stem
            self.head = model.forward_head
        elif isinstance(model, VisionTransformer):
            def stem(x):
                x = model._pos_embed(model.patch_embed(x))
                return model.norm_pre(model.patch_drop(x))
            self.stem = stem
            self.head = lambda x: model.forward_head(model.norm(x))
        elif isinstance(model, ResNet):
            self.stem = lambda x: model.maxpool(model.act1(model.bn1(model.conv1(x))))
            self.head = model.forward_head
        else:
            raise ValueError(f"{_model_name(model)}: strategy 'greedy' has no stem/head split for "
                             f"{type(model).__name__}: use strategy='survival' or 'every_other'")

    def run(self, x: torch.Tensor, start: int, removed: set, replace: Dict[int, nn.Module],
            stop: Optional[int] = None) -> torch.Tensor:
        for i in range(start, len(self.blocks) if stop is None else stop):
            x = replace[i](x) if i in removed else self.blocks[i](x)
        return x


def _batched(fn, x: torch.Tensor, bs: int = _BATCH) -> torch.Tensor:
    return torch.cat([fn(x[i:i + bs]) for i in range(0, x.shape[0], bs)])


def _kl(logits: torch.Tensor, target_logp: torch.Tensor) -> float:
    return F.kl_div(F.log_softmax(logits, 1), target_logp, log_target=True, reduction='batchmean').item()


class _GreedyState:
    """Calibration activations of the current pruned network: ``cache[i]`` is the input of block ``i``."""

    def __init__(self, model: nn.Module, calib_x: torch.Tensor):
        self.infos = residual_blocks(model)
        self.chain = _Chain(model, self.infos)
        self.replace = {b.index: b.replacement() for b in self.infos}
        self.removed: set = set()
        self.target = F.log_softmax(_batched(model, calib_x), 1)
        self.cache: List[Optional[torch.Tensor]] = [None] * (len(self.infos) + 1)
        self.cache[0] = _batched(self.chain.stem, calib_x)
        self.refresh(0)

    def refresh(self, start: int) -> None:
        for i in range(start, len(self.infos)):
            self.cache[i + 1] = _batched(lambda t: self.chain.run(t, i, self.removed, self.replace, i + 1),
                                         self.cache[i])

    def score(self, j: int) -> float:
        rm = self.removed | {j}
        return _kl(_batched(lambda t: self.chain.head(self.chain.run(t, j, rm, self.replace)), self.cache[j]),
                   self.target)


@torch.inference_mode()
def greedy_order(model: nn.Module, calib_x: torch.Tensor, n_remove: Optional[int] = None,
                 log: Optional[Callable[[str], None]] = None,
                 saving: Optional[Dict[str, float]] = None) -> List[Tuple[str, float]]:
    """Block names in greedy removal order with the KL to the full model after each removal.

    Scoring a candidate runs only the blocks after it (cached activations). Lazy: candidates sit in a heap
    keyed by their last (stale) cost; the best is re-scored and taken if still no worse than the next stale one.
    ``saving`` (block name -> what removing it saves, e.g. its latency; default 1 each) ranks candidates by KL
    increase per unit saved instead."""
    model.eval()
    st = _GreedyState(model, calib_x)
    remaining = [b.index for b in st.infos if not b.downsampling]
    n_remove = len(remaining) if n_remove is None else min(n_remove, len(remaining))
    unknown = sorted(set(saving or {}) - {b.name for b in st.infos})
    if unknown:
        raise ValueError(f'{_model_name(model)} has no residual block {unknown[0]!r} (saving=)')
    per = {b.index: float((saving or {}).get(b.name, 1.0)) for b in st.infos}
    if not all(v > 0 and math.isfinite(v) for v in per.values()):
        raise ValueError('saving= values must be finite and > 0 (what removing each block saves)')
    cur = 0.0
    heap: List[Tuple[float, int]] = []
    order: List[Tuple[str, float]] = []
    while len(order) < n_remove:
        if not heap:
            heap = [((st.score(k) - cur) / per[k], k) for k in remaining]
            heapq.heapify(heap)
            fresh = set(remaining)
        while True:
            d, j = heapq.heappop(heap)
            if j in fresh:
                break
            d = (st.score(j) - cur) / per[j]
            fresh.add(j)
            if not heap or d <= heap[0][0]:
                break
            heapq.heappush(heap, (d, j))
        cur += d * per[j]
        st.removed.add(j)
        remaining.remove(j)
        order.append((st.infos[j].name, cur))
        fresh = set()
        st.refresh(j)
        if log:
            log(f'greedy: removed {len(order)} {st.infos[j].name} kl={cur:.4f}')
    return order


def _check_keep(model: nn.Module, infos: List[BlockInfo], keep, strategy: str) -> int:
    if strategy not in STRATEGIES:
        raise ValueError(f'unknown strategy {strategy!r}: expected one of {", ".join(STRATEGIES)}')
    if isinstance(keep, bool) or not isinstance(keep, int):
        raise ValueError(f'keep must be an int, got {keep!r}')
    fixed = sum(b.downsampling for b in infos)
    low = max(1, fixed)
    if not low <= keep <= len(infos):
        raise ValueError(f'{_model_name(model)}: keep must lie in {low}..{len(infos)} (of {len(infos)} blocks, '
                         f'{fixed} downsampling ones always stay), got {keep}')
    return len(infos) - keep


def _static_choice(infos: List[BlockInfo], keep: int, n_remove: int, strategy: str) -> List[str]:
    removable = [b for b in infos if not b.downsampling]
    if strategy == 'survival':  # lowest p first; ties (uniform schedule): deepest first
        return [b.name for b in sorted(removable, key=lambda b: (b.survival_prob, -b.index))[:n_remove]]
    n_keep_rm = keep - (len(infos) - len(removable))  # every_other: spread the kept ones evenly
    r = len(removable)
    keep_pos = {int(math.floor((k + 0.5) * r / n_keep_rm)) for k in range(n_keep_rm)} if n_keep_rm else set()
    return [b.name for i, b in enumerate(removable) if i not in keep_pos]


# ----------------------------------------------------------------------------------------------------
# data: training images only (calibration: the held-out val split if any, else train)

def load_images(model: nn.Module, data: str, split: str, n: Optional[int], seed: int = 0, skip: int = 0,
                with_labels: bool = False):
    """``(x, description)``: ``n`` random images of ``split`` ('val' falls back to 'train') of data set
    ``data`` (a name such as ``cifar10`` or a folder), normalized for ``model`` as ``sdzoo validate`` does.

    The draw is a seeded permutation: ``skip`` leaves out its first images, so ``skip=k`` with the same seed
    gives images disjoint from an ``n=k`` draw (an accuracy gate that never sees greedy's calibration images);
    ``n=None`` takes the rest. ``with_labels``: ``(x, labels, description)``."""
    from ..data.images import ImageGeometry
    from ..data.sources import load_splits, normalized, split_pixels
    from .load import data_config
    dcfg = data_config(model)
    c, h, w = (int(v) for v in dcfg['input_size'])
    try:
        splits = load_splits(str(data), (c, h, w), geometry=ImageGeometry.from_config(dcfg))
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f'cannot read data set {data!r}: {str(e).splitlines()[0]}') from None
    n_cls = getattr(model, 'num_classes', None)
    if n_cls and splits.num_classes != n_cls:
        raise ValueError(f'data set {data!r} has {splits.num_classes} classes, the model has {n_cls}')
    chosen = splits.val if split == 'val' and splits.val is not None and len(splits.val) else splits.train
    used = 'val' if chosen is splits.val else 'train'
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(chosen), generator=g)
    idx = perm[skip:None if n is None else skip + n].sort().values
    x = torch.from_numpy(normalized(split_pixels(chosen, idx.tolist(), (c, h, w), used), dcfg['mean'], dcfg['std']))
    desc = f'{len(idx)} {used} images of {splits.name}'
    if with_labels:
        return x.contiguous(), chosen.labels[idx], desc
    return x.contiguous(), desc


def _first_removed_index(model: nn.Module) -> int:
    names = [n for n, _ in model.named_modules()]
    skipped = [n for n, m in model.named_modules() if isinstance(m, SkippedBlock)]
    return min(names.index(n) for n in skipped) if skipped else len(names)


@torch.no_grad()
def bn_recalibrate(model: nn.Module, x: torch.Tensor, only_after_removed: bool = True) -> int:
    """Re-estimate BatchNorm running stats in place (cumulative average over ``x``) with every other module
    (stochastic depth included) in eval mode; ``only_after_removed``: BNs before the first removed block keep
    their statistics (their inputs did not change; re-estimating them measurably hurts). Returns how many BNs."""
    model.eval()
    first = _first_removed_index(model)
    names = [n for n, _ in model.named_modules()]
    bns = [m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and (not only_after_removed or names.index(n) > first)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for i in range(0, x.shape[0], _BATCH):
            model(x[i:i + _BATCH])
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
            m.eval()
    return len(bns)


# ----------------------------------------------------------------------------------------------------
# healing: a short distillation at the reduced depth

def _augment(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """CIFAR-style random crop (zero padding, i.e. the mean colour after normalization) and horizontal flip."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        crop = xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def _stage_modules(model: nn.Module) -> List[str]:
    """Names of the modules that hold residual blocks (a ResNet's layer1..4, a ViT's blocks): their outputs are the
    features :func:`heal` can match."""
    return list(dict.fromkeys(b.name.rsplit('.', 1)[0] for b in residual_blocks(model) if '.' in b.name))


class _StageOutputs:
    """Forward hooks that keep the named modules' latest outputs."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        self.out: Dict[str, torch.Tensor] = {}
        self.handles = [model.get_submodule(n).register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name: str):
        def hook(_module, _inputs, output):
            self.out[name] = output
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def heal(student: nn.Module, teacher: nn.Module, x: torch.Tensor, steps: int, batch_size: int = 64,
         lr: Optional[float] = None, temperature: float = 1.0, train_bn: bool = False, augment: bool = True,
         seed: int = 0, log: Optional[Callable[[str], None]] = None, feature_weight: float = 0.0,
         mixup_alpha: float = 0.0) -> Dict:
    """Distil ``teacher`` (the full network) into ``student`` (its pruned copy) in place: ``steps`` SGD steps on
    (augmented) training images ``x``, loss KL(teacher || student) at ``temperature``, cosine-decayed. Needs no
    labels. The student runs as it is served (eval mode: every kept block scaled by its p_l, BatchNorms on
    their re-estimated statistics); ``train_bn`` lets the BatchNorms follow the batches instead, which measured
    worse: their statistics drift to the augmented crops (sd_resnet20, 6 of 9 blocks: KL to the full model on
    held-out images 0.19 -> 0.30 with, 0.19 -> 0.14 without). SGD's default lr 0.002 was chosen on the 5,000 held-out
    training images (sd_resnet110, greedy + BN, 300 steps; val top-1 at 42 of 54 blocks: 90.04 unhealed, 90.26 at
    0.002, 90.22 at 0.005; at 36 blocks 89.08 -> 89.70 at 0.002): lr 0.01 cost the mild cuts (test 90.05 at 42 blocks
    against 90.33 unhealed, benchmarks/results/depth.md). AdamW's default 1e-4 likewise (the CIFAR ViT, 7 blocks; val
    top-1 with 1 / 2 removed: 83.06 / 80.10 unhealed, 83.54 / 80.58 at 1e-5, 83.80 / 80.84 at 3e-5, 83.92 / 81.72 at
    1e-4; benchmarks/results/depth_heal_lr.md). ``feature_weight`` > 0 adds the stages' outputs to the loss
    (mean squared difference to the teacher's, over the teacher's mean square, per stage, times the weight); the
    record's ``kl_first`` / ``kl_last`` are then the whole loss. ``mixup_alpha`` > 0 blends each batch with a
    shuffled copy of itself (weight ~ Beta(alpha, alpha), drawn from torch's global generator), teacher and student
    seeing the same blend ("function matching", Beyer et al. 2022); research, not a default (depth_heal_lr.md)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f'heal steps must be an int >= 0, got {steps!r}')
    if not steps:
        return {}
    bns = [m for m in student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    params = [p for p in student.parameters() if p.requires_grad]
    if bns:  # convnets: SGD as they were trained; transformers: AdamW
        lr = 0.002 if lr is None else lr
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    else:
        lr = 1e-4 if lr is None else lr
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    g = torch.Generator().manual_seed(seed)
    teacher.eval()
    student.eval()
    for m in bns if train_bn else ():
        m.train()
    losses: List[float] = []
    stages = _stage_modules(teacher) if feature_weight else []
    t_feats, s_feats = _StageOutputs(teacher, stages), _StageOutputs(student, stages)
    try:
        for step in range(steps):
            xb = x[torch.randint(0, x.shape[0], (batch_size,), generator=g)]
            xb = _augment(xb, g) if augment else xb
            if mixup_alpha:
                lam = float(torch.distributions.Beta(mixup_alpha, mixup_alpha).sample())
                xb = lam * xb + (1 - lam) * xb[torch.randperm(xb.shape[0], generator=g)]
            with torch.no_grad():
                target = F.log_softmax(teacher(xb) / temperature, -1)
            loss = F.kl_div(F.log_softmax(student(xb) / temperature, -1), target, log_target=True,
                            reduction='batchmean') * temperature ** 2
            for n in stages:
                ft = t_feats.out[n].detach()
                loss = loss + feature_weight * F.mse_loss(s_feats.out[n], ft) / ft.pow(2).mean().clamp_min(1e-12)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if log and (step + 1) % max(1, steps // 10) == 0:
                log(f'heal step {step + 1}/{steps}: KL {statistics.fmean(losses[-10:]):.4f}')
    finally:
        t_feats.close()
        s_feats.close()
        student.eval()
        for p_ in params:
            p_.grad = None
    extra = dict(feature_weight=feature_weight, feature_stages=stages) if feature_weight else {}
    if mixup_alpha:
        extra['mixup_alpha'] = mixup_alpha
    return dict(steps=steps, batch_size=batch_size, lr=lr, temperature=temperature, train_bn=train_bn, augment=augment,
                **extra,
                optimizer=type(opt).__name__, kl_first=round(statistics.fmean(losses[:10]), 5),
                kl_last=round(statistics.fmean(losses[-10:]), 5))

DEFAULT_HEAL_STEPS = 300


def default_heal_steps(data: Optional[str]) -> int:
    """Heal whenever there are training images to heal on. Paired on the full CIFAR-10 test split, greedy + BN
    against the same + 300 heal steps over 19 cuts of five networks (sd_resnet110 300 and 160 epochs, its
    constant-depth twin, sd_resnet56, the CIFAR ViT; benchmarks/results/depth.md): never worse beyond chance (the
    two losses, sd_resnet56 at 3 and 6 of 27 blocks removed, 0.10 and 0.11 points with p 0.42 and 0.51), better
    beyond chance in 11 of 19 (+0.56 to +4.60 points, the most at the deepest cuts). Its price is time: minutes of
    an sd_resnet110 export."""
    return DEFAULT_HEAL_STEPS if data is not None else 0

# ----------------------------------------------------------------------------------------------------

def remove_blocks(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """In place: the named residual blocks become their shortcut (what :func:`prune_depth` does once it has
    chosen them, and what a saved pruned model's constructor does with ``removed_blocks``). The model keeps
    its full-depth survival probabilities (``sd_full_survival_probs``) and the removed names
    (``sd_removed_blocks``): together they are the constructor arguments that rebuild it."""
    infos = residual_blocks(model)
    by_name = {b.name: b for b in infos}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f'{_model_name(model)} has no residual block {unknown[0]!r} '
                         f'(its blocks: {infos[0].name} .. {infos[-1].name})')
    fixed = [n for n in names if by_name[n].downsampling]
    if fixed:
        raise ValueError(f'{_model_name(model)}: block {fixed[0]} changes the shape and cannot be removed')
    for n in names:
        parent, child = n.rsplit('.', 1) if '.' in n else ('', n)
        setattr(model.get_submodule(parent), child, by_name[n].replacement())
    gone = set(names)
    kept = [b for b in infos if b.name not in gone]
    if hasattr(model, 'survival_probs'):
        model.sd_full_survival_probs = list(model.survival_probs)
        if len(model.survival_probs) == len(infos):  # one SD group per residual block: where the kept ones sat
            model.sd_kept_groups = [b.index for b in kept]
        model.survival_probs = [b.survival_prob for b in kept]
    model.sd_removed_blocks = [b.name for b in infos if b.name in gone]
    return model



def prune_depth(model: nn.Module, keep: int, strategy: str = 'greedy', data: Optional[str] = None,
                calibration_images: int = 500, bn_images: int = 2000, heal_steps: Optional[int] = None,
                heal_images: int = 20000, seed: int = 0, log: Optional[Callable[[str], None]] = None,
                saving: Optional[Dict[str, float]] = None) -> nn.Module:
    """A copy of ``model`` keeping ``keep`` residual blocks (the others become their shortcut), in eval mode.

    ``strategy`` 'greedy' (default) chooses by the KL to the full model on ``calibration_images`` held-out
    training images of ``data`` (a data set name such as ``cifar10``, or an image folder); with ``data``, the
    BatchNorms after the first removed block re-estimate their statistics on ``bn_images`` training images
    (0: off), and then ``heal_steps`` steps distil the full model into the pruned one (:func:`heal`) on up to
    ``heal_images`` training images: by default :data:`DEFAULT_HEAL_STEPS` whenever ``data`` is given (0 turns
    it off; :func:`default_heal_steps` says why). ``saving`` goes to :func:`greedy_order` (KL per unit saved; research,
    benchmarks/depth_latency_greedy.py). The choice is recorded in ``model.pretrained_cfg['depth']``. ValueError
    (one line) on bad input.
    """
    infos = residual_blocks(model)
    n_remove = _check_keep(model, infos, keep, strategy)
    if saving and strategy != 'greedy':
        raise ValueError(f"saving= ranks greedy's candidates; strategy {strategy!r} takes none")
    if strategy == 'greedy' and data is None and n_remove:
        raise ValueError("strategy 'greedy' needs data= (a data set name such as cifar10, or an image folder): "
                         "it scores blocks on held-out training images")
    heal_steps = default_heal_steps(data) if heal_steps is None else heal_steps
    for what, v, lo in (('calibration_images', calibration_images, 1), ('bn_images', bn_images, 0),
                        ('heal_steps', heal_steps, 0), ('heal_images', heal_images, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f'{what} must be an int >= {lo}, got {v!r}')
    if heal_steps and data is None:
        raise ValueError('heal_steps needs data= (training images to distil the full model on)')
    was_training = model.training
    model.eval()
    record: Dict = {}
    try:
        if not n_remove:
            remove: List[str] = []
        elif strategy == 'greedy':
            calib, record['calibration'] = load_images(model, data, 'val', calibration_images, seed)
            remove = [n for n, _ in greedy_order(model, calib, n_remove, log=log, saving=saving)]
            if saving:
                record['saving'] = dict(saving)
        else:
            remove = _static_choice(infos, keep, n_remove, strategy)
    finally:
        model.train(was_training)
    out = remove_blocks(copy.deepcopy(model).eval(), remove)
    if data is not None and bn_images and remove:
        x, desc = load_images(model, data, 'train', bn_images, seed + 1)
        if bn_recalibrate(out, x):
            record['bn_recalibration'] = desc
    if heal_steps and remove:
        x, desc = load_images(model, data, 'train', heal_images, seed + 2)
        record['heal'] = dict(heal(out, model, x, heal_steps, seed=seed, log=log), images=desc)
    gone = set(remove)
    depth = {'kept_blocks': [b.name for b in infos if b.name not in gone],
             'removed_blocks': [b.name for b in infos if b.name in gone],
             'strategy': strategy, 'blocks_total': len(infos), **record}
    out.pretrained_cfg = dict(getattr(out, 'pretrained_cfg', None) or {}, depth=depth)
    return out.eval()
