"""The ``sdzoo`` command line: one sub-command per capability, each defined next to its code."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from .cli_args import CLIError, HelpFormatter, add_checkpoint_args, checkpoint_kwargs  # noqa: F401  (sub-commands' API)

# sub-command name -> module that provides ``add_parser(subparsers)`` and the handler it sets
_COMMANDS = {
    'list': 'sdzoo.info',
    'info': 'sdzoo.info',
    'train': 'sdzoo.train.cli',
    'finetune': 'sdzoo.train.cli',
    'validate': 'sdzoo.train.cli',
    'compare': 'sdzoo.reports.compare',
    'export': 'sdzoo.export.cli',
    'predict': 'sdzoo.predict',
    'serve': 'sdzoo.serve.cli',
    'push': 'sdzoo.hub.cli',
    'mirror': 'sdzoo.mirror.cli',
    'publish': 'sdzoo.reports.release',
    'cards': 'sdzoo.reports.cards',
    'demo': 'sdzoo.demo',
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='sdzoo', formatter_class=HelpFormatter,
                                     description='Stochastic-depth model zoo for timm. `sdzoo COMMAND --help` '
                                                 'shows each command\'s options.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    seen = set()
    for module_name in dict.fromkeys(_COMMANDS.values()):
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            if e.name and e.name.startswith('sdzoo'):
                continue  # capability not built yet
            raise
        if module_name not in seen:
            module.add_parser(sub)
            seen.add(module_name)
    for p in sub.choices.values():
        p.formatter_class = HelpFormatter
    return parser


# commands that build or load PyTorch models: they register the sd_* models with timm first. The others (serve,
# predict, mirror, compare) run without torch, in an install of sdzoo[cpu,serve] alone.
NEEDS_MODELS = frozenset({'list', 'info', 'train', 'finetune', 'validate', 'export', 'push', 'publish', 'cards',
                          'demo'})
# a missing module -> the extra that installs it
_EXTRAS = {'torch': 'torch', 'torchvision': 'torch', 'timm': 'torch', 'safetensors': 'torch', 'onnx': 'torch',
           'onnxscript': 'torch', 'huggingface_hub': 'torch', 'matplotlib': 'torch', 'onnxruntime': 'cpu',
           'fastapi': 'serve', 'uvicorn': 'serve', 'starlette': 'serve', 'prometheus_client': 'serve',
           'multipart': 'serve', 'python_multipart': 'serve'}


def missing_extra(error: ModuleNotFoundError) -> Optional[str]:
    """The one line that says what to install for a module an optional extra brings (None: not one of ours)."""
    top = (error.name or '').split('.')[0]
    extra = _EXTRAS.get(top)
    if extra is None:
        return None
    what = {'torch': 'PyTorch and timm', 'cpu': 'onnxruntime', 'serve': 'the HTTP server stack'}[extra]
    alt = " (or 'sdzoo[gpu]' for onnxruntime-gpu)" if extra == 'cpu' else ''
    return f"needs {what} (module {top!r} is not installed): pip install 'sdzoo[{extra}]'{alt}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in NEEDS_MODELS:
            import sdzoo
            sdzoo.register_models()  # after parsing: help and usage errors need no torch
        return int(args.func(args) or 0)
    except CLIError as e:
        parser.exit(2, f'sdzoo {args.command}: error: {e}\n')
    except ModuleNotFoundError as e:
        message = missing_extra(e)
        if message is None or getattr(args, 'debug', False):
            raise
        parser.exit(2, f'sdzoo {args.command}: error: {message}\n')
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        if getattr(args, 'debug', False):
            raise
        parser.exit(2, f'sdzoo {args.command}: error: {e}\n')
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    # `python -m sdzoo.cli` (torchrun): run the importable module's main, so that its CLIError is the one the
    # sub-commands raise (this file runs as __main__, a second copy of the module)
    from sdzoo.cli import main as _main
    sys.exit(_main())
