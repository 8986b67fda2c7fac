"""Decoding and the standard image transforms for streamed data, deterministic per (seed, epoch, sample).

Train: RandomResizedCrop(resolution, scale, ratio 3/4..4/3) then a horizontal flip with p=0.5 (torchvision's
algorithm, its parameters drawn from a generator seeded by (seed, epoch, sample index), so a worker process, a
resumed run or another rank draws exactly the same crop for a sample). Eval: resize the shorter side to
resolution / 0.875, then the centre resolution x resolution crop. Both resample once: the crop box is mapped to
the source image and PIL resizes that box straight to the output size (bilinear, with antialiasing when
shrinking, as torchvision's PIL path does).

Decoding: JPEG with simplejpeg (libjpeg-turbo) when it is installed (decoder "auto"), else Pillow; PNG, WebP and
the rest with Pillow. Measured on this machine (tools/bench_data.py, docs/data.md): simplejpeg decodes a 112 px
JPEG about 2x faster than Pillow.
"""
from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

from edgekd.data.source import derived_seed
from edgekd.errors import EdgeKDError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
EVAL_CROP_FRACTION = 0.875
Policy = Literal["standard", "shift", "flip", "none"]
DECODERS = ("auto", "pil", "simplejpeg")


def _simplejpeg():
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def decode(data: bytes, name: str, channels: int = 3, decoder: str = "auto", min_side: int = 0):
    """Bytes of an image file -> a PIL image in RGB (channels 3) or L (channels 1).

    min_side > 0 lets a JPEG decode at a reduced DCT scale whose shorter side is still >= min_side (eval only).
    Raises EdgeKDError naming the file when it is not a readable image.
    """
    from PIL import Image

    is_jpeg = data[:3] == b"\xff\xd8\xff"
    try:
        if is_jpeg and decoder != "pil":
            sj = _simplejpeg()
            if sj is None and decoder == "simplejpeg":
                raise EdgeKDError("data.decoder 'simplejpeg' is not installed: pip install 'edgekd[data]'")
            if sj is not None:
                kw = {}
                if min_side:
                    h, w = sj.decode_jpeg_header(data)[:2]
                    if min(h, w) >= 2 * min_side:  # DCT scaling only when it can halve the image
                        scale = min(h, w) / min_side
                        kw = {"min_height": max(1, int(h / scale)), "min_width": max(1, int(w / scale))}
                a = sj.decode_jpeg(data, colorspace="GRAY" if channels == 1 else "RGB", **kw)
                return Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a)
        img = Image.open(io.BytesIO(data))
        if is_jpeg and min_side:
            img.draft("L" if channels == 1 else "RGB", (min_side, min_side))
        return img.convert("L" if channels == 1 else "RGB")
    except EdgeKDError:
        raise
    except Exception as e:  # PIL raises many types for damaged files (OSError, SyntaxError, ValueError, ...)
        raise EdgeKDError(f"cannot decode image {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                          f"; remove or replace the file") from None


def random_resized_crop_box(width: int, height: int, rng: random.Random, scale: Sequence[float] = (0.08, 1.0),
                            ratio: Sequence[float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params as a (left, top, right, bottom) box, drawn from `rng`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return left, top, left + w, top + h
    in_ratio = width / height  # fallback: the whole image cropped to the nearest allowed aspect ratio
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def shifted_box(box: tuple[float, float, float, float], width: int, height: int, size: int, pixels: int,
                rng: random.Random) -> tuple[float, float, float, float]:
    """`box` moved by a whole number of output pixels in -pixels..pixels each way, then clamped into the image."""
    left, top, right, bottom = box
    step = (right - left) / size  # one output pixel in source pixels
    dx = max(-left, min(width - right, rng.randint(-pixels, pixels) * step))
    dy = max(-top, min(height - bottom, rng.randint(-pixels, pixels) * step))
    return left + dx, top + dy, right + dx, bottom + dy


def center_crop_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """The source box that 'resize shorter side to size/0.875, centre crop size x size' shows."""
    resized_short = int(size / EVAL_CROP_FRACTION)
    side = min(width, height) * size / resized_short  # the crop's side in source pixels
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


@dataclass(frozen=True)
class ImageTransform:
    """Decode + crop/resize + flip to a uint8 H,W,C array; `normalize` turns a stacked batch into float32 N,C,H,W.

    policy: "standard" (RandomResizedCrop + flip), "shift" (the eval crop moved by up to `shift_pixels` output
    pixels each way, kept inside the image, no flip), "flip" (eval crop + flip), "none" (eval crop only: the
    un-augmented view, the one cached teacher logits are valid for).
    """

    resolution: int = 224
    channels: int = 3
    policy: Policy = "none"
    scale: tuple[float, float] = (0.08, 1.0)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (255.0,)
    decoder: str = "auto"
    shift_pixels: int = 2

    @property
    def random(self) -> bool:
        return self.policy != "none"

    def describe(self) -> str:
        shift = f":shift={self.shift_pixels}" if self.policy == "shift" else ""
        return (f"{self.policy}@{self.resolution}x{self.channels}:scale={list(self.scale)}:mean={list(self.mean)}"
                f":std={list(self.std)}{shift}")

    def apply(self, data: bytes, name: str, seed: int, epoch: int, index: int) -> np.ndarray:
        """One sample as uint8 H,W,C; random choices drawn from (seed, epoch, index)."""
        from PIL import Image

        size = self.resolution
        img = decode(data, name, self.channels, self.decoder,
                     min_side=0 if self.policy == "standard" else int(size / EVAL_CROP_FRACTION))
        w, h = img.size
        rng = random.Random(derived_seed(seed, epoch, index)) if self.random else None
        if self.policy == "standard":
            box = random_resized_crop_box(w, h, rng, self.scale)
        else:
            box = center_crop_box(w, h, size)
            if self.policy == "shift":
                box = shifted_box(box, w, h, size, self.shift_pixels, rng)
        out = img.resize((size, size), Image.BILINEAR, box=box, reducing_gap=None)
        if self.policy in ("standard", "flip") and rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        a = np.asarray(out, dtype=np.uint8)
        return a[..., None] if a.ndim == 2 else a

    def normalize(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack uint8 H,W,C images into float32 N,C,H,W, (x - mean) / std per channel (pixel scale 0..255)."""
        if len(images) == 0:  # a rank's share of a short last batch can be empty
            return torch.zeros(0, self.channels, self.resolution, self.resolution)
        u8 = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
        out = torch.empty(u8.shape, dtype=torch.float32)
        if torch.utils.data.get_worker_info() is not None:
            # In a worker process: write the batch straight into shared memory, as torch's default_collate does.
            # Handing the queue a private tensor instead makes torch copy it into shared memory, and the workers'
            # memory then grew by a batch every few batches (measured: ~5 MB per batch at 32 x 112 px).
            out.share_memory_()
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        torch.sub(u8, mean, out=out)
        return out.div_(std)


def check_decoder(decoder: str) -> None:
    if decoder not in DECODERS:
        raise EdgeKDError(f"data.decoder: {decoder!r} is not known; use one of {', '.join(DECODERS)}")
    if decoder == "simplejpeg" and _simplejpeg() is None:
        raise EdgeKDError("data.decoder 'simplejpeg' is not installed: pip install 'edgekd[data]' (or decoder: auto)")


__all__ = ["DECODERS", "IMAGE_SUFFIXES", "ImageTransform", "center_crop_box", "check_decoder", "decode",
           "random_resized_crop_box", "shifted_box"]
