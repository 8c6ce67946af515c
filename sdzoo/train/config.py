"""A run's configuration and the stateless schedule functions derived from it."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional, Tuple

from ..models import sd_model_class

__all__ = ['TrainConfig', 'recipe', 'lr_at', 'check_schedule_change', 'jsonable', 'HEAD_INITS', 'KNOWN_HEADS',
           'default_batch_size', 'default_lr', 'default_lr_rule', 'default_epochs', 'default_warmup_steps',
           'VIT_LONG_RUN_STEPS', 'VIT_MAX_FINETUNE_LR', 'MAX_FINETUNE_LR', 'NEW_HEAD_STEPS',
           'VIT_NEW_HEAD_STEPS']

# --head: how a fine-tune's new classifier starts (--keep-head keeps the old one as it is)
HEAD_INITS = ('auto', 'matched', 'predicted', 'probe', 'fresh')
# heads whose start already classifies the folder's classes: the matched recipe (3 epochs, 0.001 x bs/16) and an
# incumbent start (sdzoo.train.selection)
KNOWN_HEADS = ('matched', 'keep', 'predicted')


@dataclass
class TrainConfig:
    """Everything that defines a run; saved as ``RUN_DIR/config.json`` and inside checkpoints."""
    model: str
    data: str = 'cifar10'
    out: str = 'runs/run'
    epochs: Optional[int] = 500         # None (fine-tune recipe): default_epochs() once the data is known
    batch_size: Optional[int] = 128     # None: default_batch_size()
    lr: Optional[float] = 0.1           # None: default_lr()
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    sched: str = 'step'                  # step | cosine
    milestones: Tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_epochs: Optional[float] = 0.0  # None: default_warmup_steps() / steps per epoch
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    mixup: float = 0.0                   # timm Mixup: mixup alpha (0: off)
    cutmix: float = 0.0                  # timm Mixup: cutmix alpha (0: off)
    ema: bool = False
    ema_decay: float = 0.9998
    drop_path_rate: Optional[float] = None
    sd_mode: Optional[str] = None
    sd_scaling: Optional[str] = None
    pretrained: bool = False
    pretrained_file: Optional[str] = None
    num_classes: Optional[int] = None
    in_chans: Optional[int] = None
    val_size: Optional[int] = None       # None: data set default (CIFAR-10: 5,000)
    train_subset: Optional[int] = None   # use only N training images (smoke tests, quick runs)
    val_subset: Optional[int] = None
    cifar_aug: bool = True               # 4-px pad + random crop + flip on small images
    amp: str = 'auto'                    # auto | bf16 | fp16 | none
    channels_last: Optional[bool] = None  # None: on for CPU/CUDA convnets
    compile: Optional[str] = None        # torch.compile backend for the training forward (None: eager)
    seed: int = 0
    workers: int = 2
    threads: Optional[int] = None
    checkpoint_minutes: float = 10.0
    log_seconds: float = 300.0           # headless runs: a progress line this often (0: every step)
    device: str = 'auto'
    deterministic: bool = False
    eval_test: bool = True
    optimizer: str = 'sgd'               # sgd | adamw
    reset_head: bool = False             # fine-tuning on new classes: a fresh classifier (timm's reset_classifier)
    head_init: str = 'fresh'             # with reset_head: auto | matched | predicted | probe | fresh (HEAD_INITS)
    drop_last: bool = True               # False: every image every epoch, in ceil(N/bs) near-equal batches
    class_weights: str = 'none'          # none | balanced (loss weight N / (K * n_c))
    holdout: str = 'last'                # last (fixed last-N per class) | stratified (random, split_seed)
    split_seed: int = 0
    select: str = 'last'                 # the weights a run leaves: last | start-or-last | best (sdzoo.train.selection)
    recipe_notes: Dict[str, str] = field(default_factory=dict)  # how each derived default was chosen
    convert: Optional[bool] = None       # timm models: sdzoo.convert (None: when supported and drop_path_rate > 0)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'TrainConfig':
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f'unknown training config keys: {sorted(unknown)}')
        d = dict(d)
        if 'milestones' in d and d['milestones'] is not None:
            d['milestones'] = tuple(d['milestones'])
        return cls(**d)

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)
        need(self.epochs is None or self.epochs >= 1, f'--epochs must be >= 1, got {self.epochs}')
        need(self.batch_size is None or self.batch_size >= 1, f'--batch-size must be >= 1, got {self.batch_size}')
        need(self.lr is None or self.lr > 0, f'--lr must be > 0, got {self.lr}')
        need(self.head_init in HEAD_INITS + ('partial',), f"--head must be one of {'|'.join(HEAD_INITS)}, got {self.head_init!r}")
        need(self.class_weights in ('none', 'balanced'), f'--class-weights must be none|balanced, got '
             f'{self.class_weights!r}')
        need(self.select in ('last', 'start-or-last', 'best'), f'--select must be last|start-or-last|best, got {self.select!r}')
        need(self.holdout in ('last', 'stratified'), f'holdout must be last|stratified, got {self.holdout!r}')
        need(self.sched in ('step', 'cosine'), f"--sched must be 'step' or 'cosine', got {self.sched!r}")
        need(self.amp in ('auto', 'bf16', 'fp16', 'none'), f'--amp must be auto|bf16|fp16|none, got {self.amp!r}')
        need(self.optimizer in ('sgd', 'adamw'), f'--opt must be sgd|adamw, got {self.optimizer!r}')
        need(0 <= self.label_smoothing < 1, f'--smoothing must lie in [0, 1), got {self.label_smoothing}')
        need(all(0 < m < 1 for m in self.milestones), f'milestones are fractions in (0, 1), got {self.milestones}')
        need(self.warmup_epochs is None or self.warmup_epochs >= 0,
             f'--warmup-epochs must be >= 0, got {self.warmup_epochs}')
        need(self.checkpoint_minutes > 0, '--checkpoint-minutes must be > 0')
        if self.compile is not None:
            import torch._dynamo
            need(self.compile in torch._dynamo.list_backends(exclude_tags=()),
                 f"--compile: unknown torch.compile backend {self.compile!r} (this torch has "
                 f"{', '.join(torch._dynamo.list_backends())}, and debug ones such as aot_eager)")
        need(self.log_seconds >= 0, f'--log-seconds must be >= 0, got {self.log_seconds}')
        need(0 < self.ema_decay < 1, f'--ema-decay must lie in (0, 1), got {self.ema_decay}')
        need(self.mixup >= 0 and self.cutmix >= 0, f'--mixup/--cutmix alphas must be >= 0, got '
             f'{self.mixup}/{self.cutmix}')
        need(not (self.mixup or self.cutmix) or self.batch_size is None or self.batch_size % 2 == 0,
             f'--mixup/--cutmix mix a batch with its mirror: --batch-size must be even, got {self.batch_size}')


def is_vit(model_name: str) -> bool:
    if getattr(sd_model_class(model_name), 'recipe_family', None) == 'vit':
        return True
    return model_name.split('.', 1)[0].startswith(('vit_', 'deit', 'eva', 'beit'))


def recipe(model_name: str, finetune: bool = False) -> Dict[str, Any]:
    """Default hyper-parameters: the paper's CIFAR recipe, or the fine-tuning recipe (issue 45).

    The fine-tuning recipe leaves ``epochs``, ``batch_size``, ``lr`` and ``warmup_epochs`` as None: they
    depend on the training-set size and the head, and the trainer derives them (``default_*`` below) once
    the data is loaded, prints them and records them in the run's config.json.
    """
    if finetune:
        d = dict(epochs=None, batch_size=None, lr=None, sched='cosine', warmup_epochs=None, weight_decay=1e-4,
                 head_init='auto', drop_last=False, class_weights='balanced', holdout='stratified', select='start-or-last')
        if is_vit(model_name):  # SGD at the CNN rate wrecked the ViT (62.8% vs 88.9% probe): AdamW, small lr
            d.update(optimizer='adamw', weight_decay=0.05)
        return d
    if getattr(sd_model_class(model_name), 'recipe_family', None) == 'vit':
        return dict(epochs=200, lr=5e-4, optimizer='adamw', weight_decay=0.05, sched='cosine',
                    warmup_epochs=5, label_smoothing=0.1, drop_path_rate=0.1)
    return dict(epochs=500, lr=0.1, sched='step', milestones=(0.5, 0.75), weight_decay=1e-4)


def default_batch_size(n_train: int) -> int:
    """clamp(2**floor(log2(N/10)), 16, 128): about ten steps per epoch on small sets, 128 from 1,280 images."""
    b = 2 ** int(math.floor(math.log2(max(n_train, 1) / 10))) if n_train >= 10 else 1
    return int(min(128, max(16, b)))


VIT_MAX_FINETUNE_LR = 4e-4
VIT_LONG_RUN_STEPS = 300
MAX_FINETUNE_LR = 0.08  # a convnet's new-head SGD rate at batch 128, where the full Fashion-MNIST fine-tune was measured


def default_lr(batch_size: int, head: str, vit: bool = False, steps: Optional[int] = None) -> float:
    """A new head: 0.02 per 16 images (SGD) up to MAX_FINETUNE_LR, so batch 128 (1,280 images and more) keeps the
    0.08 the full Fashion-MNIST run was measured at. Against 0.01 per 16 (benchmarks/results/finetune.md, 3 seeds,
    paired): random Fashion-MNIST subsets of 500 and 1,000 images +0.7 to +1.1 points on 10,000 test images, every
    seed beyond chance; f5x50 +0.5 (p 0.004); f3hard at 3 epochs +2.3 (p 0.002); the rest within chance (f3hard
    without --epochs -0.9, p 0.22). 0.001 per 16 for a head copied from matching class names: the network
    already knows those classes, and on four CIFAR folders 0.005 per 16 fell up to 2.6 points below the
    restricted zero-shot (unbal) where 0.001 stayed within 0.6 (benchmarks/results/finetune.md). ViTs: AdamW,
    5e-6 per 16 matched (closest to the ViT's zero-shot on two folders, 3 seeds); a new head 5e-5 per 16, or,
    for a run of at least VIT_LONG_RUN_STEPS ``steps`` (what an omitted --epochs gives), 3e-4 per 16 up to
    VIT_MAX_FINETUNE_LR. On the three Fashion-MNIST folders (3 seeds, ~300 steps) the higher rate won on every one
    (f3x125 / f3hard / f5x50 +0.9 / +2.1 / +0.9 points, paired p <= 0.004), but with --epochs 3 (~33 steps) it
    lost on two (-0.8 / -2.4; f5x50 +0.1); the cap keeps a large set's batch 128 at the rate the first rule gave it."""
    return default_lr_rule(batch_size, head, vit, steps)[0]


def default_lr_rule(batch_size: int, head: str, vit: bool = False, steps: Optional[int] = None) -> Tuple[float, str]:
    """:func:`default_lr` and the rule that gave it, as the recipe prints it (``head``: 'matched' or 'new')."""
    bs = batch_size
    if vit and head != 'matched' and steps is not None and steps >= VIT_LONG_RUN_STEPS:
        return (min(3e-4 * bs / 16, VIT_MAX_FINETUNE_LR),
                f'min(3e-4 * {bs}/16, {VIT_MAX_FINETUNE_LR:g}) (new head, AdamW, ViT, {steps} >= {VIT_LONG_RUN_STEPS} '
                'steps)')
    if vit:
        lr, base = (5e-6 * bs / 16, '5e-6') if head == 'matched' else (5e-5 * bs / 16, '5e-5')
    elif head == 'matched':
        lr, base = 0.001 * bs / 16, '0.001'
    else:
        return (min(0.02 * bs / 16, MAX_FINETUNE_LR),
                f'min(0.02 * {bs}/16, {MAX_FINETUNE_LR:g}) (new head)')
    short = f', {steps} < {VIT_LONG_RUN_STEPS} steps' if vit and head != 'matched' and steps is not None else ''
    return lr, f"{base} * {bs}/16 ({head} head{', AdamW, ViT' if vit else ''}{short})"


NEW_HEAD_STEPS = 600      # an omitted --epochs with a new head: at least this many optimizer steps (and 10 epochs)
VIT_NEW_HEAD_STEPS = 300  # ... for a ViT


def default_epochs(steps_per_epoch: int, head: str, vit: bool = False) -> int:
    """A new head: at least 10 epochs and NEW_HEAD_STEPS steps (a ViT: VIT_NEW_HEAD_STEPS); a head from matching
    class names: 3 epochs.

    600 steps against the earlier 300 for a convnet (benchmarks/results/finetune.md, "600 steps against 300 for a
    new head", 3 seeds, paired on the test images): f3hard +1.5 (sd_resnet20) and +1.1 (sd_resnet110) points, which
    brought both within 1 point of their best flag-grid cell; random Fashion-MNIST subsets of 1,000 images +0.6
    (sd_resnet20, p 2e-6); the other folders within chance. The ViT lost 1.2 points on f3hard (p 0.13) and gained
    0.6 on f5x50 (p 0.04), and at 600 steps f3hard fell 2 points below its best flag-grid cell, so it keeps 300.
    The price is twice the wall time of a convnet's default new-head run."""
    if head == 'matched':
        return 3
    return max(10, -(-(VIT_NEW_HEAD_STEPS if vit else NEW_HEAD_STEPS) // max(1, steps_per_epoch)))


def default_drop_path_rate(trained: Optional[float], vit: bool) -> Optional[float]:
    """0 for a convnet fine-tune (the trained p_l are moved into the weights), else None (keep the weights' rate).

    Measured from sd_resnet20.sd_cifar10 on Fashion-MNIST (benchmarks/results/finetune_sd_size.md, 10,000 test
    images): p_L 0.5 kept scored on average 0.6-2.0 points below rate 0 on random subsets of 500 to 20,000 training
    images (2 seeds; one seed at 500 was 0.4 above) and 1.2 below on all 55,000 (it underfits: train top-1 below
    val); on the small benchmark folders rate 0 won at 3 epochs (f3x125 97.8 vs 96.8, f5x50 94.2 vs 93.2, f3hard
    73.5 vs 70.8, 3 seeds) and tied at the 300-step default. The price is depth on demand: pruned below two thirds of its blocks, an SD-off fine-tune
    falls far below an SD-kept one (benchmarks/results/finetune_sd_depth.md). A ViT keeps its rate (not measured)."""
    return 0.0 if not vit and trained else None


def default_warmup_steps(steps_per_epoch: int, epochs: int) -> int:
    """Half an epoch of linear warm-up, at most 10% of all steps, at least one step."""
    return max(1, min(int(round(steps_per_epoch / 2)), int(round(0.1 * steps_per_epoch * epochs))))


def lr_at(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Learning rate of global step ``step`` (stateless, so resume needs no scheduler state)."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.sched == 'step':
        epoch = step // steps_per_epoch + 1  # 1-based like the paper's main.lua
        return cfg.lr * cfg.gamma ** sum(epoch >= m * cfg.epochs for m in cfg.milestones)
    total = cfg.epochs * steps_per_epoch
    t = (step - warmup) / max(1, total - warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def check_schedule_change(old: TrainConfig, new: TrainConfig, done_steps: int, steps_per_epoch: int) -> None:
    """A resumed run may change its length (``--epochs``) only while the learning rates of every step it
    already took stay the same: then the new run is exactly one that had that length from the start."""
    if old.epochs == new.epochs:
        return
    if new.epochs * steps_per_epoch < done_steps:
        raise ValueError(f'--epochs {new.epochs}: the run already took {done_steps} steps '
                         f'({done_steps / steps_per_epoch:.1f} epochs)')
    for step in range(done_steps):
        a, b = lr_at(step, steps_per_epoch, old), lr_at(step, steps_per_epoch, new)
        if not math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0):
            raise ValueError(
                f'--epochs {new.epochs} (was {old.epochs}) changes the learning rate of a step already taken '
                f'(step {step}, epoch {step // steps_per_epoch + 1}: {a:.4g} -> {b:.4g}); a run can change its '
                f'length only before its schedule diverges')


def jsonable(obj: Any) -> Any:
    """Tuples as lists, recursively: what json writes, so a config compares equal after a round trip."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj
