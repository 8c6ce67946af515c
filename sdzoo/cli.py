"""The ``sdzoo`` command line: one sub-command per capability, each defined next to its code."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# sub-command name -> module that provides ``add_parser(subparsers)`` and the handler it sets
_COMMANDS = {
    'list': 'sdzoo.info',
    'info': 'sdzoo.info',
    'train': 'sdzoo.train.cli',
    'finetune': 'sdzoo.train.cli',
    'validate': 'sdzoo.train.cli',
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='sdzoo', description='Stochastic-depth model zoo for timm.')
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
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
    sys.exit(main())
