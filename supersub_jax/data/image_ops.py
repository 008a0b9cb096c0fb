"""Per-example image ops (uint8 in, uint8 out) and JPEG decoding fused with the view, for the input pipeline.

A JPEG is decoded fused with its view: the crop box is drawn from the JPEG's header first, and the JPEG is decoded
with libjpeg-turbo's DCT-domain scaling (1/2, 1/4, 1/8) when the box still covers the output at that scale, so a
crop of a large JPEG is never decoded at full size (`decode_random_resized_crop`, `decode_center_crop`); the box is
then resized by OpenCV on a view of the decoded pixels (`resize`), uint8 throughout. Where setup.py's C extension is
built (`REGION_DECODING`), only the box is decoded: libjpeg-turbo skips the rows above it without their inverse DCT
(`jpeg_skip_scanlines`), never reads the rows below, and transforms only its columns (`jpeg_crop_scanline`), giving
the pixels a whole decode has there (`decode_jpeg_box`); without it (no libjpeg-turbo headers at install)
simplejpeg decodes the whole JPEG at that scale. simplejpeg exposes DCT scaling only, and PyTurboJPEG 2's cropping
region needs libjpeg-turbo >= 3.0, newer than Debian 12's 2.1.5. Every path that crops (pixels, JPEG bytes) draws
its box with `crop_box`, so one seed gives the same boxes and flips whichever form the image has.
"""

from __future__ import annotations

import io
import math
from typing import Any

import cv2
import numpy as np
import simplejpeg
from PIL import Image

try:  # the C extension setup.py builds where libjpeg-turbo's headers are (libjpeg62-turbo-dev); optional
  from supersub_jax.data import _jpeg_region
except ImportError:
  _jpeg_region = None
# Whether JPEGs are decoded only where the crop is (`decode_jpeg_box`), or whole at the crop's DCT scale.
REGION_DECODING = _jpeg_region is not None

# One image at a time per reading thread: OpenCV's own thread pool only adds hand-offs to a 224x224 resize (the
# pipeline runs in parallel over threads and grain workers instead).
cv2.setNumThreads(1)


# --------------------------------------------------------------------------------------------
# Per-example image ops (numpy / OpenCV, uint8 in, uint8 out)
# --------------------------------------------------------------------------------------------


def resize(image: np.ndarray, size: int, box: tuple[float, float, float, float] | None = None
            ) -> np.ndarray:
  """The image's box = (left, top, right, bottom) (default: all of it), rounded to whole pixels, resized to
  size^2 by OpenCV on a view of the box (no copy of the crop): bilinear, or pixel-area averaging where the box is
  more than twice the output in a dimension (bilinear would alias there; area averaging is 5x slower, and rare once
  the JPEG is DCT-scaled to the box). uint8 [H, W, C] in, uint8 [size, size, C] out."""
  h, w = image.shape[:2]
  left, top, right, bottom = (0, 0, w, h) if box is None else (int(round(v)) for v in box)
  if (left, top, right, bottom) == (0, 0, w, h) and (h, w) == (size, size):
    # As it is, unless a view into a decoder's read-only buffer (`decode_jpeg_box`): outputs are writable arrays.
    return image if image.flags.writeable and image.flags.c_contiguous else np.array(image)
  region = image[top:bottom, left:right]
  area = right - left > 2 * size or bottom - top > 2 * size
  return cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR)


def _flip(image: np.ndarray) -> np.ndarray:
  """Horizontal flip of uint8 [H, W, C] into a new contiguous array."""
  return cv2.flip(image, 1)


def crop_flip(image: np.ndarray, rng: np.random.Generator, image_size: int,
              padding: int = 4) -> np.ndarray:
  """Zero-pads by `padding`, takes a random image_size^2 crop, flips horizontally w.p. 1/2.

  image: uint8 [H, W, 3] (resized to image_size^2 first if needed).  Returns uint8
  [image_size, image_size, 3].
  """
  image = resize(image, image_size)
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  top, left = rng.integers(0, 2 * padding + 1, size=2)
  out = padded[top:top + image_size, left:left + image_size]
  if rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def crop_box(height: int, width: int, rng: np.random.Generator,
             scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
             attempts: int = 10) -> tuple[int, int, int, int]:
  """The Inception-style crop box (left, top, right, bottom) of an image of height x width pixels.

  Area fraction uniform in `scale`, aspect ratio log-uniform in `ratio` (torchvision's RandomResizedCrop); after
  `attempts` boxes that do not fit, the central square of the short side. Uses 2 uniform draws per attempt and 2
  integers for the accepted box, in this order: every path that crops (pixels, JPEG bytes) calls this one.
  """
  area = height * width
  for _ in range(attempts):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    cw = int(round(math.sqrt(target * aspect)))
    ch = int(round(math.sqrt(target / aspect)))
    if 0 < cw <= width and 0 < ch <= height:
      top = int(rng.integers(0, height - ch + 1))
      left = int(rng.integers(0, width - cw + 1))
      return (left, top, left + cw, top + ch)
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  return (left, top, left + side, top + side)


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, image_size: int,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        attempts: int = 10) -> np.ndarray:
  """Inception-style crop (`crop_box`) resized to image_size^2, flipped horizontally w.p. 1/2.

  image: uint8 [H, W, 3].  Returns uint8 [image_size, image_size, 3].
  """
  h, w = image.shape[:2]
  box = crop_box(h, w, rng, scale, ratio, attempts)
  out = resize(image, image_size, box)
  return _flip(out) if rng.random() < 0.5 else out


# --------------------------------------------------------------------------------------------
# Encoded images: decoding fused with the view
# --------------------------------------------------------------------------------------------

_DCT_FACTORS = (8, 4, 2)  # libjpeg-turbo's SIMD-scaled IDCTs; other factors (e.g. 7/8) are slower than none


def dct_factor(box_width: float, box_height: float, image_size: int) -> int:
  """The largest JPEG downscale factor (8, 4, 2, else 1) at which a box of box_width x box_height source pixels
  still spans at least image_size^2 decoded pixels, so the resize to image_size never upsamples what a full decode
  would have resolved."""
  for factor in _DCT_FACTORS:
    if box_width >= image_size * factor and box_height >= image_size * factor:
      return factor
  return 1


def is_jpeg(blob) -> bool:
  return simplejpeg.is_jpeg(blob)


def decode_image(blob) -> np.ndarray:
  """Any encoded image (JPEG, PNG, ...) -> uint8 [H, W, 3] RGB pixels, whole."""
  if is_jpeg(blob):
    try:
      return simplejpeg.decode_jpeg(blob, colorspace='RGB')
    except ValueError:  # CMYK and other JPEGs libjpeg-turbo cannot turn into RGB: pillow can
      pass
  with Image.open(io.BytesIO(blob)) as image:
    return np.asarray(image.convert('RGB'))


def decode_jpeg_box(blob, box: tuple[float, float, float, float], factor: int, height: int, width: int
                    ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
  """The pixels of a JPEG of height x width that a resize of `box` (source pixels) reads, decoded at scale
  1/factor, and the box in those pixels' coordinates: `resize(pixels, size, box)` is the view. With the region
  decoder (`REGION_DECODING`) only the box's pixels are decoded (rows above it skipped without their inverse DCT,
  rows below never read, columns outside it not transformed), the same pixels as a whole decode has there; else the
  whole JPEG at that scale (simplejpeg). Raises ValueError for JPEGs libjpeg-turbo cannot turn into RGB (CMYK)."""
  out_h, out_w = -(-height // factor), -(-width // factor)  # libjpeg's output size at scale 1/factor
  sx, sy = out_w / width, out_h / height
  scaled = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
  if _jpeg_region is None:
    if factor == 1:
      return simplejpeg.decode_jpeg(blob, colorspace='RGB'), scaled
    # min_factor alone does not scale: simplejpeg picks the coarsest scale that keeps the output at least
    # min_height x min_width, and at least min_factor.
    pixels = simplejpeg.decode_jpeg(blob, colorspace='RGB', min_height=out_h, min_width=out_w, min_factor=factor)
    return pixels, scaled
  # The whole pixels `resize` reads (it rounds the box), one more column each side: libjpeg-turbo upsamples the
  # chroma of a cropped span's edge columns as an image edge, so they alone would differ from a whole decode.
  left, top, right, bottom = (int(round(v)) for v in scaled)
  left, top = min(max(left, 0), out_w - 1), min(max(top, 0), out_h - 1)
  right, bottom = min(max(right, left + 1), out_w), min(max(bottom, top + 1), out_h)
  data, rows, span, x_offset = _jpeg_region.decode_region(blob, max(left - 1, 0), top, min(right + 1, out_w), bottom,
                                                          factor)
  pixels = np.frombuffer(data, np.uint8).reshape(rows, span, 3)[:, left - x_offset:right - x_offset]
  return pixels, (0, 0, right - left, bottom - top)


def _decode_view(blob, box_of: Any, image_size: int, flip: Any = None) -> np.ndarray:
  """Decodes `blob` and resizes the box `box_of(height, width)` (source pixels) to image_size^2, decoding a JPEG at
  the coarsest DCT scale that keeps the box at least image_size wide and high, only the box where the region decoder
  is built (`decode_jpeg_box`). `flip()` (after the box is drawn) says whether to flip horizontally. Returns uint8
  [image_size, image_size, 3]."""
  pixels = None
  if is_jpeg(blob):
    height, width, _, _ = simplejpeg.decode_jpeg_header(blob)
    box = box_of(height, width)
    try:
      pixels, box = decode_jpeg_box(blob, box, dct_factor(box[2] - box[0], box[3] - box[1], image_size), height,
                                    width)
    except ValueError:  # CMYK and the like: whole, through pillow (`decode_image`)
      pass
  if pixels is None:
    pixels = decode_image(blob)
    if not is_jpeg(blob):
      box = box_of(*pixels.shape[:2])
  out = resize(pixels, image_size, box)
  return _flip(out) if flip is not None and flip() else out


def decode_random_resized_crop(blob, rng: np.random.Generator, image_size: int,
                               scale: tuple[float, float] = (0.08, 1.0),
                               ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10) -> np.ndarray:
  """`random_resized_crop` of an encoded image, decoding only what the crop needs: the box is drawn from the
  JPEG's header (same random numbers as the pixel path) and the JPEG decoded at the coarsest DCT scale that keeps
  the box at least image_size^2 (`dct_factor`). Returns uint8 [image_size, image_size, 3]."""
  return _decode_view(blob, lambda h, w: crop_box(h, w, rng, scale, ratio, attempts), image_size,
                      flip=lambda: rng.random() < 0.5)


def _center_box(height: int, width: int, crop_fraction: float) -> tuple[float, float, float, float]:
  side = min(height, width) * crop_fraction
  top, left = (height - side) / 2, (width - side) / 2
  return (left, top, left + side, top + side)


def decode_center_crop(blob, image_size: int, crop_fraction: float = 0.875) -> np.ndarray:
  """`center_crop` of an encoded image, DCT-scaled like `decode_random_resized_crop`."""
  def box_of(h, w):
    return None if (h, w) == (image_size, image_size) else _center_box(h, w, crop_fraction)

  if not is_jpeg(blob):
    return center_crop(decode_image(blob), image_size, crop_fraction)
  return _decode_view(blob, lambda h, w: box_of(h, w) or (0, 0, w, h), image_size)


def center_crop(image: np.ndarray, image_size: int, crop_fraction: float = 0.875) -> np.ndarray:
  """Eval view: the central square covering `crop_fraction` of the short side, resized.

  An image already image_size^2 is returned unchanged (CIFAR-style 32x32 eval).
  image: uint8 [H, W, 3].  Returns uint8 [image_size, image_size, 3].
  """
  h, w = image.shape[:2]
  if (h, w) == (image_size, image_size):
    return image
  return resize(image, image_size, _center_box(h, w, crop_fraction))
