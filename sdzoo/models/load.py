"""Models from a name, a weights folder, a finished run or a checkpoint file, in eval mode, with their data
config and class names: what export, validation, fine-tuning and serving all start from."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

__all__ = ['CIFAR10_CLASSES', 'BUILD_KEYS', 'create_model', 'load_checkpoint', 'data_config', 'image_folder_classes',
           'resolve_labels']

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
BUILD_KEYS = ('drop_path_rate', 'sd_schedule', 'sd_mode', 'sd_scaling', 'num_classes', 'in_chans')


def load_checkpoint(path: Union[str, os.PathLike]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """``(state_dict, info)`` from a ``.safetensors`` file or a trainer checkpoint (``.pt``).

    ``.pt`` files are read with ``torch.load(weights_only=True)`` (no pickled code runs) and their
    ``'model'`` entry is the state dict. ``info`` holds what rebuilds the trained architecture:
    ``model_args`` (``drop_path_rate``, ``sd_scaling``, …: with the paper's scaling the survival
    probabilities scale the branches at test time), ``architecture`` and ``label_names``, from the
    trainer checkpoint's ``config`` or a timm ``config.json`` beside a safetensors file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    info: Dict[str, Any] = {'model_args': {}, 'architecture': None, 'label_names': None}
    if path.suffix == '.safetensors':
        from safetensors import safe_open
        from safetensors.torch import load_file
        try:
            state = load_file(str(path), device='cpu')
            with safe_open(str(path), framework='pt') as f:
                file_meta = f.metadata() or {}
        except Exception as e:
            raise ValueError(f'{path} is not a readable safetensors file ({type(e).__name__}: {e})') from e
        # the trainer records architecture / num_classes / classes in the file's metadata
        info['architecture'] = file_meta.get('architecture')
        if file_meta.get('num_classes', '').isdigit():
            info['model_args']['num_classes'] = int(file_meta['num_classes'])
        try:
            info['label_names'] = json.loads(file_meta['classes']) if file_meta.get('classes') else None
        except ValueError:
            pass
        config_file = path.with_name('config.json')
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding='utf-8'))
            except ValueError as e:
                raise ValueError(f'{config_file} (next to {path.name}) is not valid JSON: {e}') from e
            # timm's Hub layout keeps them under model_args; a trainer run folder's config.json at the top
            args = config.get('model_args') if isinstance(config.get('model_args'), dict) else config
            info['model_args'].update({k: v for k, v in args.items() if k in BUILD_KEYS and v is not None})
            arch = config.get('architecture') or config.get('model')
            info['architecture'] = arch if isinstance(arch, str) else info['architecture']
            info['label_names'] = config.get('label_names') or info['label_names']
        return state, info
    try:
        ckpt = torch.load(str(path), map_location='cpu', weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ''
        raise ValueError(f'cannot load {path} with torch.load(weights_only=True) ({type(e).__name__}: {first}); '
                         "expected a .safetensors state dict or a trainer checkpoint whose 'model' entry is a "
                         'state dict') from e
    if isinstance(ckpt, dict) and isinstance(ckpt.get('model'), dict):
        config = ckpt.get('config') if isinstance(ckpt.get('config'), dict) else {}
        info['model_args'] = {k: config[k] for k in BUILD_KEYS if config.get(k) is not None}
        info['architecture'] = config.get('model')
        ckpt = ckpt['model']
    if not isinstance(ckpt, dict) or not ckpt or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"{path} holds no state dict (expected tensors, or a dict with a 'model' state dict)")
    from timm.models import clean_state_dict
    return clean_state_dict(ckpt), info  # drops DDP's 'module.' prefixes


def create_model(
        name: str,
        pretrained: bool = False,
        checkpoint: Optional[Union[str, os.PathLike]] = None,
        num_classes: Optional[int] = None,
        in_chans: Optional[int] = None,
        **kwargs,
) -> nn.Module:
    """A registered model in eval mode, with shipped weights or a checkpoint loaded (``strict=True``).

    A checkpoint's recorded model arguments (see :func:`load_checkpoint`) are defaults; explicit
    ``num_classes`` / ``in_chans`` / ``kwargs`` (e.g. ``drop_path_rate``) win.
    """
    import timm
    from ..hub.model_folder import local_dir_name
    if Path(name).is_dir():  # a model folder (timm Hub layout) or a finished run's directory
        ref = local_dir_name(name)
        if ref is None:
            raise ValueError(f'{name} is a folder but holds no model: expected config.json + model.safetensors, '
                             'or a finished run directory with model/ in it')
        if checkpoint:
            raise ValueError(f'{name} is a model folder: it brings its own weights, drop --checkpoint')
        name, pretrained = ref, True
    if pretrained and checkpoint:
        raise ValueError('give either pretrained weights or a checkpoint, not both')
    if name.startswith('local-dir:'):
        config = json.loads((Path(name.split(':', 1)[1]) / 'config.json').read_text(encoding='utf-8'))
        arch = config['architecture']
    elif name.startswith('hf-hub:'):
        arch = None
    else:
        arch = name.split('.', 1)[0]
    if arch is not None and not timm.is_model(arch):
        raise ValueError(f'unknown model {name!r}; `sdzoo list` shows the registered sd_* models')
    if num_classes is not None:
        kwargs['num_classes'] = int(num_classes)
    if in_chans is not None:
        kwargs['in_chans'] = int(in_chans)
    state, info = load_checkpoint(checkpoint) if checkpoint else (None, {})  # a bad file fails before building
    if info.get('architecture') and arch and info['architecture'].split('.', 1)[0] != arch:
        raise ValueError(f'checkpoint {checkpoint} was trained as {info["architecture"]}, not {arch}')
    for k, v in (info.get('model_args') or {}).items():
        kwargs.setdefault(k, v)
    if not arch.startswith('sd_'):  # timm's own model (e.g. a converted run): its eval network is plain timm's
        for k in ('sd_schedule', 'sd_mode', 'sd_scaling'):
            kwargs.pop(k, None)
    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            lines = str(e).splitlines()
            raise ValueError(f'checkpoint {checkpoint} does not fit {name} '
                             f'(num_classes={getattr(model, "num_classes", "?")}; pass --num-classes / '
                             f'--in-chans if it was trained with others): {lines[0]} '
                             + ' '.join(lines[1:])[:400]) from e
        if info.get('model_args'):
            from .branches import rebase_survival
            rebase_survival(model, info['model_args'])  # explicit survival settings keep the trained network
    label_names = info.get('label_names')
    if pretrained and not label_names:
        from ..hub.weights import weights_dirs
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        folder = next((d / f"{cfg.get('architecture', arch)}.{cfg['tag']}" for d in weights_dirs() if cfg.get('tag')
                       and (d / f"{cfg.get('architecture', arch)}.{cfg['tag']}" / 'model.safetensors').is_file()), None)
        if folder is not None and (folder / 'config.json').is_file():
            label_names = json.loads((folder / 'config.json').read_text(encoding='utf-8')).get('label_names')
    if label_names:
        model.pretrained_cfg = dict(getattr(model, 'pretrained_cfg', None) or {}, label_names=list(label_names))
    return model.eval()


def data_config(model: nn.Module) -> Dict[str, Any]:
    """Mean, std, input size and crop of a model, from its pretrained cfg (timm's resolution)."""
    from timm.data import resolve_data_config
    cfg = resolve_data_config({}, model=model)
    c = cfg['input_size'][0]
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.in_channels != c:
        c = first.in_channels
    from ..data.loader import channel_stats
    mean, std = channel_stats(cfg['mean'], cfg['std'], c)
    return dict(input_size=[c, *cfg['input_size'][1:]], mean=mean, std=std,
                crop_pct=cfg.get('crop_pct', 0.875), crop_mode=cfg.get('crop_mode', 'center'),
                interpolation=cfg.get('interpolation', 'bilinear'))


def image_folder_classes(data_dir: Union[str, os.PathLike]) -> List[str]:
    """Sorted class sub-folders of an image folder (torchvision ``ImageFolder`` order)."""
    d = Path(data_dir)
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def resolve_labels(
        model: nn.Module,
        labels: Optional[Sequence[str]] = None,
        data_dir: Optional[Union[str, os.PathLike]] = None,
) -> List[str]:
    """Class names for a model's outputs: given, from the cfg, the data folder, or the known data sets.

    Known: 1000 classes -> ImageNet-1k descriptions (timm ships them), a 10-class 32x32 model ->
    CIFAR-10. Otherwise empty (servers then answer with class indices).
    """
    n = int(getattr(model, 'num_classes', 0) or 0)
    if labels is not None:
        labels = [str(x) for x in labels]
        if len(labels) != n:
            raise ValueError(f'{len(labels)} labels given for a model with {n} classes')
        return labels
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if cfg.get('label_names') and len(cfg['label_names']) == n:
        return list(cfg['label_names'])
    if data_dir is not None:
        classes = image_folder_classes(data_dir)
        if len(classes) == n:
            return classes
    if n == 1000:
        from timm.data import ImageNetInfo
        return list(ImageNetInfo().label_descriptions())
    if n == 10 and tuple(cfg.get('input_size', ()))[1:] == (32, 32):
        return list(CIFAR10_CLASSES)
    return []
