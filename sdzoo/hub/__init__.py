"""Pretrained weights: shipped Hub-layout folders, Hugging Face Hub download, sha256 checks."""
from .weights import (
    WeightsError, manifest, resolve_pretrained_file, sha256_file, verify_file, weights_dirs,
)
