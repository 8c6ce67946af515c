"""``sdzoo export``: validated ONNX files and Triton model repositories."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..cli_args import add_checkpoint_args, checkpoint_kwargs
from ..hub.model_folder import folder_entry_name

__all__ = ['add_parser', 'shipped_weights', 'repository_name']


def shipped_weights() -> Tuple[List[str], List[str]]:
    """``(registered, unregistered)`` ``<model>.<tag>`` names with a local ``model.safetensors``.

    Local means ``weights/<model>.<tag>/model.safetensors`` in one of
    :func:`sdzoo.hub.weights.weights_dirs` (no download).
    """
    import timm
    import sdzoo  # noqa: F401
    from ..hub.weights import weights_dirs
    found: Dict[str, None] = {}
    for d in weights_dirs():
        if d.is_dir():
            for sub in sorted(d.iterdir()):
                if (sub / 'model.safetensors').is_file() and '.' in sub.name:
                    found.setdefault(sub.name)
    registered = set(timm.list_pretrained('sd_*'))
    return [n for n in found if n in registered], [n for n in found if n not in registered]


def repository_name(model_name: str) -> str:
    """Repository entry for ``<model>.<tag>``: the bare model name for its default tag, else ``<model>_<tag>``."""
    from timm.models import get_pretrained_cfg
    arch, _, tag = model_name.partition('.')
    if not tag:
        return arch
    cfg = get_pretrained_cfg(arch)
    default_tag = cfg.to_dict().get('tag') if cfg is not None else None
    return arch if tag == default_tag else f'{arch}_{tag}'


def _read_labels(path: Optional[str]) -> Optional[List[str]]:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f'labels file {p} does not exist')
    return [line.rstrip('\n') for line in p.read_text(encoding='utf-8').splitlines() if line.strip()]


def _export_kwargs(args: argparse.Namespace) -> Dict:
    kwargs = dict(fp16=args.fp16, preprocess=args.preprocess, opset=args.opset,
                  dynamo=args.exporter == 'dynamo', data_dir=args.data, val_images=args.val_images,
                  tolerance=args.tolerance, seed=args.seed)
    return kwargs


def _print_report(report: Dict, as_json: bool) -> None:
    from .validate import format_report
    print(json.dumps(report, indent=2) if as_json else format_report(report))


def _export_one(args: argparse.Namespace, name: str, out: Path, pretrained: bool, checkpoint: Optional[str],
                tag: Optional[str]) -> Dict:
    from ..models.load import create_model
    from .onnx import export_onnx
    model = create_model(name, pretrained=pretrained, checkpoint=checkpoint, **checkpoint_kwargs(args))
    if getattr(args, 'keep_blocks', None) is not None:
        full, model = model, _prune(args, model)
        if args.depth_data is not None:
            _gate_depth(args, full, model, name, out)
    cfg = model.pretrained_cfg or {}
    if tag is None:
        tag = (cfg.get('tag') or '') if pretrained or Path(name).is_dir() else ''
    arch = cfg.get('architecture') if Path(name).is_dir() else name.split('.', 1)[0]
    return export_onnx(model, out, model_name=arch, tag=tag,
                       labels=_read_labels(args.labels), **_export_kwargs(args))


def _prune(args: argparse.Namespace, model):
    """``--keep-blocks N``: :func:`sdzoo.models.depth.prune_depth` before export (a plain, shallower graph)."""
    from ..cli_args import CLIError
    from ..models.depth import default_heal_steps, prune_depth, residual_blocks
    steps = default_heal_steps(args.depth_data) if args.heal_steps is None else args.heal_steps
    if steps and args.keep_blocks < len(residual_blocks(model)):  # keeping every block removes nothing to heal
        print(f'depth: after removing blocks, {steps} steps of distillation from the full model on training images of '
              f'{args.depth_data} (--heal-steps 0 skips it)', file=sys.stderr)
    try:
        return prune_depth(model, args.keep_blocks, strategy=args.strategy, data=args.depth_data,
                           calibration_images=args.depth_calibration_images, heal_steps=steps, seed=args.seed,
                           log=(lambda m: print(m, file=sys.stderr)) if args.debug else None)
    except ValueError as e:
        raise CLIError(f'--keep-blocks: {e}') from None


def _gate_depth(args: argparse.Namespace, full, pruned, name: str, out: Path) -> None:
    """The INT8 gate's rule for fewer blocks: pruned against full depth, paired, on held-out training images
    that greedy's calibration draw did not see; refused (nothing written) beyond --max-accuracy-drop."""
    import torch
    from ..models.depth import load_images
    from .quantize import hits, judge_drop
    skip = args.depth_calibration_images if args.strategy == 'greedy' else 0
    x, y, desc = load_images(full, args.depth_data, 'val', args.eval_images, seed=args.seed, skip=skip,
                             with_labels=True)
    if skip and not len(x):  # a small folder: greedy scored blocks on all its held-out images
        x, y, desc = load_images(full, args.depth_data, 'val', args.eval_images, seed=args.seed, with_labels=True)
        desc += ', the same images greedy chose the blocks on (too few to hold any back): optimistic'
        skip = 0
    with torch.no_grad():
        h = [hits(lambda b, m=m: m(torch.from_numpy(b)).numpy(), x.numpy(), y.numpy()) for m in (full.eval(), pruned.eval())]
    depth = pruned.pretrained_cfg['depth']
    depth['accuracy'] = judge_drop(h[0], h[1], 'val', desc + (' (not the greedy calibration images)' if skip else ''),
                                   args.max_accuracy_drop, name, out,
                                   names=('full depth', f"{len(depth['kept_blocks'])} of {depth['blocks_total']} blocks"))
    a = depth['accuracy']
    print(f"depth: {len(depth['kept_blocks'])} of {depth['blocks_total']} blocks ({depth['strategy']}): top-1 "
          f"{a['top1_int8']:.2f}% vs {a['top1_fp32']:.2f}% at full depth on {a['data']}, drop {a['drop_points']:+.2f} "
          f"(paired 95% interval [{a['gate']['interval_points'][0]:+.2f}, {a['gate']['interval_points'][1]:+.2f}], "
          f"allowed {a['max_drop_points']:g}) -> ok", file=sys.stderr)


def _check_keep_blocks(args: argparse.Namespace) -> None:
    from ..cli_args import CLIError
    args.depth_data = args.data  # training images of the data set (before --data becomes its test folder)
    if args.keep_blocks is None:
        if args.strategy is not None or args.heal_steps is not None:
            raise CLIError(f"--{'strategy' if args.strategy is not None else 'heal-steps'} acts on the blocks "
                           '--keep-blocks N keeps: add --keep-blocks')
        return
    if args.model is None:
        raise CLIError('--keep-blocks needs a MODEL')
    if args.keep_blocks < 1:
        raise CLIError(f'--keep-blocks must be >= 1, got {args.keep_blocks}')
    if args.depth_calibration_images < 1:
        raise CLIError(f'--depth-calibration-images must be >= 1, got {args.depth_calibration_images}')
    if args.heal_steps is not None and args.heal_steps < 0:
        raise CLIError(f'--heal-steps must be >= 0, got {args.heal_steps}')
    if args.heal_steps and args.data is None:
        raise CLIError('--heal-steps needs --data DATASET: it distils the full model on its training images')
    args.strategy = args.strategy or 'greedy'
    if args.strategy == 'greedy' and args.data is None:
        raise CLIError("--keep-blocks with --strategy greedy (the default) needs --data DATASET (e.g. cifar10, or a "
                       "folder with train/): it scores blocks on held-out training images")


def _recorded_data(name: str) -> Optional[str]:
    """The data set a shipped ``<model>.<tag>`` was evaluated on (its ``validate.json``), if recorded."""
    from ..hub.weights import weights_dirs
    for d in weights_dirs():
        f = d / name / 'validate.json'
        if f.is_file():
            try:
                return json.loads(f.read_text(encoding='utf-8')).get('data') or None
            except ValueError:
                return None
    return None


def _training_record(args: argparse.Namespace) -> Optional[Dict]:
    """The training run's data.json of the weights being exported (a model folder, its run, or a checkpoint's
    run directory), so the INT8 gate can keep to the images the model never trained on."""
    places = []
    if args.model is not None and Path(args.model).is_dir():
        from ..hub.model_folder import find_model_folder
        folder = find_model_folder(args.model)
        if folder is not None:
            places += [folder / 'data.json', folder.parent / 'data.json']
    if getattr(args, 'checkpoint', None):
        places.append(Path(args.checkpoint).parent / 'data.json')
    for f in places:
        if f.is_file():
            try:
                return json.loads(f.read_text(encoding='utf-8'))
            except ValueError:
                return None
    return None


def _int8_kwargs(args: argparse.Namespace) -> Dict:
    activations = args.int8_activations
    if activations == 'auto':  # TensorRT's explicit quantization takes symmetric int8 only; the CPU is fastest with uint8
        activations = 'int8' if args.tensorrt else 'uint8'
    return dict(calibration_images=args.calibration_images, method=args.calibration_method, mode=args.int8_mode,
                activation_type=activations, eval_split=args.eval_split, eval_images=args.eval_images,
                max_accuracy_drop=args.max_accuracy_drop, threads=args.threads, trained_on=_training_record(args))


def _export_int8(args: argparse.Namespace, name: str, fp32_out: Optional[Path], int8_out: Path, pretrained: bool,
                 checkpoint: Optional[str], tag: Optional[str], data: str) -> Tuple[Optional[Dict], Dict]:
    """fp32 export (validated) into a temp folder, INT8 from it behind the accuracy gate, then both land.

    ``fp32_out`` None keeps only the INT8 file. Nothing is written when either step fails."""
    import tempfile
    from ..files import atomic_write_json
    from .onnx import report_path_for
    from ..files import land_file
    from .quantize import quantize_onnx
    with tempfile.TemporaryDirectory(prefix='sdzoo-export-') as tmp:
        staged = Path(tmp) / 'model.onnx'
        report = _export_one(args, name, staged, pretrained, checkpoint, tag)
        int8_report = quantize_onnx(staged, int8_out, data=data, **_int8_kwargs(args))
        if fp32_out is None:
            return None, int8_report
        land_file(staged, fp32_out)
        report.update(file=str(fp32_out), report=str(report_path_for(fp32_out)))
        atomic_write_json(report_path_for(fp32_out), report)
    return report, int8_report


def _triton_kwargs(args: argparse.Namespace) -> Dict:
    return dict(max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us,
                instance_kind=args.instance_kind, tensorrt=args.tensorrt, tensorrt_fp16=not args.tensorrt_fp32)


def _image_folder(data: str) -> str:
    """--data as a folder of class sub-folders: a path, or a data set name under $SDZOO_DATA (as for
    train/validate); a data set root with train/ gives its test split (held-out images), else val/, else
    train/ (the parity check compares two graphs, it does not score the model)."""
    from ..cli_args import CLIError
    from ..data.sources import default_data_root
    path = Path(data)
    if not path.is_dir():
        path = default_data_root() / data
        if not path.is_dir():
            raise CLIError(f'--data {data}: no such folder (nor {path})')
    if (path / 'train').is_dir():
        path = next(path / s for s in ('test', 'val', 'validation', 'train') if (path / s).is_dir())
    return str(path)


def _model_folder(args: argparse.Namespace) -> Optional[Path]:
    """MODEL given as a model folder or finished run directory: its model folder (default --out beside it)."""
    from ..cli_args import CLIError
    from ..hub.model_folder import find_model_folder
    if args.model is None or not Path(args.model).is_dir():
        return None
    folder = find_model_folder(args.model)
    if folder is None:
        raise CLIError(f'{args.model} is a folder but holds no model: expected config.json + model.safetensors, '
                       'or a finished run directory with model/ in it')
    if args.pretrained or args.checkpoint:
        raise CLIError(f'{args.model} is a model folder and brings its own weights: drop --pretrained/--checkpoint')
    if not args.out and not args.repository:
        args.out = str(folder / 'model.onnx')
    return folder


def _cmd_export(args: argparse.Namespace) -> int:
    from ..cli_args import CLIError
    from .triton import MODEL_FILE, check_model_name, model_dir, write_triton_model
    if args.val_images < 0:
        raise CLIError(f'--val-images must be >= 0, got {args.val_images}')
    if args.tolerance is not None and not args.tolerance > 0:
        raise CLIError(f'--tolerance must be > 0, got {args.tolerance}')
    _check_keep_blocks(args)
    int8_data = args.data
    if args.int8:
        if args.fp16:
            raise CLIError('--int8 quantizes the fp32 export: drop --fp16')
        if args.calibration_images < 1:
            raise CLIError(f'--calibration-images must be >= 1, got {args.calibration_images}')
        if args.eval_images is not None and args.eval_images < 1:
            raise CLIError(f'--eval-images must be >= 1, got {args.eval_images}')
        if not args.max_accuracy_drop >= 0:
            raise CLIError(f'--max-accuracy-drop must be >= 0 (top-1 points), got {args.max_accuracy_drop}')
        if args.model is not None and int8_data is None and not (args.pretrained and _recorded_data(args.model)):
            raise CLIError('--int8 needs --data DATASET (e.g. cifar10, or a folder with train/): calibration uses its '
                           'training split, the accuracy gate its validation (--eval-split) split')
        if not args.out and not args.repository:
            args.repository = 'export'
            print('note: --int8 without --out/--repository: writing into the model repository export/', file=sys.stderr)
    if args.data is not None:
        args.data = _image_folder(args.data)
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise CLIError(f'--checkpoint {args.checkpoint}: no such file')
    if args.out and args.repository:
        raise CLIError('give either --out FILE.onnx or --repository DIR, not both')
    if args.name and not args.repository:
        raise CLIError('--name names a model repository entry: use it with --repository')

    if args.model is None:
        if not args.repository:
            raise CLIError('give a MODEL to export (with --out FILE.onnx or --repository DIR), '
                           'or --repository DIR alone to export every shipped weight')
        if args.checkpoint or args.name:
            raise CLIError('--checkpoint/--name need a MODEL')
        names, unregistered = shipped_weights()
        for n in unregistered:
            print(f'skipping weights/{n}: {n} is not a registered pretrained tag', file=sys.stderr)
        if not names:
            from ..hub.weights import weights_dirs
            raise CLIError('no shipped weights to export: no <model>.<tag>/model.safetensors in '
                           f'{", ".join(str(d) for d in weights_dirs())}. Train and publish one first, or export a '
                           'checkpoint: sdzoo export MODEL --checkpoint FILE --repository DIR --name NAME')
        for n in names:
            entry = repository_name(n)
            out = model_dir(args.repository, entry) / '1' / MODEL_FILE
            if args.int8:
                data = _recorded_data(n) or int8_data
                if data is None:
                    raise CLIError(f'{n} records no data set (validate.json): give --data for its calibration')
                _land_int8(args, n, out, entry, True, None, None, data)
                continue
            report = _export_one(args, n, out, pretrained=True, checkpoint=None, tag=None)
            write_triton_model(args.repository, entry, **_triton_kwargs(args))
            _print_report(report, args.json)
            print(f'{n} -> {model_dir(args.repository, entry)}')
        return 0

    folder = _model_folder(args)
    if not args.out and not args.repository:
        raise CLIError('where to? give --out FILE.onnx, or --repository DIR for a Triton model repository')
    weighted = args.pretrained or args.checkpoint or folder is not None
    if args.repository:
        if not weighted:
            raise CLIError('a repository entry needs trained weights: add --pretrained or --checkpoint FILE')
        entry = check_model_name(args.name) if args.name else (
            folder_entry_name(folder) if folder is not None else repository_name(args.model))
        if args.keep_blocks is not None and not args.name:  # beside the full-depth entry, never over it
            entry = check_model_name(f'{entry}_k{args.keep_blocks}')
        out = model_dir(args.repository, entry) / '1' / MODEL_FILE
    else:
        out = Path(args.out)
        if out.suffix != '.onnx':
            raise CLIError(f'--out must name a .onnx file, got {out}')
    if not weighted:
        print(f'note: neither --pretrained nor --checkpoint given: exporting a randomly initialised {args.model}',
              file=sys.stderr)
    if args.int8:
        data = int8_data or _recorded_data(args.model)
        _land_int8(args, args.model, out, entry if args.repository else None, bool(args.pretrained),
                   args.checkpoint, args.tag, data)
        return 0
    report = _export_one(args, args.model, out, bool(args.pretrained), args.checkpoint, args.tag)
    if args.repository:
        entry_dir = write_triton_model(args.repository, entry, **_triton_kwargs(args))
        _print_report(report, args.json)
        print(f'{args.model} -> {entry_dir}')
    else:
        _print_report(report, args.json)
        if folder is not None and not args.json:
            print(f'{args.model} -> {out}')
    return 0


def _land_int8(args: argparse.Namespace, name: str, out: Path, entry: Optional[str], pretrained: bool,
               checkpoint: Optional[str], tag: Optional[str], data: str) -> None:
    """``--int8``: into a repository, entries ``<entry>`` (fp32) and ``<entry>_int8``; else the INT8 file at ``out``."""
    from .quantize import format_int8_report
    from .triton import MODEL_FILE, model_dir, write_triton_model
    if entry is None:
        _, int8_report = _export_int8(args, name, None, out, pretrained, checkpoint, tag, data)
    else:
        int8_out = model_dir(args.repository, f'{entry}_int8') / '1' / MODEL_FILE
        report, int8_report = _export_int8(args, name, out, int8_out, pretrained, checkpoint, tag, data)
        write_triton_model(args.repository, entry, **_triton_kwargs(args))
        write_triton_model(args.repository, f'{entry}_int8', **_triton_kwargs(args))
        _print_report(report, args.json)
    print(json.dumps(int8_report, indent=2) if args.json else format_int8_report(int8_report))
    if args.int8_record:
        _record_int8(args, out if entry is not None else None, Path(int8_report['file']), int8_report, data)
    if entry is not None:
        print(f'{name} -> {model_dir(args.repository, entry)} (fp32), {model_dir(args.repository, entry + "_int8")} (int8)')


def _record_int8(args: argparse.Namespace, fp32_file: Optional[Path], int8_file: Path, int8_report: Dict,
                 data: str) -> None:
    """``--int8-record``: top-1 of fp32 and INT8 on the full test split into ``weights/<model>.<tag>/int8.json``."""
    from ..cli_args import CLIError
    from ..hub.weights import find_weights_folder
    from ..files import atomic_write_json
    from .quantize import measure_pair
    name = f"{int8_report['model']}.{int8_report['tag']}" if int8_report.get('tag') else int8_report['model']
    folder = find_weights_folder(name)
    if folder is None or fp32_file is None:
        raise CLIError(f'--int8-record needs shipped weights and --repository (no weights folder for {name})')
    test = measure_pair(fp32_file, int8_file, data, split='test', threads=args.threads)
    record = {'model': name, 'precision': 'int8', 'test': test, 'gate': int8_report['accuracy'],
              'quantization': int8_report['quantization'], 'bytes': int8_report['bytes'],
              'fp32_bytes': int8_report['fp32_bytes'],
              'command': 'sdzoo ' + ' '.join(sys.argv[1:])}
    atomic_write_json(Path(folder) / 'int8.json', record)
    print(f"{name}: test top-1 fp32 {test['top1_fp32']:.2f}% int8 {test['top1_int8']:.2f}% on {test['data']} "
          f"-> {Path(folder) / 'int8.json'}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'export', help='export a model to a validated ONNX file or a Triton model repository',
        description='Fold the survival factors and BatchNorms, export to ONNX (dynamic batch), check it with '
                    'onnxruntime against PyTorch, and only then write it (plus MODEL.report.json).')
    p.add_argument('model', nargs='?', help='registered model, e.g. sd_resnet110 or sd_resnet110.sd_cifar10, a model '
                                            'folder or a finished run directory (default --out: its model/model.onnx); '
                                            'omit with --repository to export every shipped weight')
    w = p.add_mutually_exclusive_group()
    w.add_argument('--pretrained', action='store_true', help='the shipped / published weights of MODEL')
    w.add_argument('--checkpoint', metavar='FILE',
                   help=".safetensors state dict or trainer checkpoint .pt (its 'model' entry; default: none)")
    p.add_argument('--out', metavar='FILE.onnx', help='output file, the report goes next to it (default: a model folder\'s model.onnx)')
    p.add_argument('--repository', metavar='DIR', help='Triton model repository: writes DIR/NAME/{config.pbtxt,'
                                                       'labels.txt,1/model.onnx} (default: none)')
    p.add_argument('--name', help='repository entry name (default: model name, or model_tag for other tags)')
    add_checkpoint_args(p)
    p.add_argument('--tag', default=None, help='weights tag recorded in the metadata (default: the pretrained tag)')
    p.add_argument('--labels', metavar='FILE', help='class names, one per line (default: the weights\' label_names)')
    p.add_argument('--fp16', action='store_true', help='fp16 weights and compute (inputs/outputs stay float32)')
    p.add_argument('--preprocess', action='store_true',
                   help='normalization inside the graph: input "image" uint8 NHWC at the model input size')
    from . import DEFAULT_OPSET
    p.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset (default {DEFAULT_OPSET})')
    p.add_argument('--exporter', choices=('dynamo', 'torchscript'), default='dynamo',
                   help='torch.export-based exporter (default) or the legacy TorchScript one')
    p.add_argument('--data', metavar='DIR', help='image folder (class sub-folders) for real-image parity, or a '
                   'data set name under $SDZOO_DATA (e.g. cifar10; a train/ test/ root gives its test split; default: random '
                   'inputs only)')
    p.add_argument('--val-images', type=int, default=64, help='real images to check with --data (default 64)')
    p.add_argument('--tolerance', type=float, default=None,
                   help='max |onnx - torch| relative to the logit scale (default 1e-4 fp32, 1e-2 fp16)')
    p.add_argument('--seed', type=int, default=0, help='seed of the random parity inputs (default: 0)')
    p.add_argument('--max-batch-size', type=int, default=64, help='Triton max_batch_size (default 64)')
    p.add_argument('--max-queue-delay-us', type=int, default=100, help='Triton dynamic batching delay')
    p.add_argument('--instance-kind', choices=('gpu', 'cpu'), default='gpu', help='Triton instance group kind')
    p.add_argument('--tensorrt', action='store_true', help='add the TensorRT accelerator to config.pbtxt')
    p.add_argument('--tensorrt-fp32', action='store_true', help='TensorRT precision FP32 (default FP16)')
    from .int8_recipe import CALIBRATION_METHODS, DEFAULT_CALIBRATION_IMAGES, DEFAULT_MAX_ACCURACY_DROP, DEFAULT_METHOD
    q = p.add_argument_group('INT8 (docs/int8.md)')
    q.add_argument('--int8', action='store_true',
                   help='also write an INT8 model (onnxruntime static QDQ quantization, per-channel weights): with '
                        '--repository as entry NAME_int8 next to NAME, with --out at FILE.onnx; needs --data DATASET')
    q.add_argument('--calibration-images', type=int, default=DEFAULT_CALIBRATION_IMAGES,
                   help=f'training-split images that calibrate the activation ranges (default {DEFAULT_CALIBRATION_IMAGES})')
    q.add_argument('--calibration-method', choices=sorted(CALIBRATION_METHODS), default=DEFAULT_METHOD,
                   help=f'activation range calibration (default {DEFAULT_METHOD}, chosen by measurement)')
    q.add_argument('--int8-activations', choices=('auto', 'uint8', 'int8'), default='auto',
                   help='activation type: uint8 (fastest on x86 CPUs) or symmetric int8 (what TensorRT takes); '
                        'auto = int8 with --tensorrt, else uint8')
    q.add_argument('--int8-mode', choices=('static', 'dynamic'), default='static',
                   help='static QDQ (default) or dynamic quantization of the MatMuls (no calibration)')
    q.add_argument('--max-accuracy-drop', type=float, default=DEFAULT_MAX_ACCURACY_DROP,
                   help=f'refuse (exit 2, nothing written) if INT8 top-1 is more than this many points below fp32 '
                        f'(default {DEFAULT_MAX_ACCURACY_DROP})')
    q.add_argument('--eval-split', choices=('val', 'test'), default='val',
                   help='split the accuracy gate measures on (default val: the held-out training images)')
    q.add_argument('--eval-images', type=int, default=None, help='images of --eval-split to measure (default all)')
    q.add_argument('--int8-record', action='store_true',
                   help='also measure fp32 and INT8 top-1 on the full test split and write weights/<model>.<tag>/'
                        'int8.json (what MODEL_CARDS.md shows; shipped weights into a --repository only)')
    q.add_argument('--threads', type=int, default=None, help="onnxruntime intra-op threads for the accuracy gate (default: onnxruntime's choice)")
    d = p.add_argument_group('depth on demand (sdzoo.prune_depth)')
    d.add_argument('--keep-blocks', type=int, default=None, metavar='N',
                   help='keep only N residual blocks (the others become their shortcut) before export; the choice '
                        'goes into the ONNX metadata (sdzoo.depth); default: all blocks')
    d.add_argument('--strategy', choices=('greedy', 'survival', 'every_other'), default=None,
                   help='which blocks --keep-blocks keeps (default greedy: needs --data; with --data the BatchNorms '
                        'after the first removed block re-estimate their statistics on training images)')
    d.add_argument('--depth-calibration-images', type=int, default=500,
                   help='held-out training images greedy scores blocks on (default 500)')
    d.add_argument('--heal-steps', type=int, default=None, metavar='N',
                   help='after removing blocks, distil the full model into the pruned one for N SGD steps of 64 '
                        'augmented training images of --data (default 300 with --data: it never measured worse and '
                        'gains most at deep cuts, but takes minutes on sd_resnet110; 0: off)')
    p.add_argument('--json', action='store_true', help='print the report as JSON')
    p.add_argument('--debug', action='store_true', help='tracebacks instead of one-line errors')
    p.set_defaults(func=_cmd_export)
