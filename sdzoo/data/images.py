"""Image files without torch: the one list of extensions sdzoo reads, and decoding a list of files into one
uint8 array (the data loader's caches, INT8 calibration and validation all decode the same way)."""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

__all__ = ['IMG_EXTENSIONS', 'is_image_file', 'decode_images']

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def decode_images(files: List[str], size: Optional[Tuple[int, int]], mode: str, desc: str = '') -> np.ndarray:
    """uint8 ``[N, H, W, C]`` (C = 1 for ``mode='L'``, else 3); ``size`` (H, W) defaults to the first image's.

    Images of another size are resized bilinearly; an unreadable file raises ``ValueError`` naming it."""
    from PIL import Image
    from tqdm import tqdm
    if size is None:
        try:
            with Image.open(files[0]) as first:
                size = (first.height, first.width)
        except Exception as e:
            raise ValueError(f'cannot read image {files[0]}: {e}') from e
    h, w = size
    c = 1 if mode == 'L' else 3
    out = np.empty((len(files), h, w, c), dtype=np.uint8)
    for i, f in enumerate(tqdm(files, desc=desc, unit='img', leave=False, mininterval=2,
                               disable=len(files) < 2000)):
        try:
            with Image.open(f) as img:
                img = img.convert(mode)
                if img.size != (w, h):
                    img = img.resize((w, h), Image.BILINEAR)
                arr = np.asarray(img)
        except Exception as e:
            raise ValueError(f'cannot read image {f}: {e}') from e
        out[i] = arr.reshape(h, w, c)
    return out
