"""What ``sdzoo serve`` is pointed at, checked before the server starts.

A repository whose entries have no ONNX yet (a fresh clone's ``export/`` holds only ``config.pbtxt`` and
``labels.txt``) is refused with the command that exports them, instead of a server that sits up with zero ready
models. A single model folder or finished run directory is served as a one-entry repository.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

__all__ = ['TORCH_SUFFIXES', 'missing_onnx', 'check_exported', 'single_model_repository']

TORCH_SUFFIXES = ('.pt', '.pth', '.bin', '.safetensors', '.ckpt')  # weights sdzoo serve cannot run


def missing_onnx(repository: Path, models: Optional[Sequence[str]] = None) -> List[str]:
    """Entries of ``repository`` (or just ``models``) without any ``<version>/model.onnx``."""
    entries = sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith('.'))
    if models:
        entries = [p for p in entries if p.name in set(models)]
    return [p.name for p in entries
            if not any(v.is_dir() and v.name.isdigit() and (v / 'model.onnx').is_file() for v in p.iterdir())]


def check_exported(repository: str, models: Optional[Sequence[str]] = None, shown: Optional[str] = None) -> None:
    """Raise a one-line error naming the export command when entries have no ONNX file yet."""
    from ..cli_args import CLIError
    root = Path(repository)
    if not root.is_dir():
        raise CLIError(f'model repository {shown or repository!r} is not a directory')
    missing = missing_onnx(root, models)
    torch_files = sorted(str(f.relative_to(root)) for name in missing for f in (root / name).rglob('*')
                         if f.suffix in TORCH_SUFFIXES)
    if torch_files:
        raise CLIError(
            f"{shown or repository}: {', '.join(torch_files)} is a PyTorch file; sdzoo serve runs ONNX with "
            f'onnxruntime (no torch). Export it first, where sdzoo[torch] is installed: sdzoo export MODEL '
            f'--checkpoint {torch_files[0]} --repository {shown or repository}')
    if missing:
        raise CLIError(
            f"{shown or repository} has no exported ONNX for {', '.join(missing)} (a fresh clone holds only their "
            f'config.pbtxt and labels.txt). Export the shipped weights first: sdzoo export --repository '
            f'{shown or repository}  (your own model: sdzoo export RUN_DIR --repository {shown or repository})')


@contextlib.contextmanager
def single_model_repository(path: str) -> Iterator[str]:
    """``path`` itself when it is a repository; for an exported model folder or run directory, a temporary
    one-entry repository (``<architecture>_<tag>``) that links its ``model.onnx``, removed afterwards."""
    from ..cli_args import CLIError
    from ..hub.model_folder import find_model_folder, folder_entry_name
    folder = find_model_folder(path) if Path(path).is_dir() else None
    if folder is None:
        yield path
        return
    onnx_file = folder / 'model.onnx'
    if not onnx_file.is_file():
        raise CLIError(f'{path} has no exported model.onnx yet: run `sdzoo export {path}` first')
    root = Path(tempfile.mkdtemp(prefix='sdzoo-serve-'))
    try:
        entry = folder_entry_name(folder)
        (root / entry / '1').mkdir(parents=True)
        os.symlink(onnx_file.resolve(), root / entry / '1' / 'model.onnx')
        # no config.pbtxt: the server takes inputs, outputs and labels from the ONNX file itself, as Triton's
        # auto-complete does (writing one would need the onnx package, which a serving install leaves out)
        yield str(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
