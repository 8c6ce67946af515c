"""Shared model-building helpers: the SD constructor set-up and model traits every family shares,
pretrained cfg defaults and verified weight resolution."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Type, Union

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg
from timm.models._builder import resolve_pretrained_cfg
from timm.models._registry import get_pretrained_cfg

from ..layers import SDSampler, apply_stochastic_depth

__all__ = ['SDModelMixin', 'sd_model_class', 'sd_cfg', 'timm_cfg', 'build_sd_model']


class SDModelMixin:
    """What every sdzoo model class has in common, written once: the stochastic-depth part of its
    constructor, and the traits tools choose behaviour by (never by matching the model's name)."""

    recipe_family: str = 'resnet'  # default training recipe (sdzoo.train.recipe): 'resnet' or 'vit'
    is_convnet: bool = True        # channels_last memory format pays off

    def init_stochastic_depth(
            self,
            drop_path_rate: float,
            sd_schedule: Union[str, Sequence[float]],
            sd_mode: str,
            sd_scaling: str,
            sd_seed: int,
    ) -> None:
        """One coin source for the whole network, then the survival schedule over its SD units."""
        self.sd_sampler = SDSampler(sd_seed)
        self.survival_probs = apply_stochastic_depth(self, drop_path_rate, sd_schedule, mode=sd_mode,
                                                     scaling=sd_scaling)

    def remove_residual_blocks(self, names: Sequence[str]) -> None:
        """Rebuild a network ``sdzoo.prune_depth`` shortened (its saved ``model_args['removed_blocks']``), so
        that its weights, which hold no tensors for those blocks, load as they were saved."""
        if names:
            from .depth import remove_blocks
            remove_blocks(self, list(names))


def sd_model_class(model_name: str) -> Optional[type]:
    """The class a registered model name builds (None if timm does not know the name), found by
    building it on the meta device: no memory, no weights, no initialisation work."""
    import timm
    if not timm.is_model(model_name):
        return None
    with torch.device('meta'):
        return type(timm.create_model(model_name))


def timm_cfg(timm_name: str, paper_ids: str) -> Dict[str, Any]:
    """timm's own pretrained cfg of ``timm_name`` (weights trained by timm: a fine-tuning start)."""
    cfg = get_pretrained_cfg(timm_name).to_dict()
    cfg = {k: v for k, v in cfg.items() if v is not None and k not in ('architecture', 'tag')}
    return sd_cfg(**dict(cfg, paper_ids=paper_ids))

# set by timm (create_model / _update_default_model_kwargs) or by the user; never taken from config.json
_RUNTIME_KWARGS = ('device', 'dtype', 'pretrained_model_args', 'features_only', 'out_indices', 'feature_cls')


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

    With ``pretrained=True`` the weight file is resolved (``$SDZOO_WEIGHTS``, shipped with the
    package or the repository, else downloaded from the Hugging Face Hub) and its sha256 checked
    *before* timm loads it, so a corrupt file is a clear error, never a silently random model.
    timm then loads exactly that file with its own ``load_pretrained`` (head reset for another
    ``num_classes``, first-conv adaptation for another ``in_chans``).

    For registry names the weights' ``config.json`` ``model_args`` become defaults for the model
    arguments, as timm does for ``hf-hub:``/``local-dir:`` names: with the paper's scaling the
    survival probabilities (``drop_path_rate``, ``sd_schedule``) scale the branches at test time,
    so the architecture must be rebuilt exactly as it was trained. Explicit survival settings still win
    (``drop_path_rate=0`` to fine-tune without SD): then each branch is rescaled
    (:func:`sdzoo.models.branches.rebase_survival`) so that the test-time network stays the trained one.
    """
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg, pretrained_cfg_overlay).to_dict()
    overlay = dict(pretrained_cfg_overlay or {})
    from ..hub.weights import hub_repo_id, read_weights_config, resolve_pretrained_file
    hub_id = hub_repo_id(cfg, variant)
    if hub_id and hub_id != cfg.get('hf_hub_id'):
        overlay['hf_hub_id'] = hub_id  # 'sdzoo/' -> 'sdzoo/<model>.<tag>' (timm completes only 'timm/')
    if pretrained and cfg.get('state_dict') is None:
        path = resolve_pretrained_file(cfg, variant, cache_dir=kwargs.get('cache_dir'))
        if cfg.get('source') not in ('hf-hub', 'local-dir') and not cfg.get('file'):
            # registry name: the weights' own config.json (timm already applied it for hf-hub:/local-dir:
            # names; a user's `file` overlay may sit next to an unrelated config.json, e.g. a training run's)
            _apply_weights_config(read_weights_config(path), variant, path, kwargs)
        # timm loads exactly the file that was verified (never fetches a second copy)
        overlay.update(file=str(path), source='timm')
    model = build_model_with_cfg(
        model_cls, variant, pretrained,
        pretrained_cfg=pretrained_cfg,
        pretrained_cfg_overlay=overlay or None,
        **kwargs,
    )
    if pretrained and kwargs.get('pretrained_model_args'):
        # built with another drop_path_rate / schedule / scaling than the weights were trained with: keep
        # the trained test-time network (features_only wrappers keep the model itself as `.model`)
        from .branches import rebase_survival
        rebase_survival(getattr(model, 'model', model) if not hasattr(model, 'survival_probs') else model,
                        kwargs['pretrained_model_args'])
    return model


def _apply_weights_config(config: Optional[Dict[str, Any]], variant: str, path, kwargs: Dict[str, Any]) -> None:
    """Use a weight folder's saved model arguments as defaults (explicit kwargs win)."""
    if not isinstance(config, dict) or 'architecture' not in config:
        return  # no timm Hub config (only weights shipped)
    arch = config.get('architecture')
    if arch and arch != variant:
        from ..hub.weights import WeightsError
        raise WeightsError(f'{path.parent / "config.json"} describes {arch}, not {variant}: '
                           f'the weights at {path} belong to another architecture')
    model_args = {k: v for k, v in (config.get('model_args') or {}).items() if k not in _RUNTIME_KWARGS}
    for k, v in model_args.items():
        kwargs.setdefault(k, v)
    if model_args:
        kwargs.setdefault('pretrained_model_args', model_args)
