"""A Hugging Face Hub-compatible HTTP server for weight folders (``sdzoo mirror``): an offline mirror for
deployments without Hub access, and the Hub the download and publishing paths are tested against.

- ``server``: :class:`HubMirror` (repo storage, visibility, limits) and the command line.
- ``endpoints``: the HTTP routes huggingface_hub reads and uploads through.
"""
from .server import HubMirror, add_mirror_arguments, run_mirror

__all__ = ['HubMirror', 'add_mirror_arguments', 'run_mirror']
