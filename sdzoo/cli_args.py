"""What every ``sdzoo`` sub-command shares: the user-error exception, the flags that rebuild a checkpoint's
architecture, and the help formatter. Stdlib only, so any room's ``add_parser`` can use it without reaching up
to the command line's dispatcher."""
from __future__ import annotations

import argparse
from typing import Dict

__all__ = ['CLIError', 'add_checkpoint_args', 'checkpoint_kwargs', 'HelpFormatter']


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
