"""The fine-tuning recipe's data-dependent defaults (issue 45) and how a fine-tune's new head starts.

``sdzoo finetune MODEL --data FOLDER --num-classes K`` needs no recipe flags: batch size, learning rate,
epochs and warm-up follow from the training-set size and from how the head starts (``config.py``'s
``default_*`` rules); the head starts from the pretrained rows of class names the folder shares with the
model's ``label_names``, else from a linear probe on frozen features. Measurements:
``benchmarks/results/finetune.md``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import (KNOWN_HEADS, NEW_HEAD_STEPS, VIT_NEW_HEAD_STEPS, TrainConfig, default_batch_size,
                     default_drop_path_rate, default_epochs, default_lr_rule, default_warmup_steps, is_vit)

__all__ = ['match_classes', 'match_by_prediction', 'probe_cv_top1', 'predicted_pairs', 'PREDICTED_MARGIN',
           'PREDICTED_IMAGES_PER_CLASS', 'resolve_head', 'resolve_recipe', 'recipe_lines', 'init_head', 'class_weights',
           'fit_linear_probe']

# Folder classes are "pretrained labels under other names" when each class's images mostly get a label of their own
# (no label twice) and those pretrained rows, restricted to the folder's labels, classify the folder's training images
# at least as well as a linear probe fitted to them does under 5-fold cross-validation, less this margin (points).
# Measured (benchmarks/predicted_head.py, 2026-12-08, all three shipped models): the rows minus the probe read 0.0 to
# +8.9 points on benchmarks/finetune.py's seven CIFAR-10 folders (among them the README cut renamed, and the same
# classes from CIFAR-10 test images the networks never saw, "fresh") and -18 to -27 on the Fashion-MNIST folders
# whose classes get distinct labels (the others have two classes on one label). A share bar alone could not separate
# them: a Fashion-MNIST class gets one label up to 79% of the time, a class of fresh cat pictures as little as 65%.
PREDICTED_MARGIN = 5.0
PREDICTED_IMAGES_PER_CLASS = 100  # what the decision looks at: the first N training images of each class


def _norm(name: str) -> str:
    return name.lower().replace('_', ' ').replace('-', ' ').strip()


def match_classes(label_names: List[str], classes: List[str]) -> List[Tuple[int, int]]:
    """(new row, pretrained row) for every folder class whose name is one of the pretrained label names
    (case, ``_`` and ``-`` ignored)."""
    index = {_norm(n): j for j, n in enumerate(label_names)}
    return [(i, index[_norm(c)]) for i, c in enumerate(classes) if _norm(c) in index]


def match_by_prediction(pred: torch.Tensor, labels: torch.Tensor, k: int) -> List[Tuple[int, int, float]]:
    """(new row, pretrained row, share) for every folder class: the pretrained label ``pred`` most of its images get;
    [] when a class has no images or two classes get the same label."""
    out = []
    for i in range(k):
        p = pred[labels == i]
        if not len(p):
            return []
        j = int(torch.bincount(p).argmax())
        out.append((i, j, int((p == j).sum()) / len(p)))
    return out if len({j for _, j, _ in out}) == k else []


def probe_cv_top1(feats: torch.Tensor, labels: torch.Tensor, k: int, folds: int = 5, seed: int = 0) -> float:
    """Top-1 (%) of :func:`fit_linear_probe` on ``feats``, each image scored by a probe fitted without it."""
    n = len(labels)
    parts = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).chunk(min(folds, n))
    hits = 0
    for i, held in enumerate(parts):
        rest = torch.cat([q for j, q in enumerate(parts) if j != i])
        w, b = fit_linear_probe(feats[rest], labels[rest], k)
        hits += int(((feats[held] @ w.T + b).argmax(1) == labels[held]).sum())
    return 100.0 * hits / n


def predicted_pairs(model: nn.Module, loader, device: torch.device) -> Tuple[List[Tuple[int, int, float, str]], str]:
    """Rows of the pretrained head for a folder whose classes it knows under other names (see PREDICTED_MARGIN),
    decided on the training images of ``loader`` (unaugmented): [(new row, pretrained row, share, label name)], or
    [] and why not; with a line saying what was measured either way."""
    old = getattr(model, 'sd_old_head', None)
    if old is None:
        return [], 'no pretrained head recorded'
    names, w, b = old
    feats, labels = _features(model, loader, device)
    logits = feats @ w.float().T + (b.float() if b is not None else 0)
    k = int(labels.max()) + 1
    found = match_by_prediction(logits.argmax(1), labels, k)
    if not found:
        return [], f'two classes get the same pretrained label most often ({len(labels)} train images)'
    rows = [j for _, j, _ in found]
    rows_top1 = 100.0 * float((logits[:, rows].argmax(1) == labels).float().mean())
    probe_top1 = probe_cv_top1(feats, labels, k)
    measured = (f'pretrained rows {rows_top1:.1f}% against a linear probe {probe_top1:.1f}% (5-fold cross-validated) '
                f'on {len(labels)} train images')
    if rows_top1 < probe_top1 - PREDICTED_MARGIN:
        return [], f'classes are not pretrained labels under other names: {measured}'
    return [(i, j, share, names[j] if j < len(names) else str(j)) for i, j, share in found], measured


def resolve_head(cfg: TrainConfig, model: nn.Module, classes: List[str]) -> Tuple[str, List[Tuple[int, int]]]:
    """How the head starts: keep | matched (every class matched by name) | partial | probe | fresh, or
    'predicted' when ``cfg`` asks for rows matched by prediction (decided by the trainer: :func:`predicted_pairs`)."""
    if not cfg.reset_head:
        return 'keep', []
    if cfg.head_init in ('fresh', 'probe', 'predicted'):
        return cfg.head_init, []
    old = getattr(model, 'sd_old_head', None)
    pairs = match_classes(old[0], classes) if old is not None else []
    if cfg.head_init == 'matched' and not pairs:
        names = ', '.join(old[0][:10]) if old is not None else 'none recorded'
        raise ValueError(f"--head matched: none of the classes ({', '.join(classes[:5])}) is one of the "
                         f"pretrained model's label names ({names}); use --head probe or fresh")
    if pairs:
        return ('matched' if len(pairs) == len(classes) else 'partial'), pairs
    return ('probe' if isinstance(_classifier(model), nn.Linear) else 'fresh'), []


def _classifier(model: nn.Module) -> Optional[nn.Module]:
    try:
        return model.get_classifier()
    except AttributeError:
        return None


def _steps_per_epoch(n: int, batch_size: int, world: int, drop_last: bool) -> int:
    per_rank, n_rank = max(1, batch_size // world), -(-n // world)
    return n_rank // per_rank if drop_last else -(-n_rank // per_rank)


def resolve_recipe(cfg: TrainConfig, n_train: int, head: str, world: int = 1) -> TrainConfig:
    """The fine-tuning recipe's None fields filled in from the data (explicit values stay), each with the rule
    that chose it in ``recipe_notes``."""
    notes: Dict[str, str] = dict(cfg.recipe_notes)
    vit = is_vit(cfg.model)
    d: Dict[str, Any] = {}
    bs = cfg.batch_size
    if bs is None:
        bs = d['batch_size'] = default_batch_size(n_train)
        notes['batch_size'] = f'clamp(2**floor(log2({n_train} train images / 10)), 16, 128)'
    spe = _steps_per_epoch(n_train, bs, world, cfg.drop_last)
    rule_head = 'matched' if head in KNOWN_HEADS else 'new'
    epochs = cfg.epochs
    if epochs is None:
        epochs = d['epochs'] = default_epochs(spe, rule_head, vit)
        steps = VIT_NEW_HEAD_STEPS if vit else NEW_HEAD_STEPS
        notes['epochs'] = ('3 (head from pretrained rows)' if rule_head == 'matched'
                           else f'max(10, ceil({steps} steps / {spe} steps per epoch))')
    if cfg.lr is None:
        d['lr'], notes['lr'] = default_lr_rule(bs, rule_head, vit, spe * epochs)
    if cfg.warmup_epochs is None:
        w = default_warmup_steps(spe, epochs)
        d['warmup_epochs'] = w / spe
        notes['warmup_epochs'] = f'{w} steps: max(1, min(half an epoch, 10% of {spe * epochs} steps))'
    if cfg.recipe_notes.get('drop_path_rate') != 'given' and cfg.model.startswith('sd_'):
        rate = default_drop_path_rate(cfg.drop_path_rate, vit)
        if rate is not None:
            d['drop_path_rate'] = rate
            notes['drop_path_rate'] = ('SD off for a convnet fine-tune: p_L 0.5 scored lower on Fashion-MNIST '
                                       'subsets of 500-55,000 images and in 3-epoch folder runs')
    if cfg.head_init == 'auto' or (cfg.head_init == 'matched' and head == 'partial'):
        d['head_init'] = 'fresh' if head == 'keep' else head
        notes['head_init'] = ('auto: pretrained rows of matching class names, else of the labels the pretrained '
                              'head predicts for each class, else a linear probe')
    return replace(cfg, recipe_notes=notes, **d)


def recipe_lines(cfg: TrainConfig, head: str, pairs: List[Tuple[int, int]], classes: List[str],
                 n_train: int, spe: int, rebased_from: Optional[Dict[str, Any]] = None) -> List[str]:
    """What the run will do, one setting a line, saying which came from a flag and which from a rule."""
    given = {k for k, v in cfg.recipe_notes.items() if v == 'given'}

    def line(key: str, value: str) -> str:
        how = 'flag' if key in given else cfg.recipe_notes.get(key, 'default')
        return f'  {key:<14} {value:<22} ({how})'
    warm = int(round((cfg.warmup_epochs or 0) * spe))
    out = [f'fine-tune recipe ({n_train} train images, {len(classes)} classes, {spe} steps/epoch; flags win, '
           'all recorded in config.json):',
           line('batch_size', f'{cfg.batch_size} (drop_last={cfg.drop_last})'),
           line('lr', f'{cfg.lr:.4g} {cfg.sched}, {cfg.optimizer}'),
           line('epochs', f'{cfg.epochs} ({cfg.epochs * spe} steps)'),
           line('warmup_epochs', f'{cfg.warmup_epochs:.4g} ({warm} steps)'),
           line('weight_decay', f'{cfg.weight_decay:g}'),
           line('class_weights', cfg.class_weights),
           line('drop_path_rate', f"{cfg.drop_path_rate}{'' if 'drop_path_rate' in given or 'drop_path_rate' in cfg.recipe_notes else ' (SD kept as trained)'}"),
           *([f"  the weights were trained with {', '.join(f'{k}={v}' for k, v in rebased_from.items())}: each residual "
              'branch is rescaled so that the starting network is the trained one'] if rebased_from else []),
           line('head_init', head),
           line('select', cfg.select)]
    if head == 'predicted' and pairs:
        out.append('  head rows copied from the pretrained head by what it predicts for each class: '
                   + ', '.join(f'{classes[i]} <- {label} ({100 * share:.0f}%)' for i, _, share, label in pairs))
    elif head in ('matched', 'partial'):
        names = [classes[i] for i, _ in pairs]
        rest = [c for i, c in enumerate(classes) if i not in {p for p, _ in pairs}]
        out.append(f"  head rows copied from the pretrained head for {', '.join(names)}"
                   + (f"; fresh rows for {', '.join(rest)}" if rest else ''))
    return out


def class_weights(labels: torch.Tensor, k: int) -> torch.Tensor:
    """N / (K * n_c): every class weighs the same in the loss however many images it has."""
    cnt = torch.bincount(labels, minlength=k).float().clamp(min=1)
    return cnt.sum() / (k * cnt)


def fit_linear_probe(feats: torch.Tensor, labels: torch.Tensor, k: int, l2: float = 1e-3,
                     iters: int = 200) -> Tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced multinomial logistic regression (L2 ``l2`` on W) on frozen features, by LBFGS."""
    w_cls = class_weights(labels, k)
    W = torch.zeros(k, feats.shape[1], requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=iters, line_search_fn='strong_wolfe')

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(feats @ W.T + b, labels, weight=w_cls) + l2 * (W ** 2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return W.detach(), b.detach()


@torch.no_grad()
def _features(model: nn.Module, loader, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    was = model.training
    model.eval()
    fs, ys = [], []
    for x, y in loader.iter_epoch(0):
        f = model.forward_head(model.forward_features(x.to(device)), pre_logits=True)
        fs.append(f.float().flatten(1).cpu())
        ys.append(y)
    model.train(was)
    return torch.cat(fs), torch.cat(ys)


def init_head(model: nn.Module, head: str, pairs: List[Tuple[int, int]], feature_loader,
              device: torch.device) -> Optional[str]:
    """Start the new head as ``head`` says; returns a line saying what was done."""
    old = getattr(model, 'sd_old_head', None)
    if hasattr(model, 'sd_old_head'):
        del model.sd_old_head
    fc = _classifier(model)
    if head in ('matched', 'partial', 'predicted') and old is not None:
        _, w, b = old
        with torch.no_grad():
            for i, j in [p[:2] for p in pairs]:
                fc.weight[i] = w[j].to(fc.weight)
                if b is not None and fc.bias is not None:
                    fc.bias[i] = b[j].to(fc.bias)
        return None  # recipe_lines names the copied rows
    if head == 'probe':
        import time
        t0 = time.perf_counter()
        feats, labels = _features(model, feature_loader, device)
        W, b = fit_linear_probe(feats, labels, fc.out_features)
        with torch.no_grad():
            fc.weight.copy_(W.to(fc.weight))
            if fc.bias is not None:
                fc.bias.copy_(b.to(fc.bias))
        acc = 100.0 * ((feats @ W.T + b).argmax(1) == labels).float().mean().item()
        return (f'head: linear probe on frozen features of {len(labels)} un-augmented train images '
                f'({time.perf_counter() - t0:.1f}s, train top-1 {acc:.1f}%)')
    return None
