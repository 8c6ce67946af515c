"""``sdzoo train``, ``sdzoo finetune`` and ``sdzoo validate``."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict

from ..cli_args import add_checkpoint_args, checkpoint_kwargs
from .allocator import MALLOC_MODES, configure_malloc

# CLI flag -> TrainConfig field; None defaults mean "take the recipe's value"
_FLAGS = [
    ('--epochs', 'epochs', int), ('--batch-size', 'batch_size', int), ('--lr', 'lr', float),
    ('--momentum', 'momentum', float), ('--weight-decay', 'weight_decay', float), ('--sched', 'sched', str),
    ('--warmup-epochs', 'warmup_epochs', float), ('--min-lr', 'min_lr', float),
    ('--smoothing', 'label_smoothing', float), ('--ema-decay', 'ema_decay', float),
    ('--mixup', 'mixup', float), ('--cutmix', 'cutmix', float),
    ('--drop-path-rate', 'drop_path_rate', float), ('--sd-mode', 'sd_mode', str),
    ('--sd-scaling', 'sd_scaling', str), ('--val-size', 'val_size', int),
    ('--train-subset', 'train_subset', int), ('--val-subset', 'val_subset', int), ('--amp', 'amp', str),
    ('--seed', 'seed', int), ('--workers', 'workers', int), ('--threads', 'threads', int),
    ('--checkpoint-minutes', 'checkpoint_minutes', float), ('--log-seconds', 'log_seconds', float),
    ('--device', 'device', str), ('--opt', 'optimizer', str),
    ('--num-classes', 'num_classes', int), ('--in-chans', 'in_chans', int),
    ('--holdout', 'holdout', str), ('--head', 'head_init', str), ('--class-weights', 'class_weights', str), ('--split-seed', 'split_seed', int),
    ('--select', 'select', str),
]


_R = 'default: the recipe\'s'  # recipe(): paper CIFAR recipe, ViT recipe, or the short fine-tuning one
_FLAG_HELP = {
    'epochs': f'{_R}: 500 CIFAR ResNets (the paper), 200 ViTs; fine-tuning: 3 with a head from matching class '
              'names, else max(10, ceil(600 / steps per epoch)) (ViTs: 300 steps)',
    'batch_size': 'mini-batch size over all processes (default: 128; fine-tuning: clamp(2**floor(log2(N/10)), '
                  '16, 128) for N training images)',
    'lr': f'peak learning rate ({_R}: 0.1 SGD, 5e-4 AdamW for ViTs; fine-tuning: min(0.02*bs/16, 0.08), 0.001*bs/16 with a '
          'head from matching class names; ViTs AdamW 5e-5*bs/16, min(3e-4*bs/16, 4e-4) from 300 steps, 5e-6*bs/16 '
          'matched)',
    'momentum': 'SGD (Nesterov) momentum (default: 0.9)',
    'weight_decay': f'weight decay ({_R}: 1e-4, 0.05 for ViTs)',
    'sched': f'learning-rate schedule, step or cosine ({_R}: step for CIFAR ResNets, else cosine)',
    'warmup_epochs': f'linear warm-up epochs ({_R}: 0, 5 for ViTs; fine-tuning: half an epoch, at most 10%% of '
                     'the steps, at least one step)',
    'min_lr': 'final learning rate of the cosine schedule (default: 0)',
    'label_smoothing': f'label smoothing in [0, 1) ({_R}: 0, 0.1 for ViTs)',
    'ema_decay': 'decay of the weight EMA kept with --ema (default: 0.9998)',
    'mixup': 'timm Mixup alpha, 0 switches it off (default: 0)',
    'cutmix': 'timm CutMix alpha, 0 switches it off (default: 0)',
    'drop_path_rate': "1 - p_L of the survival schedule (default: the model's, 0.5 for the CIFAR ResNets; "
                      "0.1 ViT recipe; a fine-tune keeps its weights')",
    'sd_mode': "stochastic-depth mode: batch (skip dropped blocks) or row (default: the model's, batch)",
    'sd_scaling': "paper (scale by p_l at test time) or inverted (default: the model's, paper)",
    'val_size': 'training images held out for validation (default: 5000 for CIFAR-10 and Fashion-MNIST, '
                'about 10%% of an image folder without val/; fine-tuning draws them at random per class, '
                'proportionally, at least one per class, see --split-seed)',
    'select': 'the weights the run leaves behind: last (the last epoch), start-or-last (the start, i.e. the '
              'pretrained body with its matched or probed head, when the last epoch scores lower on validation; a '
              'start whose head rows all come from the pretrained head is kept unless the last epoch beats it '
              'beyond chance: one-sided exact sign test, p < 0.05; after 100 steps or more from a new head, the last '
              'epoch is kept unless the start beats it beyond chance), or '
              'best (the epoch of best validation top-1, ties to the later epoch, the start as epoch 0) (default: '
              'last; fine-tuning: start-or-last)',
    'head_init': "fine-tuning: how the new head starts: auto (rows of the pretrained head for class names the "
                 "folder shares with the model's label names; else the rows of the labels the pretrained head gives "
                 "each class most often, when they classify the folder's images about as well as a cross-validated "
                 'linear probe (kitty/ from cat: predicted); '
                 'else a linear probe), matched, predicted, probe, fresh '
                 '(default: auto; --keep-head keeps the old head)',
    'class_weights': 'loss weights: balanced (N / (K * n_c) per class) or none (default: balanced fine-tuning, '
                     'none training)',
    'holdout': 'how the validation images are drawn from train/ without a val/ folder: stratified (random per '
               'class, proportional, --split-seed) or last (the last val-size/K file names of every class) '
               '(default: stratified fine-tuning, last training)',
    'split_seed': 'seed of the random validation holdout of a fine-tune, recorded in data.json (default: 0)',
    'train_subset': 'train on only N training images (default: all)',
    'val_subset': 'validate on only N held-out images (default: all)',
    'amp': 'autocast: auto (bf16 on CUDA and on CPUs with native bf16), bf16, fp16 or none (default: auto)',
    'seed': 'seed of batch order, augmentation and the stochastic-depth coins (default: 0)',
    'workers': 'data-loading worker processes (default: 2)',
    'threads': 'torch intra-op threads (default: torch\'s choice)',
    'checkpoint_minutes': 'write last.pt at least this often, besides every epoch end (default: 10)',
    'log_seconds': 'without a progress bar, a progress line this often; 0 every step (default: 300)',
    'device': 'auto, cpu, cuda or cuda:N (default: auto)',
    'optimizer': f'optimizer, sgd or adamw ({_R}: sgd, adamw for ViTs)',
    'num_classes': "classes of the new head (default: the model's; must match the data set)",
    'in_chans': "input channels, e.g. 1 for grey images (default: the model's, 3)",
}


def _add_train_args(p: argparse.ArgumentParser, finetune: bool) -> None:
    p.add_argument('model', nargs='?', help="an sd_* model or any of timm's (see --convert); omit with --resume")
    p.add_argument('--data', default=None,
                   help="cifar10 (default location $SDZOO_DATA/cifar10 or ../shared/datasets/cifar10), "
                        "fashion_mnist (Debian dataset-fashion-mnist IDX files), or an image-folder path")
    p.add_argument('--data-dir', default=None, help='folder that contains cifar10/ (default: $SDZOO_DATA, else ../shared/datasets)')
    p.add_argument('--out', default=None, help='run directory (default: runs/<model>-<data>)')
    p.add_argument('--resume', default=None, metavar='RUN_DIR|CKPT',
                   help='continue a run exactly where its last checkpoint left it (default: start a new run)')
    for flag, dest, typ in _FLAGS:
        p.add_argument(flag, dest=dest, type=typ, default=None, help=_FLAG_HELP[dest])
    p.add_argument('--milestones', type=float, nargs='+', default=None, help='step-decay points, fractions of the epochs (default: 0.5 0.75)')
    p.add_argument('--ema', action='store_true', default=None, help='keep an EMA of the weights')
    p.add_argument('--channels-last', dest='channels_last', action='store_true', default=None,
                   help='NHWC memory format (default: on for convnets; a runtime knob, may change on --resume)')
    p.add_argument('--no-channels-last', dest='channels_last', action='store_false', help='NCHW memory format')
    p.add_argument('--compile', nargs='?', const='inductor', default=None, metavar='BACKEND',
                   help="torch.compile the training forward (backend default: inductor; as timm's train.py "
                        '--torchcompile); each dropped/kept block outcome reuses one graph per block shape; a '
                        'runtime knob, may change on --resume (default: eager)')
    p.add_argument('--no-cifar-aug', dest='cifar_aug', action='store_false', default=None,
                   help='no 4-px pad + random crop + flip on small images (default: on)')
    p.add_argument('--drop-last', dest='drop_last', action='store_true', default=None,
                   help='drop the incomplete last batch of every epoch (default: on for training; fine-tuning: off, '
                        'every image every epoch in ceil(N/bs) near-equal batches)')
    p.add_argument('--deterministic', action='store_true', default=None,
                   help='torch deterministic algorithms (slower; default: off)')
    p.add_argument('--no-test', dest='eval_test', action='store_false', default=None,
                   help='skip the test-set evaluation at the end')
    p.add_argument('--max-steps', type=int, default=None,
                   help='stop after this many steps in this process, checkpoint written, resume later (default: no limit)')
    p.add_argument('--malloc', choices=MALLOC_MODES, default='reuse',
                   help='reuse: glibc keeps freed memory instead of faulting it in again every step (up to 1.65x '
                        'per step for 224-px CPU training, docs/training.md); system: the C library\'s defaults '
                        '(default: reuse; may change on resume)')
    p.add_argument('--progress', dest='progress', action='store_true', default=None, help='force the progress bar')
    p.add_argument('--no-progress', dest='progress', action='store_false',
                   help='no progress bar (default: a bar on a terminal, log lines otherwise)')
    if finetune:
        p.add_argument('--keep-head', dest='reset_head', action='store_false', default=True,
                       help='keep the pretrained classifier (default: a fresh one, timm reset_classifier)')
        p.add_argument('--pretrained', nargs='?', const=True, default=True,
                       help='start from the shipped/Hub weights (default), or from the given weights file')
    else:
        p.add_argument('--pretrained', nargs='?', const=True, default=False,
                       help='start from the shipped/Hub weights, or from the given weights file (default: random init)')
    p.add_argument('--convert', dest='convert', action='store_true', default=None,
                   help="timm's own models (not sd_*): skip dropped branches with sdzoo.convert, same weights and "
                        'per-sample semantics (default: whenever the family is supported and drop_path_rate > 0)')
    p.add_argument('--no-convert', dest='convert', action='store_false', help="train timm's model as it is")
    p.add_argument('--debug', action='store_true', help='show tracebacks')


def _config_from_args(args: argparse.Namespace, finetune: bool) -> 'TrainConfig':
    from .trainer import TrainConfig, recipe
    if not args.model:
        raise ValueError('name a model (e.g. sd_resnet20) or pass --resume RUN_DIR')
    if args.convert is not None and args.model.startswith('sd_'):
        raise ValueError(f'{args.model} already skips dropped blocks; --convert / --no-convert are for timm\'s own models')
    d: Dict[str, Any] = dict(model=args.model, data=args.data or 'cifar10')
    d.update(recipe(args.model, finetune))
    notes = {}
    for _, dest, _ in _FLAGS:
        v = getattr(args, dest, None)
        if v is not None:
            d[dest] = v
            notes[dest] = 'given'
    d['recipe_notes'] = notes
    if finetune:
        d['reset_head'] = args.reset_head
    if not finetune and (args.head_init or args.split_seed is not None):
        raise ValueError('--head and --split-seed are fine-tuning options (sdzoo finetune)')
    if args.holdout not in (None, 'last', 'stratified'):
        raise ValueError(f'--holdout must be stratified or last, got {args.holdout!r}')
    for dest in ('milestones', 'ema', 'channels_last', 'cifar_aug', 'deterministic', 'eval_test', 'convert',
                 'drop_last', 'compile'):
        v = getattr(args, dest)
        if v is not None:
            d[dest] = tuple(v) if dest == 'milestones' else v
    if args.pretrained is True:
        d['pretrained'] = True
    elif args.pretrained:
        d['pretrained_file'] = str(args.pretrained)
    data_tag = Path(d['data']).name if d['data'] not in ('cifar10', 'fashion_mnist') else d['data']
    d['out'] = args.out or str(Path('runs') / f"{args.model}-{data_tag}{'-ft' if finetune else ''}")
    return TrainConfig.from_dict(d)


# knobs that change how fast a run goes, not what it learns
_RUNTIME_ONLY = {'threads', 'workers', 'checkpoint_minutes', 'log_seconds', 'device', 'compile'}
_RESUME_KNOBS = _RUNTIME_ONLY | {'channels_last', 'eval_test', 'epochs'}
# recipe flags outside _FLAGS (switches); --no-test and --[no-]channels-last are resume knobs
_RECIPE_SWITCHES = [('--milestones', 'milestones'), ('--ema', 'ema'), ('--no-cifar-aug', 'cifar_aug'),
                    ('--deterministic', 'deterministic'), ('--convert', 'convert'), ('--drop-last', 'drop_last')]


def train_command(cfg: Dict[str, Any]) -> str:
    """The ``sdzoo train`` (or ``finetune``) command line that re-creates a run's recipe.

    Every recipe field that differs from what the command would default to is spelled out, so a card's
    reproduce line stays complete when a run used flags the recipe does not default (a ViT's mixup).
    """
    from ..layers.stochastic_depth import SD_MODES, SD_SCALINGS
    from .trainer import TrainConfig, recipe
    finetune = bool(cfg.get('pretrained') or cfg.get('pretrained_file'))
    base = asdict(TrainConfig(model=cfg['model']))
    base.update(recipe(cfg['model'], finetune))
    base.update(sd_mode=SD_MODES[0], sd_scaling=SD_SCALINGS[0])  # what the models default to
    argv = ['sdzoo', 'finetune' if finetune else 'train', cfg['model'], '--data', str(cfg['data'])]
    for flag, dest, _ in _FLAGS:
        v = cfg.get(dest)
        if dest in _RUNTIME_ONLY or v is None:
            continue
        if dest in ('epochs', 'lr', 'sched') or v != base[dest]:
            argv += [flag, str(v)]
    for flag, dest in _RECIPE_SWITCHES:
        v = cfg.get(dest)
        if dest == 'milestones' and v is not None and tuple(v) != tuple(base[dest]):
            argv += [flag] + [str(m) for m in v]
        elif dest != 'milestones' and v is not None and v != base[dest]:
            argv.append('--no-convert' if (dest, v) == ('convert', False) else flag)
    if cfg.get('pretrained_file'):
        argv += ['--pretrained', str(cfg['pretrained_file'])]
    elif cfg.get('pretrained'):
        argv += ['--pretrained']
    if finetune and cfg.get('reset_head') is False:
        argv += ['--keep-head']
    return ' '.join(argv + ['--out', str(cfg['out'])])


def _run(args: argparse.Namespace, finetune: bool) -> int:
    configure_malloc(args.malloc)  # first: before data decoding and the model allocate
    from .distributed import shutdown_distributed
    from .trainer import CHECKPOINT_NAME, TrainConfig, Trainer, TrainingInterrupted
    if args.data_dir:
        import os
        os.environ['SDZOO_DATA'] = args.data_dir
    resume = None
    if args.resume:
        rpath = Path(args.resume)
        ckpt_path = rpath / CHECKPOINT_NAME if rpath.is_dir() else rpath
        if not ckpt_path.is_file():
            raise FileNotFoundError(f'--resume: no checkpoint at {ckpt_path}')
        from .checkpoint import load_checkpoint
        saved = load_checkpoint(ckpt_path).get('config')
        if not isinstance(saved, dict):
            raise ValueError(f'--resume: {ckpt_path} carries no training config')
        cfg = TrainConfig.from_dict(saved)
        if args.model and args.model != cfg.model:
            raise ValueError(f'--resume: {ckpt_path} is a {cfg.model} run, not {args.model}')
        # runtime-only knobs may change between sessions; the recipe may not, except its length while the
        # learning rates already used stay the same (checked against the schedule when the run loads)
        fixed = [flag for flag, dest in [(f, d) for f, d, _ in _FLAGS] + _RECIPE_SWITCHES
                 if dest not in _RESUME_KNOBS and getattr(args, dest, None) is not None]
        if args.data and args.data != cfg.data:
            fixed.append('--data')
        if not finetune and args.pretrained:
            fixed.append('--pretrained')
        if fixed:
            raise ValueError(f"--resume: {', '.join(fixed)} belong to the run's recipe and cannot change; on resume "
                             "only --threads, --workers, --checkpoint-minutes, --log-seconds, --device, "
                             "--[no-]channels-last, --no-test, --malloc, --data-dir, --out and --epochs may be given")
        for dest in _RESUME_KNOBS:
            v = getattr(args, dest, None)
            if v is not None:
                setattr(cfg, dest, v)
        src = Path(cfg.out) if not rpath.is_dir() else rpath
        if args.out and Path(args.out).resolve() != src.resolve():
            # a branch of the run (the trainer copies its history once the checkpoint loads)
            if (Path(args.out) / CHECKPOINT_NAME).exists():
                raise ValueError(f'{args.out} already holds a run; continue it with --resume {args.out}')
            cfg.out = args.out
        elif rpath.is_dir():
            cfg.out = str(rpath)
        resume = str(ckpt_path)
    else:
        cfg = _config_from_args(args, finetune)
        if (Path(cfg.out) / CHECKPOINT_NAME).exists():
            raise ValueError(f'{cfg.out} already holds a run; continue it with --resume {cfg.out} '
                             'or choose another --out')
    trainer = Trainer(cfg, resume=resume, progress=args.progress, max_steps=args.max_steps)
    try:
        summary = trainer.fit()
    except TrainingInterrupted as e:
        if e.written:  # under DDP only rank 0 writes (and says so)
            print(f'stopped by signal {e.signum}; checkpoint {e.checkpoint}\n'
                  f'resume with: sdzoo {"finetune" if finetune else "train"} --resume {cfg.out}', file=sys.stderr,
                  flush=True)
        # leave together: torchrun stops the other ranks as soon as one exits
        shutdown_distributed(trainer.world)
        return 128 + e.signum
    shutdown_distributed(trainer.world)
    if summary.get('status') == 'paused':
        print(f"paused after --max-steps at epoch {summary['epoch'] + 1} batch {summary['batch']}; "
              f'resume with: sdzoo train --resume {cfg.out}', file=sys.stderr)
    else:
        print(f'weights: {Path(cfg.out) / "model.safetensors"}  metrics: {Path(cfg.out) / "metrics.csv"}  '
              f'plot: {Path(cfg.out) / "curves.png"}')
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    return _run(args, finetune=False)


def _cmd_finetune(args: argparse.Namespace) -> int:
    return _run(args, finetune=True)


def validate_command(args: argparse.Namespace) -> int:
    """``sdzoo validate`` on parsed arguments (``sdzoo publish`` runs it too, on the weights it is about to ship)."""
    import torch
    import sdzoo  # noqa: F401
    from timm.data import resolve_data_config
    from ..data import create_loader, load_splits
    from ..data.images import ImageGeometry
    from ..models.load import create_model, data_config
    from .records import encode_per_image
    from .trainer import evaluate
    if args.data_dir:
        import os
        os.environ['SDZOO_DATA'] = args.data_dir
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pretrained and args.checkpoint:
        raise ValueError('give either --pretrained or --checkpoint, not both')
    folder = Path(args.model).is_dir()  # a model folder or a finished run: it brings its weights
    if not folder and not args.pretrained and not args.checkpoint:
        raise ValueError('say which weights to evaluate: --pretrained or --checkpoint FILE '
                         '(or give a model folder / finished run directory as MODEL)')
    if args.data is None:  # a run directory knows what it was trained on
        run_cfg = Path(args.model) / 'config.json'
        saved = json.loads(run_cfg.read_text()) if folder and run_cfg.is_file() else {}
        args.data = saved.get('data') if isinstance(saved.get('data'), str) and 'epochs' in saved else 'cifar10'
    # with the paper's scaling the survival probabilities are part of the eval network: a checkpoint's
    # recorded drop_path_rate / sd_scaling (trainer .pt, or the config.json beside a .safetensors) are
    # used, explicit flags win, and only then the model defaults (export builds its models the same way)
    model = create_model(args.model, pretrained=bool(args.pretrained), checkpoint=args.checkpoint,
                         **checkpoint_kwargs(args))
    device = torch.device(args.device if args.device != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu'))
    model.to(device).eval()
    data_cfg = resolve_data_config(model=model)
    data_cfg['input_size'] = tuple(data_config(model)['input_size'])  # the first conv's channels, e.g. in_chans=1
    splits = load_splits(args.data, tuple(data_cfg['input_size']), val_size=0 if args.split == 'test' else None,
                         only=args.split, geometry=ImageGeometry.from_config(data_cfg))
    split = getattr(splits, args.split)
    if split is None:
        raise ValueError(f'data set {args.data!r} has no {args.split} split (found in {splits.source})')
    if model.num_classes != splits.num_classes:
        raise ValueError(f'{args.model} has {model.num_classes} classes but {args.data!r} has {splits.num_classes}')
    loader = create_loader(split, args.batch_size, data_cfg, train=False, in_chans=data_cfg['input_size'][0],
                           workers=args.workers)
    res = evaluate(model, loader, device, amp=args.amp, progress=sys.stderr.isatty(), desc=f'validate {args.split}',
                   per_image=True)
    per_image = encode_per_image(res.pop('correct'), res.pop('labels'))  # for paired comparisons (sdzoo cards)
    out = dict(model=args.model, weights=('pretrained' if args.pretrained or folder else str(args.checkpoint)),
               pretrained_tag=model.pretrained_cfg.get('tag') if args.pretrained or folder else None,
               data=args.data, data_source=splits.source, split=args.split, amp=args.amp, **res, per_image=per_image)
    top5 = f"top-5 {res['top5']:.2f}%  " if model.num_classes > 5 else ''  # trivially 100% for <= 5 classes
    print(f"{args.model} on {args.data} {args.split} ({res['images']} images): top-1 {res['top1']:.2f}%  "
          f"{top5}loss {res['loss']:.4f}  {res['images_per_sec']:.0f} img/s")
    if args.out:
        _write_out(args.out, out)
    return 0


def _write_out(out: str, record: Dict[str, Any]) -> None:
    from ..files import atomic_write_json
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
    print(f'wrote {path}')


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('train', help='train a model (paper recipe by default for the CIFAR nets)')
    _add_train_args(p, finetune=False)
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser('finetune', help='fine-tune pretrained weights on a new data set')
    _add_train_args(p, finetune=True)
    p.set_defaults(func=_cmd_finetune)
    p = sub.add_parser('validate', help='top-1/top-5/loss of weights on a data set, written as JSON')
    p.add_argument('model', help='a registered model (with --pretrained or --checkpoint), a model folder, or a '
                                 'finished run directory (its model/ folder)')
    p.add_argument('--pretrained', action='store_true', help='the shipped/Hub weights')
    p.add_argument('--checkpoint', default=None, help='a .safetensors file or trainer checkpoint (default: none)')
    p.add_argument('--data', default=None,
                   help="cifar10, fashion_mnist or an image-folder path (default: a run directory's own data, "
                        'else cifar10)')
    p.add_argument('--data-dir', default=None,
                   help='folder that contains cifar10/ (default: $SDZOO_DATA, else ../shared/datasets)')
    p.add_argument('--split', default='test', choices=('test', 'val', 'train'), help='split to evaluate; only it is decoded')
    add_checkpoint_args(p)
    p.add_argument('--batch-size', type=int, default=256, help='evaluation batch size')
    p.add_argument('--amp', default='none', choices=('none', 'bf16', 'fp16', 'auto'),
                   help='autocast (published numbers use none: fp32)')
    p.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    p.add_argument('--threads', type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument('--workers', type=int, default=2, help='data-loading worker processes')
    p.add_argument('--out', default=None, help='write the results as JSON here (default: print only)')
    p.add_argument('--debug', action='store_true', help='show tracebacks')
    p.set_defaults(func=validate_command)
