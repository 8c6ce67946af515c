"""``sdzoo mirror``: serve weight folders as a local Hugging Face Hub."""
from __future__ import annotations

import argparse

__all__ = ['add_parser']


def add_parser(sub: argparse._SubParsersAction) -> None:
    from .server import add_mirror_arguments, run_mirror
    m = sub.add_parser('mirror', help='serve weight folders as a local Hugging Face Hub (offline mirror)',
                       description='Serve ROOT/<model>.<tag>/ folders with the Hub endpoints huggingface_hub uses; '
                                   'point HF_ENDPOINT at it.')
    add_mirror_arguments(m)
    m.set_defaults(func=run_mirror)
