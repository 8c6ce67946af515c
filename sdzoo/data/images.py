"""Image files without torch: the one list of extensions sdzoo reads, the one geometry that turns an image of any
size into the model's input (timm's eval transform), and decoding a list of files into one uint8 array. Training
on a folder, validation, INT8 calibration, ``sdzoo predict`` and ``sdzoo serve`` all go through
:func:`resize_center_crop`, so a folder of photos meets the model the same way in training as when it is served."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Tuple

import numpy as np

__all__ = ['IMG_EXTENSIONS', 'ImageGeometry', 'is_image_file', 'decode_images', 'resize_center_crop',
           'resample_filter', 'orientation', 'upright']

EXIF_ORIENTATION = 0x0112
# part of every decoded-folder cache key: raise it whenever decoding gives other pixels for the same file, or a
# folder decoded by an older sdzoo is served from its cache (2: EXIF orientation applied)
DECODER_VERSION = 2

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


@dataclass(frozen=True)
class ImageGeometry:
    """How an image of another size becomes ``size``: the model's ``crop_pct`` / ``crop_mode`` / ``interpolation``
    (timm's data config). The default, ``crop_pct`` 1.0 center, is the CIFAR models' own: the shorter edge is
    scaled to the input size and the middle kept, so a square image is only resized and a photo is not squashed."""
    crop_pct: float = 1.0
    crop_mode: str = 'center'
    interpolation: str = 'bilinear'

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], prefix: str = '') -> 'ImageGeometry':
        """From a timm data config, or from ONNX metadata with ``prefix='sdzoo.'`` (missing keys: timm's defaults)."""
        return cls(crop_pct=float(cfg.get(prefix + 'crop_pct') or 0.875),
                   crop_mode=str(cfg.get(prefix + 'crop_mode') or 'center'),
                   interpolation=str(cfg.get(prefix + 'interpolation') or 'bilinear'))

    def crop(self, image, size: Tuple[int, int]):
        """``image`` brought to ``size`` (H, W) with this geometry (:func:`resize_center_crop`)."""
        return resize_center_crop(image, size, self.crop_pct, self.crop_mode, self.interpolation)


def orientation(image) -> int:
    """The EXIF orientation tag from the header, 2-8 for a picture to be turned; 1 (upright) when absent, unreadable
    or out of range. No pixel is decoded."""
    try:
        tag = int(image.getexif().get(EXIF_ORIENTATION) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is no reason to refuse the pixels
        return 1
    return tag if 2 <= tag <= 8 else 1


def upright(image):
    """``image`` as a viewer shows it: a camera stores a portrait photo sideways with an EXIF orientation tag that
    browsers and photo viewers apply; training and serving apply it too, so the network sees the scene upright.
    Images without the tag are returned as they are, without a copy (a turned one is a copy: one more image's
    memory while it is made)."""
    if orientation(image) != 1:
        from PIL import ImageOps
        return ImageOps.exif_transpose(image)
    return image


def resample_filter(name: str):
    """PIL's resampling filter for a timm interpolation name."""
    from PIL import Image
    modes = {'bilinear': Image.Resampling.BILINEAR, 'bicubic': Image.Resampling.BICUBIC,
             'nearest': Image.Resampling.NEAREST, 'lanczos': Image.Resampling.LANCZOS,
             'box': Image.Resampling.BOX, 'hamming': Image.Resampling.HAMMING}
    if name not in modes:
        raise ValueError(f'unknown interpolation {name!r}; expected one of {sorted(modes)}')
    return modes[name]


def resize_center_crop(image, size: Tuple[int, int], crop_pct: float = 0.875, crop_mode: str = 'center',
                       interpolation: str = 'bilinear'):
    """timm's eval geometry (``transforms_imagenet_eval``) on a PIL image, without torch.

    ``center``: resize the shorter edge to ``floor(size / crop_pct)`` keeping the aspect ratio, then
    center-crop ``size``; ``squash``: resize both edges to ``floor(size / crop_pct)``, center-crop.
    """
    th, tw = size
    scale = (math.floor(th / crop_pct), math.floor(tw / crop_pct))
    w, h = image.size
    if crop_mode == 'squash':
        new_h, new_w = scale
    elif crop_mode in ('center', None, ''):
        if scale[0] == scale[1]:  # torchvision's Resize(int): shorter edge, long edge truncated
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = scale[0], int(scale[0] * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        else:  # timm's ResizeKeepRatio(longest=0)
            ratio = min(h / scale[0], w / scale[1])
            new_h, new_w = round(h / ratio), round(w / ratio)
    else:
        raise ValueError(f'unsupported crop_mode {crop_mode!r} (sdzoo runtime knows center and squash)')
    if (new_h, new_w) != (h, w):
        image = image.resize((new_w, new_h), resample_filter(interpolation))
    # torchvision CenterCrop: pad with zeros when the crop is larger, then crop the middle
    if th > new_h or tw > new_w:
        from PIL import Image
        padded = Image.new(image.mode, (max(tw, new_w), max(th, new_h)))
        padded.paste(image, ((max(tw, new_w) - new_w) // 2, (max(th, new_h) - new_h) // 2))
        image, (new_w, new_h) = padded, padded.size
    top, left = int(round((new_h - th) / 2.0)), int(round((new_w - tw) / 2.0))
    return image.crop((left, top, left + tw, top + th))


def decode_images(files: List[str], size: Optional[Tuple[int, int]], mode: str, desc: str = '',
                  geometry: Optional[ImageGeometry] = None) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` (C = 1 for ``mode='L'``, else 3); ``size`` (H, W) defaults to the first image's.

    Every image goes through :func:`resize_center_crop` with ``geometry`` (the model's; default
    :class:`ImageGeometry`, which leaves an image of size ``size`` as it is), as ``sdzoo predict`` and ``sdzoo serve``
    preprocess them; an unreadable file raises ``ValueError`` naming it."""
    from PIL import Image
    from tqdm import tqdm
    if size is None:
        try:
            with Image.open(files[0]) as first:
                first = upright(first)
                size = (first.height, first.width)
        except Exception as e:
            raise ValueError(f'cannot read image {files[0]}: {e}') from e
    h, w = size
    g = geometry or ImageGeometry()
    c = 1 if mode == 'L' else 3
    out = np.empty((len(files), h, w, c), dtype=np.uint8)
    for i, f in enumerate(tqdm(files, desc=desc, unit='img', leave=False, mininterval=2,
                               disable=len(files) < 2000)):
        try:
            with Image.open(f) as img:
                img = upright(img).convert(mode)
                # also at the input size: a crop_pct below 1 enlarges and crops it when served, so here too
                img = g.crop(img, (h, w))
                arr = np.asarray(img)
        except Exception as e:
            raise ValueError(f'cannot read image {f}: {e}') from e
        out[i] = arr.reshape(h, w, c)
    return out
