"""Shared model-building helpers: pretrained cfg defaults and verified weight resolution."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Type

import torch.nn as nn
from timm.models import build_model_with_cfg
from timm.models._builder import resolve_pretrained_cfg

__all__ = ['sd_cfg', 'build_sd_model']


def sd_cfg(**kwargs) -> Dict[str, Any]:
    """Defaults every sdzoo pretrained cfg shares."""
    cfg = dict(license='apache-2.0', origin_url='https://github.com/sdzoo/sdzoo')
    cfg.update(kwargs)
    return cfg


def build_sd_model(
        model_cls: Type[nn.Module] | Callable[..., nn.Module],
        variant: str,
        pretrained: bool = False,
        pretrained_cfg: Optional[Any] = None,
        pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
        **kwargs,
) -> nn.Module:
    """``timm.models.build_model_with_cfg`` with sdzoo's weight resolution.

    With ``pretrained=True`` the weight file is resolved (shipped with the package, else downloaded
    from the Hugging Face Hub) and its sha256 checked *before* timm loads it, so a corrupt file is a
    clear error, never a silently random model.
    """
    if pretrained:
        from ..hub import resolve_pretrained_file
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg, pretrained_cfg_overlay).to_dict()
        path = resolve_pretrained_file(cfg, variant)
        # timm then loads exactly the file that was verified (never fetches a second copy)
        pretrained_cfg_overlay = dict(pretrained_cfg_overlay or {}, file=str(path), source='timm')
    return build_model_with_cfg(
        model_cls, variant, pretrained,
        pretrained_cfg=pretrained_cfg,
        pretrained_cfg_overlay=pretrained_cfg_overlay,
        **kwargs,
    )
