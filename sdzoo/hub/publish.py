"""Write and check publishable weight folders in timm's Hugging Face Hub layout.

``weights/<model>.<tag>/`` holds what ``timm``'s ``push_to_hf_hub`` uploads (``config.json`` and
``model.safetensors`` from ``timm.models.save_for_hf``, a ``README.md`` model card with Hub
metadata) plus the training record (``metrics.csv``, ``training_curves.png``). The folder is built
next to its target and renamed into place, and the weight file's sha256 goes into the manifest
that ``verify_file`` trusts.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from ..files import atomic_write_json
from .weights import WEIGHTS_FILE, manifest, manifest_path as default_manifest_path, sha256_file

__all__ = [
    'save_weights_folder', 'write_model_folder', 'record_weights', 'validate_weights_folder', 'sd_model_args', 'render_model_card',
    'FolderReport', 'METRICS_FILE', 'PLOT_FILE',
]

METRICS_FILE = 'metrics.csv'
PLOT_FILE = 'training_curves.png'
REQUIRED_FILES = ('config.json', WEIGHTS_FILE, 'README.md')

# tag fragment -> (Hub dataset id, display name); the longest match wins (cifar100 before cifar10)
_DATASETS = {
    'cifar100': ('uoft-cs/cifar100', 'CIFAR-100'),
    'cifar10': ('uoft-cs/cifar10', 'CIFAR-10'),
    'fashion_mnist': ('zalando-datasets/fashion_mnist', 'Fashion-MNIST'),
    'fmnist': ('zalando-datasets/fashion_mnist', 'Fashion-MNIST'),
    'in21k': ('timm/imagenet-22k-wds', 'ImageNet-21k'),
    'in1k': ('ILSVRC/imagenet-1k', 'ImageNet-1k'),
}

_CITATION = """@inproceedings{huang2016deep,
  title={Deep Networks with Stochastic Depth},
  author={Huang, Gao and Sun, Yu and Liu, Zhuang and Sedra, Daniel and Weinberger, Kilian Q.},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2016}
}"""

# results key -> (model-index metric type, display name)
_METRICS = {
    'top1': ('accuracy', 'Top-1 accuracy (%)'),
    'top5': ('top_5_accuracy', 'Top-5 accuracy (%)'),
    'loss': ('loss', 'Cross-entropy loss'),
}


# --------------------------------------------------------------------------------------------- model


def sd_model_args(model: nn.Module) -> Dict[str, Any]:
    """Constructor arguments that reproduce a model's stochastic-depth setup.

    timm's ``get_model_args`` leaves drop rates out (they are training-only for timm's DropPath),
    but with ``scaling='paper'`` the survival probabilities scale every branch at test time.
    """
    from ..layers import sd_blocks, survival_schedule
    groups = sd_blocks(model)
    if not groups:
        return {}
    units = [u for g in groups for u in g]
    if any(u.folded for u in units):
        raise ValueError('model has been folded (survival probabilities live in its weights now): '
                         'publish the unfolded model, the loader rebuilds the architecture from config.json')
    scalings, modes = {u.scaling for u in units}, {u.mode for u in units}
    if len(scalings) > 1 or len(modes) > 1:
        raise ValueError(f'mixed stochastic-depth scaling {sorted(scalings)} / mode {sorted(modes)} '
                         'cannot be described by the model arguments')
    # a network sdzoo.prune_depth shortened is rebuilt at full depth, then loses the same blocks
    removed = list(getattr(model, 'sd_removed_blocks', None) or [])
    probs = list(model.sd_full_survival_probs) if removed else [g[0].survival_prob for g in groups]
    rate = getattr(model, 'sd_drop_path_rate', None)
    args: Dict[str, Any] = {}
    for schedule in ('linear', 'uniform'):
        if rate is not None and all(math.isclose(a, b, rel_tol=0, abs_tol=1e-9)
                                    for a, b in zip(probs, survival_schedule(len(probs), rate, schedule))):
            args.update(drop_path_rate=float(rate), sd_schedule=schedule)
            break
    else:
        args['sd_schedule'] = [float(p) for p in probs]
    args.update(sd_scaling=scalings.pop(), sd_mode=modes.pop())
    if removed:
        args['removed_blocks'] = removed
    return args


def _first_conv_in_chans(model: nn.Module, cfg: Mapping[str, Any]) -> Optional[int]:
    name = cfg.get('first_conv')
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    if not name:
        return None
    try:
        return int(model.get_submodule(name).in_channels)
    except (AttributeError, TypeError):
        return None


def _dataset_for(tag: str, dataset: Optional[Mapping[str, str]]) -> Dict[str, str]:
    if dataset:
        if not dataset.get('id'):
            raise ValueError("dataset needs at least an 'id' (the Hub dataset id, e.g. 'uoft-cs/cifar10')")
        return dict(dict(name=dataset['id'], split='test'), **dataset)
    for key in sorted(_DATASETS, key=len, reverse=True):
        if key in tag:
            hub_id, name = _DATASETS[key]
            return dict(id=hub_id, name=name, split='test')
    raise ValueError(f'cannot tell the dataset of tag {tag!r}: pass dataset=dict(id=..., name=..., split=...)')


def _check_results(results: Mapping[str, Any]) -> Dict[str, float]:
    if 'top1' not in results:
        raise ValueError(f'results need at least top1 (validation top-1 accuracy in %), got keys {sorted(results)}')
    out = {}
    for k in _METRICS:
        if k in results and results[k] is not None:
            v = results[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f'results[{k!r}] must be a finite number, got {v!r}')
            out[k] = float(v)
    return out


# ------------------------------------------------------------------------------------------ the card


def _fmt_seconds(v: Any) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        s = int(round(v))
        return f'{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s ({v:.0f} s)'
    return str(v)


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f'{v:.4f}'.rstrip('0').rstrip('.') if abs(v) < 1e6 else f'{v:.4g}'
    return str(v)


def render_model_card(
        *,
        name: str,
        config: Mapping[str, Any],
        results: Mapping[str, Any],
        train_info: Mapping[str, Any],
        dataset: Mapping[str, str],
        files: Mapping[str, Dict[str, Any]],
        param_count: int,
        license: str,
        hf_hub_id: str,
        has_plot: bool,
        has_metrics: bool,
        usage: Optional[Sequence[str]] = None,
) -> str:
    """README.md: Hub metadata (incl. model-index results) in the front matter, then the card.

    ``usage``: the lines that create the model in the card's usage example (default: by registry name).
    """
    metrics = _check_results(results)
    pcfg = config.get('pretrained_cfg', {})
    arch = config['architecture']
    size = pcfg.get('input_size', (3, 224, 224))
    lines = [
        '---', _card_data(name, dataset, metrics, license).to_yaml(), '---',
        f'# Model card for {name}', '',
        f'`{arch}` image classifier with stochastic depth (Huang et al., 2016), trained on {dataset["name"]} '
        f'with [sdzoo]({pcfg.get("origin_url", "https://github.com/sdzoo/sdzoo")}).', '',
    ] + ([f'> {train_info["note"]}', ''] if train_info.get('note') else []) + [
        '## Model Details',
        '- **Model type:** Image classification / feature backbone',
        '- **Model stats:**',
        f'  - Params (M): {param_count / 1e6:.2f}',
        f'  - Image size: {size[1]} x {size[2]} ({size[0]} channels)',
        f'  - Classes: {config.get("num_classes")}',
        f'- **Stochastic depth:** {_sd_description(config.get("model_args", {}))}',
        f'- **Papers:** {pcfg.get("paper_name", "Deep Networks with Stochastic Depth")}: '
        'https://arxiv.org/abs/1603.09382',
        f'- **Dataset:** {dataset["name"]} (`{dataset["id"]}`)',
        f'- **License:** {license}',
        '',
        '## Model Usage',
        '```python',
        'import timm',
        '',
        *(usage or [f"model = timm.create_model('{name}', pretrained=True).eval()  # the copy shipped with sdzoo",
                    f"# from the Hub once published there ({hf_hub_id} is the publishing target; `sdzoo push`):",
                    f"# timm.create_model('hf-hub:{hf_hub_id}', pretrained=True)"]),
        'data_config = timm.data.resolve_model_data_config(model)',
        'transform = timm.data.create_transform(**data_config, is_training=False)',
        '```',
        '',
    ]
    lines += _results_section(results, metrics, dataset)
    lines += _training_section(train_info, has_plot=has_plot, has_metrics=has_metrics)
    lines += ['', '## Files', '| file | bytes | sha256 |', '|---|---|---|']
    for fname, meta in files.items():
        lines.append(f'| {fname} | {meta["bytes"]} | `{meta["sha256"]}` |')
    lines += ['', '## Citation', '```bibtex', _CITATION, '```', '']
    return '\n'.join(lines)


def _card_data(name: str, dataset: Mapping[str, str], metrics: Mapping[str, float], license: str):
    """The Hub's front matter, with the measured results as a model-index the Hub shows."""
    from huggingface_hub import EvalResult, ModelCardData
    evals = [
        EvalResult(task_type='image-classification', task_name='Image Classification',
                   dataset_type=dataset['id'], dataset_name=dataset['name'], dataset_split=dataset.get('split'),
                   metric_type=_METRICS[k][0], metric_value=v, metric_name=_METRICS[k][1])
        for k, v in metrics.items()
    ]
    return ModelCardData(
        library_name='timm', license=license, datasets=[dataset['id']], metrics=['accuracy'],
        pipeline_tag='image-classification', model_name=name,
        tags=['image-classification', 'timm', 'sdzoo', 'stochastic-depth'], eval_results=evals,
    )


def _sd_description(args: Mapping[str, Any]) -> str:
    sched = args.get('sd_schedule', 'linear')
    if isinstance(sched, str):
        sd = f"{sched} survival schedule, drop_path_rate {args.get('drop_path_rate', 'default')} (p_L = 1 - rate)"
    else:
        sd = f'explicit survival probabilities {sched}'
    return sd + f", {args.get('sd_scaling', 'paper')} scaling"


def _results_section(results: Mapping[str, Any], metrics: Mapping[str, float], dataset: Mapping[str, str]) -> List[str]:
    lines = [
        '## Results',
        f'Evaluated on the {dataset["name"]} {dataset.get("split", "test")} split'
        + (f' ({results["images"]} images).' if isinstance(results.get('images'), int) else '.'),
        '',
        '| metric | value |',
        '|---|---|',
    ]
    for k, v in metrics.items():
        lines.append(f'| {_METRICS[k][1]} | {_fmt_value(v)} |')
    for k, v in results.items():
        if k not in _METRICS and isinstance(v, (int, float)) and not isinstance(v, bool):
            lines.append(f'| {k} | {_fmt_value(v)} |')
    return lines


def _training_section(train_info: Mapping[str, Any], *, has_plot: bool, has_metrics: bool) -> List[str]:
    lines = ['', '## Training']
    info = {k: v for k, v in train_info.items() if k != 'note'}  # the note is quoted at the top
    for key, label, fmt in (('epochs', 'Epochs', str), ('wall_clock', 'Wall-clock', _fmt_seconds),
                            ('hardware', 'Hardware', str)):
        if key in info:
            lines.append(f'- **{label}:** {fmt(info.pop(key))}')
    recipe = info.pop('recipe', None)
    commands = info.pop('commands', None)
    for k, v in info.items():
        lines.append(f'- **{k}:** {_fmt_value(v) if not isinstance(v, (dict, list)) else json.dumps(v)}')
    if recipe is not None:
        lines += ['', '### Recipe']
        if isinstance(recipe, Mapping):
            lines += ['```yaml'] + [f'{k}: {json.dumps(v)}' for k, v in recipe.items()] + ['```']
        else:
            lines.append(str(recipe))
    if commands:
        if isinstance(commands, str):
            commands = [commands]
        lines += ['', '### Commands', '```bash', *map(str, commands), '```']
    if has_plot:
        lines += ['', f'![training curves]({PLOT_FILE})']
    if has_metrics:
        lines += ['', f'Per-epoch training and validation metrics: [{METRICS_FILE}]({METRICS_FILE}).']
    return lines


# ------------------------------------------------------------------------------------- the manifest


def record_weights(
        name: str,
        weights_file: os.PathLike | str,
        manifest_path: Optional[os.PathLike | str] = None,
) -> Dict[str, Any]:
    """Record ``name`` -> sha256/size of ``weights_file`` in the manifest (sorted, atomic write)."""
    path = Path(manifest_path) if manifest_path is not None else default_manifest_path()
    entry = dict(sha256=sha256_file(weights_file), bytes=Path(weights_file).stat().st_size)
    data = manifest(path)
    data[name] = entry
    atomic_write_json(path, data, sort_keys=True)
    return entry


# ---------------------------------------------------------------------------------------- the folder


def save_weights_folder(
        model: nn.Module,
        out_dir: os.PathLike | str,
        *,
        model_name: str,
        tag: str,
        results: Mapping[str, Any],
        train_info: Mapping[str, Any],
        metrics_csv: Optional[os.PathLike | str] = None,
        plot_png: Optional[os.PathLike | str] = None,
        label_names: Optional[Sequence[str]] = None,
        dataset: Optional[Mapping[str, str]] = None,
        data_config: Optional[Dict[str, Any]] = None,
        license: Optional[str] = None,
        hf_hub_id: Optional[str] = None,
        manifest_path: Optional[os.PathLike | str] = None,
        overwrite: bool = False,
) -> Path:
    """Write ``<out_dir>/<model_name>.<tag>/`` and record its weights in the manifest.

    Args:
        model: the trained model (built by ``timm.create_model``; its pretrained cfg is kept).
        out_dir: the weights root (``weights/``); the folder itself (``weights/<model>.<tag>``) works too.
        model_name / tag: timm's ``model.tag`` naming, e.g. ``sd_resnet110`` / ``sd_cifar10``.
        results: validation results (the ``sdzoo validate`` JSON): ``top1`` (required), ``top5``,
            ``loss`` go into the card's model-index; other scalars into its results table.
        train_info: ``epochs``, ``wall_clock`` (seconds), ``hardware``, ``recipe`` (dict or text),
            ``commands`` (list); other keys are listed as they are.
        metrics_csv / plot_png: copied as ``metrics.csv`` / ``training_curves.png``.
        label_names: class names, stored in config.json as timm does.
        dataset: ``dict(id=<Hub dataset id>, name=..., split=...)``; guessed from the tag if omitted.
        data_config: preprocessing to record (timm ``save_for_hf``'s ``data_config``).
        hf_hub_id: Hub repo named in the card (default ``sdzoo/<model>.<tag>``).
        manifest_path: manifest to update (default: the package's, or ``$SDZOO_MANIFEST``).
        overwrite: replace an existing folder (else ``FileExistsError``).

    Returns:
        The written folder.
    """
    if not model_name or not tag or '.' in model_name or '/' in model_name + tag or '.' in tag:
        raise ValueError(f'model_name and tag must be plain names (model.tag naming), got {model_name!r}, {tag!r}')
    name = f'{model_name}.{tag}'
    out_dir = Path(out_dir)
    root = out_dir.parent if out_dir.name == name else out_dir
    folder = root / name
    if folder.exists() and not overwrite:
        raise FileExistsError(f'{folder} already exists (pass overwrite=True to replace it)')
    _check_results(results)
    ds = _dataset_for(tag, dataset)
    extras = {}
    for src, dst in ((metrics_csv, METRICS_FILE), (plot_png, PLOT_FILE)):
        if src is not None:
            if not Path(src).is_file():
                raise FileNotFoundError(f'{dst} source {src} does not exist')
            extras[dst] = Path(src)

    write_model_folder(model, folder, model_name=model_name, tag=tag, results=results, train_info=train_info,
                       extras=extras, label_names=label_names, dataset=ds, data_config=data_config,
                       license=license, hf_hub_id=hf_hub_id or f'sdzoo/{name}')
    record_weights(name, folder / WEIGHTS_FILE, manifest_path)
    return folder


def write_model_folder(
        model: nn.Module,
        folder: os.PathLike | str,
        *,
        model_name: str,
        tag: str,
        results: Mapping[str, Any],
        train_info: Mapping[str, Any],
        dataset: Mapping[str, str],
        extras: Optional[Mapping[str, Path]] = None,
        label_names: Optional[Sequence[str]] = None,
        data_config: Optional[Dict[str, Any]] = None,
        license: Optional[str] = None,
        hf_hub_id: Optional[str] = None,
        usage: Optional[Sequence[str]] = None,
) -> Path:
    """Write a Hub-layout folder (config.json, model.safetensors, README.md card, ``extras``) at ``folder``.

    Built next to its target, checked by loading it as users will (timm's ``local-dir:``), then renamed into
    place; the manifest is not touched (:func:`save_weights_folder` records published weights). The folder
    may have any name (a run's ``model/``): its config says ``<model_name>.<tag>``.
    """
    from timm.models import save_for_hf
    folder = Path(folder)
    name = f'{model_name}.{tag}'
    root = folder.parent
    extras = dict(extras or {})
    added_cfg = not hasattr(model, 'pretrained_cfg')
    if added_cfg:  # a model built without timm.create_model: use the registry's cfg for this name
        model.pretrained_cfg = _registry_cfg(model_name, tag)
    try:
        arch = model.pretrained_cfg.get('architecture')
        if arch and arch != model_name:
            raise ValueError(f'the model is a {arch}, not a {model_name}')
        model_args = sd_model_args(model)
        in_chans = _first_conv_in_chans(model, model.pretrained_cfg)
        if in_chans is not None:
            model_args['in_chans'] = in_chans
        model_config: Dict[str, Any] = dict(pretrained_cfg=dict(architecture=model_name, tag=tag))
        if license:
            model_config['pretrained_cfg']['license'] = license
        if label_names is not None:
            model_config['label_names'] = list(label_names)

        depth = model.pretrained_cfg.get('depth')
        if depth:  # sdzoo.prune_depth's record: beside timm's pretrained_cfg, whose loader knows no such key
            model_config['depth'] = depth

        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f'.{name}.', suffix='.tmp', dir=root))
        saved_cfg = model.pretrained_cfg
        try:
            model.pretrained_cfg = {k: v for k, v in saved_cfg.items() if k != 'depth'}
            try:
                save_for_hf(model, tmp, model_config=model_config, model_args=model_args,
                            data_config=data_config, safe_serialization=True)
            finally:
                model.pretrained_cfg = saved_cfg
            for dst, src in extras.items():
                shutil.copyfile(src, tmp / dst)
            config = json.loads((tmp / 'config.json').read_text(encoding='utf-8'))
            files = {f: dict(bytes=(tmp / f).stat().st_size, sha256=sha256_file(tmp / f))
                     for f in ['config.json', WEIGHTS_FILE, *extras]}
            card = render_model_card(
                name=name, config=config, results=results, train_info=train_info, dataset=dataset, files=files,
                param_count=sum(p.numel() for p in model.parameters()),
                license=config['pretrained_cfg'].get('license') or 'apache-2.0',
                hf_hub_id=hf_hub_id or f'sdzoo/{name}', usage=usage, has_plot=PLOT_FILE in extras,
                has_metrics=METRICS_FILE in extras)
            (tmp / 'README.md').write_text(card, encoding='utf-8')
            # what we publish must load: same checks as `sdzoo push --dry-run`, minus the manifest
            report = validate_weights_folder(tmp, name=name, check_manifest=False)
            report.folder = folder  # name the folder being written, not its temporary twin
            report.raise_on_failure()
            _replace_dir(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        if added_cfg:
            del model.pretrained_cfg
    return folder


def _registry_cfg(model_name: str, tag: str) -> Dict[str, Any]:
    from timm.models._builder import resolve_pretrained_cfg
    try:
        return resolve_pretrained_cfg(model_name, tag).to_dict()
    except RuntimeError:  # a new tag: start from the architecture's default cfg
        return resolve_pretrained_cfg(model_name).to_dict()


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished ``src`` to ``dst``; an existing ``dst`` is swapped out, then deleted."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = Path(tempfile.mkdtemp(prefix=f'.{dst.name}.', suffix='.old.tmp', dir=dst.parent))
    os.replace(dst, old / dst.name)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old / dst.name, dst)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------- validation


@dataclass
class FolderReport:
    """Outcome of :func:`validate_weights_folder`: one line per check."""
    folder: Path
    checks: List[tuple] = field(default_factory=list)  # (label, ok, detail)

    def add(self, label: str, ok: bool, detail: str) -> bool:
        self.checks.append((label, ok, detail))
        return ok

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.checks)

    def lines(self) -> List[str]:
        return [f'  {"ok  " if ok else "FAIL"}  {label}: {detail}' for label, ok, detail in self.checks]

    def raise_on_failure(self) -> 'FolderReport':
        if not self.ok:
            failed = '; '.join(f'{label}: {detail}' for label, ok, detail in self.checks if not ok)
            raise ValueError(f'{self.folder} is not a publishable weights folder: {failed}')
        return self


def validate_weights_folder(
        folder: os.PathLike | str,
        *,
        name: Optional[str] = None,
        manifest_path: Optional[os.PathLike | str] = None,
        check_manifest: bool = True,
) -> FolderReport:
    """Check a weights folder the way the loader and the Hub will use it.

    Files present; ``<architecture>.<tag>`` matches the folder name; config.json builds the
    architecture (timm's ``local-dir:`` path) and the weights load into it strictly and give finite
    logits of the right shape; the sha256 matches the manifest; the card's front matter has the
    Hub metadata and model-index metrics. Every check runs that can; nothing is raised here.
    """
    import timm
    folder = Path(folder)
    report = FolderReport(folder)
    name = name or folder.name
    if not folder.is_dir():
        report.add('folder', False, f'{folder} is not a directory')
        return report
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    present = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith('.'))
    report.add('files', not missing, f'missing {", ".join(missing)}' if missing else ', '.join(present))

    config = None
    if (folder / 'config.json').is_file():
        try:
            config = json.loads((folder / 'config.json').read_text(encoding='utf-8'))
            arch = config['architecture']
            pcfg = config['pretrained_cfg']
            ok = timm.is_model(arch)
            report.add('config.json', ok,
                       f'architecture {arch}, {config.get("num_classes")} classes, '
                       f'model_args {json.dumps(config.get("model_args", {}))}' if ok
                       else f'architecture {arch!r} is not a registered timm model')
            full = f'{arch}.{pcfg["tag"]}' if pcfg.get('tag') else arch
            report.add('name', full == name,
                       f'{full} (architecture.tag)' if full == name
                       else f'config.json says {full} but the folder is named {name}')
            if not ok:
                config = None
        except (ValueError, KeyError, TypeError) as e:
            report.add('config.json', False, f'unusable: {type(e).__name__}: {e}')
            config = None

    if config is not None and (folder / WEIGHTS_FILE).is_file():
        _check_weights(folder, config, report)

    if check_manifest and (folder / WEIGHTS_FILE).is_file():
        mpath = Path(manifest_path) if manifest_path is not None else default_manifest_path()
        entry = manifest(mpath).get(name)
        digest = sha256_file(folder / WEIGHTS_FILE)
        if entry is None:
            report.add('sha256', False, f'{name} is not recorded in {mpath}')
        else:
            ok = entry.get('sha256') == digest
            report.add('sha256', ok, f'{digest} matches {mpath} ({entry.get("bytes")} bytes)' if ok
                       else f'{WEIGHTS_FILE} has sha256 {digest}, {mpath} records {entry.get("sha256")}')

    if (folder / 'README.md').is_file():
        _check_card(folder / 'README.md', report)
    return report


def _check_weights(folder: Path, config: Dict[str, Any], report: FolderReport) -> None:
    import timm
    from safetensors.torch import load_file
    try:
        state_dict = load_file(folder / WEIGHTS_FILE, device='cpu')
    except Exception as e:
        report.add('weights', False, f'{WEIGHTS_FILE} does not load: {type(e).__name__}: {e}')
        return
    try:
        model = timm.create_model(f'local-dir:{folder}', pretrained=False)
    except Exception as e:
        report.add('weights', False, f'config.json does not build a model: {type(e).__name__}: {e}')
        return
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        report.add('weights', False, f'{WEIGHTS_FILE} does not load strictly into {config["architecture"]}: '
                   + ' '.join(str(e).split()))
        return
    n = sum(p.numel() for p in model.parameters())
    report.add('weights', True, f'{len(state_dict)} tensors load strictly into {config["architecture"]} '
               f'({n / 1e6:.2f}M params)')
    size = tuple(config['pretrained_cfg'].get('input_size', (3, 224, 224)))
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, *size))
    expected = (1, config.get('num_classes'))
    ok = tuple(out.shape) == expected and bool(torch.isfinite(out).all())
    report.add('forward', ok, f'{(1, *size)} -> {tuple(out.shape)}' + (', finite' if ok else
               f', expected {expected} and finite logits'))


def _check_card(readme: Path, report: FolderReport) -> None:
    from huggingface_hub import ModelCard
    try:
        card = ModelCard.load(readme)
    except Exception as e:
        report.add('model card', False, f'README.md front matter does not parse: {type(e).__name__}: {e}')
        return
    data = card.data
    problems = []
    if data.library_name != 'timm':
        problems.append(f'library_name is {data.library_name!r}, not timm')
    for key in ('license', 'datasets', 'metrics', 'tags'):
        if not getattr(data, key, None):
            problems.append(f'no {key}')
    evals = data.eval_results or []
    top1 = [e for e in evals if e.metric_type == 'accuracy' and isinstance(e.metric_value, (int, float))]
    if not top1:
        problems.append('no model-index accuracy result')
    if problems:
        report.add('model card', False, '; '.join(problems))
        return
    shown = ', '.join(f'{e.metric_type}={e.metric_value}' for e in evals)
    report.add('model card', True, f'library_name timm, license {data.license}, datasets {data.datasets}, '
               f'model-index on {evals[0].dataset_name} {evals[0].dataset_split}: {shown}')
