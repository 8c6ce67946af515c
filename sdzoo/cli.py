"""The ``sdzoo`` command line: one sub-command per capability, each defined next to its code."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Dict, List, Optional

# sub-command name -> module that provides ``add_parser(subparsers)`` and the handler it sets
_COMMANDS = {
    'list': 'sdzoo.info',
    'info': 'sdzoo.info',
    'train': 'sdzoo.train.cli',
    'finetune': 'sdzoo.train.cli',
    'validate': 'sdzoo.train.cli',
    'compare': 'sdzoo.train.cli',
    'export': 'sdzoo.export.cli',
    'predict': 'sdzoo.export.cli',
    'serve': 'sdzoo.serve.cli',
    'push': 'sdzoo.hub.cli',
    'mirror': 'sdzoo.hub.cli',
    'publish': 'sdzoo.hub.release',
    'cards': 'sdzoo.hub.cards',
    'demo': 'sdzoo.demo',
}


class CLIError(Exception):
    """A user error: printed as ``sdzoo: error: …`` with exit status 2, no traceback."""


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """Flags that rebuild the architecture a checkpoint was trained with (export and validate share them):
    with the paper's scaling the survival probabilities are part of the eval network."""
    p.add_argument('--num-classes', type=int, default=None, help='classes of the checkpoint (default: the model cfg)')
    p.add_argument('--in-chans', type=int, default=None, help='input channels of the checkpoint (default: the model cfg)')
    p.add_argument('--drop-path-rate', type=float, default=None,
                   help='1 - p_L the checkpoint was trained with (paper scaling uses it at test time; default: '
                        'recorded with the checkpoint, else the model default)')
    p.add_argument('--sd-scaling', choices=('paper', 'inverted'), default=None,
                   help='scaling used in training (default: recorded with the checkpoint, else paper)')


def checkpoint_kwargs(args: argparse.Namespace) -> Dict:
    """``create_model`` kwargs from :func:`add_checkpoint_args` flags that were given."""
    return {k: v for k in ('num_classes', 'in_chans', 'drop_path_rate', 'sd_scaling')
            if (v := getattr(args, k)) is not None}


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (unless it already says it, or the flag is a switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ''
        if (action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
                and 'default' not in text and action.nargs != 0):
            text += ' (default: %(default)s)'
        return text


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


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import sdzoo
    sdzoo._register()  # the console script defers it until here: help and usage errors need no torch
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        parser.exit(2, f'sdzoo {args.command}: error: {e}\n')
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
