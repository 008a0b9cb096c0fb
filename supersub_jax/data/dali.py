"""NVIDIA DALI as the training decoder (``config.input.decoder = 'dali'``): grain indexes, shuffles, shards, draws
each crop and flip, and checkpoints the iteration; DALI decodes, crops, resizes and flips.

Division of labour. grain's per-example ``random_map`` (``pipeline``) reads only the JPEG's header and draws the
Inception-style box and the flip with the example's own rng (the same numbers as the CPU decoder draws, so a seed
gives the same boxes with either decoder), and hands the encoded bytes on. ``DaliDecoder`` feeds a batch of them to a
DALI pipeline through ``external_source``: ``decoders.image_slice`` decodes only the box (nvJPEG's region decode on
the GPU, device 'mixed'; libjpeg-turbo on the CPU), ``resize`` makes it image_size^2 (linear, antialiased, as pillow's
bilinear resize), ``flip`` mirrors the drawn images. ``DaliIterator`` wraps grain's iterator, so ``get_state`` /
``set_state`` are grain's: DALI holds no state of its own (every random number was drawn by grain), and a restored
iterator gives the same batches.

Where it runs. On a machine without a GPU DALI's CPU operators run the same pipeline (``device_id=None``): the
decoder contract test (tests/test_decoders.py) runs here wherever nvidia-dali is installed. The batches come back to
the host as numpy (one device-to-host copy; handing DALI's GPU buffers to jax through DLPack is not done).

Install: ``pip install -e '.[dali-cuda12]'`` (or ``'.[dali-cuda13]'``): nvidia-dali is published on PyPI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def unavailable() -> str | None:
  """None when DALI can be imported, else why not and how to install it."""
  try:
    import nvidia.dali  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    return (f'NVIDIA DALI is not installed ({e}); pip install -e \'.[dali-cuda12]\' (or \'.[dali-cuda13]\'), or use '
            "input.decoder='cpu'.")
  return None


def _has_gpu() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return any(d.platform == 'gpu' for d in jax.devices())


class DaliDecoder:
  """Decodes a batch of JPEG crops with DALI: bytes + boxes + flips -> uint8 [B, image_size, image_size, 3].

  ``device``: 'gpu' (decode with nvJPEG, resize and flip on the GPU: DALI's 'mixed' decoder) or 'cpu' (DALI's CPU
  operators, no GPU needed); None: 'gpu' when jax sees one.
  """

  def __init__(self, batch_size: int, image_size: int, *, device: str | None = None, num_threads: int = 4,
               device_id: int = 0):
    problem = unavailable()
    if problem:
      raise RuntimeError(problem)
    from nvidia.dali import fn, pipeline_def, types  # pylint: disable=g-import-not-at-top
    self.device = device or ('gpu' if _has_gpu() else 'cpu')
    if self.device not in ('gpu', 'cpu'):
      raise ValueError(f"device={device!r}: use 'gpu', 'cpu' or None.")
    self.batch_size, self.image_size = int(batch_size), int(image_size)
    on_gpu = self.device == 'gpu'

    @pipeline_def(batch_size=self.batch_size, num_threads=num_threads, device_id=device_id if on_gpu else None,
                  prefetch_queue_depth=1, exec_dynamic=True)
    def crops():
      jpegs = fn.external_source(name='jpegs', dtype=types.UINT8, ndim=1)
      anchor = fn.external_source(name='anchor', dtype=types.FLOAT, ndim=1)  # (x, y) of the box, source pixels
      shape = fn.external_source(name='shape', dtype=types.FLOAT, ndim=1)    # (width, height)
      flip = fn.external_source(name='flip', dtype=types.INT32, ndim=0)
      images = fn.decoders.image_slice(jpegs, anchor, shape, device='mixed' if on_gpu else 'cpu',
                                       output_type=types.RGB, normalized_anchor=False, normalized_shape=False)
      images = fn.resize(images, resize_x=self.image_size, resize_y=self.image_size,
                         interp_type=types.INTERP_LINEAR, antialias=True)
      return fn.flip(images, horizontal=flip)

    self._pipe = crops()
    self._pipe.build()

  def __call__(self, blobs: Sequence[np.ndarray], boxes: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """blobs: B encoded JPEGs (uint8 [n_i]); boxes: float32 [B, 4] (left, top, right, bottom) in source pixels;
    flips: bool [B]. Returns uint8 [B, image_size, image_size, 3]."""
    if len(blobs) != self.batch_size:
      raise ValueError(f'DaliDecoder was built for batches of {self.batch_size}, got {len(blobs)}.')
    boxes = np.asarray(boxes, np.float32)
    self._pipe.feed_input('jpegs', [np.asarray(b, np.uint8) for b in blobs])
    self._pipe.feed_input('anchor', [np.ascontiguousarray(b[:2]) for b in boxes])
    self._pipe.feed_input('shape', [np.ascontiguousarray(b[2:] - b[:2]) for b in boxes])
    self._pipe.feed_input('flip', [np.asarray(f, np.int32) for f in np.asarray(flips)])
    (out,) = self._pipe.run()
    if self.device == 'gpu':
      out = out.as_cpu()
    return np.asarray(out.as_tensor())


class DaliIterator:
  """grain's iterator of encoded batches (``pipeline``'s dali mode), decoded by DALI: yields ``pipeline``'s batch
  dicts. ``get_state``/``set_state`` are grain's (the boxes and flips were drawn there)."""

  def __init__(self, grain_iterator, decoder: DaliDecoder, finalize):
    self._it, self._decoder, self._finalize = grain_iterator, decoder, finalize

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, Any]:
    batch = dict(next(self._it))
    batch['image'] = self._decoder(batch.pop('jpeg'), batch.pop('box'), batch.pop('flip'))
    return self._finalize.map(batch)

  def get_state(self):
    return self._it.get_state()

  def set_state(self, state) -> None:
    self._it.set_state(state)

  def close(self) -> None:
    close = getattr(self._it, 'close', None)
    if close:
      close()
