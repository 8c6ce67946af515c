"""``sdzoo predict``: top-k classes of image files with an exported ONNX model, through onnxruntime alone."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli_args import CLIError

__all__ = ['predict_command', 'add_parser']


def predict_command(args: argparse.Namespace) -> int:
    from PIL import Image, UnidentifiedImageError
    from .hub.model_folder import find_model_folder
    from .runtime import OrtModel
    if args.top_k < 1:
        raise CLIError(f'--top-k must be >= 1, got {args.top_k}')
    for p in args.images:
        if not Path(p).is_file():
            raise CLIError(f'image {p}: no such file')
    if Path(args.model).is_dir():  # a model folder or finished run: the ONNX `sdzoo export RUN_DIR` put there
        folder = find_model_folder(args.model)
        if folder is None or not (folder / 'model.onnx').is_file():
            raise CLIError(f'{args.model} has no exported model.onnx yet: run `sdzoo export {args.model}` first')
        args.model = str(folder / 'model.onnx')
    model = OrtModel(args.model, require_gpu=args.require_gpu, allow_fallback=not args.require_gpu,
                     intra_op_num_threads=args.threads)
    images = []
    for p in args.images:
        try:
            with Image.open(p) as img:
                images.append(img.convert('RGB'))
        except (UnidentifiedImageError, OSError) as e:
            raise CLIError(f'image {p} cannot be read: {e}') from e
    results = []
    for i in range(0, len(images), args.batch_size):
        results += model.predict(model.preprocess(images[i:i + args.batch_size]), top_k=args.top_k)
    if args.json:
        print(json.dumps({'model': str(args.model), 'provider': model.provider,
                          'precision': model.metadata.get('sdzoo.precision', 'fp32'),
                          'predictions': [{'image': str(p), 'top_k': [{'label': lab, 'prob': prob} for lab, prob in r]}
                                          for p, r in zip(args.images, results)]}, indent=2))
        return 0
    width = max([len(lab) for r in results for lab, _ in r] + [5])
    for p, r in zip(args.images, results):
        print(p)
        for rank, (lab, prob) in enumerate(r, 1):
            print(f'  {rank:>2}. {lab:<{width}}  {prob:.4f}')
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('predict', help='top-k classes of images with an exported ONNX model (onnxruntime)')
    p.add_argument('model', metavar='MODEL', help='ONNX file written by sdzoo export, or a model folder / finished '
                                                  'run directory exported with `sdzoo export RUN_DIR`')
    p.add_argument('images', metavar='IMAGE', nargs='+', help='image files (any format PIL reads)')
    p.add_argument('--top-k', type=int, default=5, help='classes per image, at most the model\'s classes')
    p.add_argument('--batch-size', type=int, default=32, help='images per onnxruntime call')
    p.add_argument('--threads', type=int, default=None, help='onnxruntime intra-op threads (default: onnxruntime\'s choice)')
    p.add_argument('--require-gpu', action='store_true', help='fail unless a GPU execution provider is used')
    p.add_argument('--json', action='store_true', help='print JSON')
    p.add_argument('--debug', action='store_true', help='tracebacks instead of one-line errors')
    p.set_defaults(func=predict_command)
