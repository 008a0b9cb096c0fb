"""Tests of supersub_jax.data.image_ops: the crops, flips and resizes of one image, the crop distribution pinned
against its definition, and the JPEG path pinned to the pixel path."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supersub_jax.data import image_ops


def test_random_resized_crop_and_center_crop_shapes():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
  out = image_ops.random_resized_crop(image, np.random.default_rng(1), 24)
  assert out.shape == (24, 24, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, image_ops.random_resized_crop(image, np.random.default_rng(1), 24))
  assert image_ops.center_crop(image, 24).shape == (24, 24, 3)
  small = image[:24, :24]
  assert image_ops.center_crop(small, 24) is small


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), h=st.integers(4, 12), w=st.integers(4, 12))
def test_crop_flip_is_a_window_of_the_padded_image(seed, h, w):
  rng = np.random.default_rng(seed)
  image = rng.integers(1, 256, (h, w, 3), dtype=np.uint8)
  size = min(h, w)
  image = image[:size, :size]
  out = image_ops.crop_flip(image, np.random.default_rng(seed), size, padding=2)
  padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
  windows = [padded[t:t + size, l:l + size] for t in range(5) for l in range(5)]
  assert any(np.array_equal(out, win) or np.array_equal(out, win[:, ::-1]) for win in windows)


def _reference_boxes(height, width, draws, rng):
  """Inception-style RandomResizedCrop boxes (torchvision's definition), vectorised in numpy: per draw, up to 10
  attempts of an area fraction ~ U(0.08, 1) and a log aspect ratio ~ U(log 3/4, log 4/3); the first that fits
  gives the box (uniform position), else the central square. Returns float [draws, 4] (w, h, left, top)."""
  area = rng.uniform(0.08, 1.0, (draws, 10)) * height * width
  aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), (draws, 10)))
  cw, ch = np.rint(np.sqrt(area * aspect)), np.rint(np.sqrt(area / aspect))
  fits = (cw > 0) & (cw <= width) & (ch > 0) & (ch <= height)
  first = np.argmax(fits, axis=1)
  ok = fits[np.arange(draws), first]
  side = min(height, width)
  w = np.where(ok, cw[np.arange(draws), first], side)
  h = np.where(ok, ch[np.arange(draws), first], side)
  left = np.where(ok, np.floor(rng.uniform(size=draws) * (width - w + 1)), (width - side) // 2)
  top = np.where(ok, np.floor(rng.uniform(size=draws) * (height - h + 1)), (height - side) // 2)
  return np.stack([w, h, left, top], axis=1)


def _ks_distance(a, b):
  """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs of a and b."""
  grid = np.sort(np.concatenate([a, b]))
  return np.max(np.abs(np.searchsorted(np.sort(a), grid, 'right') / a.size
                       - np.searchsorted(np.sort(b), grid, 'right') / b.size))


@pytest.mark.parametrize('height,width', [(375, 500), (300, 120)])
def test_crop_box_distribution_is_inception_random_resized_crop(height, width):
  draws = 20_000
  rng = np.random.default_rng(1)
  ours = np.asarray([image_ops.crop_box(height, width, rng) for _ in range(draws)], np.float64)
  ours = np.stack([ours[:, 2] - ours[:, 0], ours[:, 3] - ours[:, 1], ours[:, 0], ours[:, 1]], axis=1)
  ref = _reference_boxes(height, width, draws, np.random.default_rng(2))
  # 1.95 * sqrt(2 / n) is the KS critical value at the 0.1% level for two samples of n: a drift of the
  # definition (scale, ratio, position, fallback) moves these well past it.
  critical = 1.95 * np.sqrt(2 / draws)
  features = {
      'scale': lambda b: b[:, 0] * b[:, 1] / (height * width),
      'log aspect ratio': lambda b: np.log(b[:, 0] / b[:, 1]),
      'relative left': lambda b: np.where(b[:, 0] < width, b[:, 2] / np.maximum(width - b[:, 0], 1), 0.5),
      'relative top': lambda b: np.where(b[:, 1] < height, b[:, 3] / np.maximum(height - b[:, 1], 1), 0.5),
  }
  for name, feature in features.items():
    distance = _ks_distance(feature(ours), feature(ref))
    assert distance < critical, f'{name}: KS distance {distance:.4f} >= {critical:.4f}'
  # The definition itself: every box inside the image, areas and ratios inside their ranges (up to rounding).
  assert (ours[:, 0] + ours[:, 2] <= width).all() and (ours[:, 1] + ours[:, 3] <= height).all()
  scale = ours[:, 0] * ours[:, 1] / (height * width)
  assert scale.min() > 0.07 and scale.max() <= 1.0


def _jpeg(height, width, seed=0, quality=95):
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  coarse = Image.fromarray(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8))
  buffer = io.BytesIO()
  coarse.resize((width, height), Image.BICUBIC).save(buffer, format='jpeg', quality=quality)
  return buffer.getvalue()


@pytest.mark.parametrize('seed', range(4))
def test_jpeg_crop_equals_the_pixel_crop_of_the_decoded_image_when_not_dct_scaled(seed):
  # 60x80 JPEG to 32: no box spans 2 x 32 source pixels both ways, so the JPEG is decoded whole, and the fused path
  # must be the pixel path exactly (same box, same flip, same resize).
  blob = _jpeg(60, 80, seed)
  pixels = image_ops.decode_image(blob)
  fused = image_ops.decode_random_resized_crop(blob, np.random.default_rng(seed), 32)
  np.testing.assert_array_equal(fused, image_ops.random_resized_crop(pixels, np.random.default_rng(seed), 32))
  np.testing.assert_array_equal(image_ops.decode_center_crop(blob, 32), image_ops.center_crop(pixels, 32))


def test_dct_scaled_jpeg_crop_stays_close_to_the_full_decode():
  # 512x768 to 64: most boxes allow a 1/2 to 1/8 DCT scale, and the JPEG must really be decoded at it (simplejpeg's
  # min_factor alone never scaled). The view must stay what a full decode gives of the same box (the box as rounded
  # to whole pixels at the coarser scale), up to the scaled IDCT's smoothing, with the same brightness.
  blob = _jpeg(512, 768, 3)
  pixels = image_ops.decode_image(blob)
  factors = []
  for seed in range(8):
    box = image_ops.crop_box(512, 768, np.random.default_rng(seed))
    factor = image_ops.dct_factor(box[2] - box[0], box[3] - box[1], 64)
    factors.append(factor)
    decoded, scaled_box = image_ops.decode_jpeg_box(blob, box, factor, 512, 768)
    rounded = [int(round(v / factor)) for v in box]
    assert decoded.size * factor ** 2 <= pixels.size  # decoded at 1/factor (and only the box, with the region decoder)
    fused = image_ops.resize(decoded, 64, scaled_box).astype(np.float64)
    full = image_ops.resize(pixels, 64, [v * factor for v in rounded]).astype(np.float64)
    assert np.abs(fused - full).mean() < 4.0, (seed, factor, np.abs(fused - full).mean())
    assert abs(fused.mean() - full.mean()) < 0.5, (seed, factor)
  assert max(factors) >= 4 and min(factors) <= 2  # scaled decodes exercised


def test_jpeg_box_decoded_alone_has_the_whole_decodes_pixels(monkeypatch):
  # The region decoder (C extension, where built) and the whole decode (simplejpeg) give the same pixels of a box,
  # unscaled and at 1/2 (libjpeg-turbo's scaled IDCT), and the same box in those pixels' coordinates.
  import simplejpeg  # pylint: disable=g-import-not-at-top
  if not image_ops.REGION_DECODING:
    pytest.skip('the region decoder (supersub_jax.data._jpeg_region) is not built here: pip install -e . with '
                'libjpeg-turbo headers (libjpeg62-turbo-dev)')
  blob = _jpeg(120, 184, 5, quality=90)
  whole = simplejpeg.decode_jpeg(blob, colorspace='RGB')
  for seed in range(12):
    box = image_ops.crop_box(120, 184, np.random.default_rng(seed))
    for factor in (1, 2):
      region, region_box = image_ops.decode_jpeg_box(blob, box, factor, 120, 184)
      with monkeypatch.context() as m:
        m.setattr(image_ops, '_jpeg_region', None)
        full, full_box = image_ops.decode_jpeg_box(blob, box, factor, 120, 184)
      left, top, right, bottom = (int(round(v)) for v in full_box)
      np.testing.assert_array_equal(region, full[top:bottom, left:right])
      assert region_box == (0, 0, right - left, bottom - top)
      if factor == 1:
        np.testing.assert_array_equal(full, whole)
      else:
        assert full.shape == (60, 92, 3)


def test_dct_factor_is_the_coarsest_scale_that_keeps_the_box_at_the_output_size():
  for w, h in [(100, 100), (447, 1000), (448, 448), (1000, 900), (1792, 1792), (5000, 300)]:
    f = image_ops.dct_factor(w, h, 224)
    assert f in (1, 2, 4, 8)
    assert f == 1 or (w / f >= 224 and h / f >= 224)  # never fewer decoded pixels than the output has
    assert f == 8 or not (w >= 224 * 2 * f and h >= 224 * 2 * f)  # no coarser scale would do


def test_resize_of_a_box_tracks_pillows_bilinear_and_keeps_its_mean():
  # Pillow's bilinear filter (what the pipeline used before OpenCV) as the independent reference, on a textured
  # photo-like image: upsampled boxes match it to rounding, downsampled ones (OpenCV's bilinear keeps more of the
  # finest texture below 2x, area-averages above) stay close pixel by pixel, and no box shifts the brightness.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from supersub_jax.data import fake_imagenet  # pylint: disable=g-import-not-at-top
  image = image_ops.decode_image(fake_imagenet._texture_jpeg(np.random.default_rng(0), 120, 160))
  ratios = []
  for seed in range(64):
    box = image_ops.crop_box(120, 160, np.random.default_rng(seed))
    ours = image_ops.resize(image, 48, box).astype(np.float64)
    ref = np.asarray(Image.fromarray(image).resize((48, 48), Image.Resampling.BILINEAR, box=box), np.float64)
    ratio = max(box[2] - box[0], box[3] - box[1]) / 48
    ratios.append(ratio)
    assert ours.shape == (48, 48, 3)
    assert abs(ours.mean() - ref.mean()) < 0.5, (box, ours.mean(), ref.mean())
    assert np.abs(ours - ref).mean() < (1.0 if ratio <= 1 else 6.0), (box, np.abs(ours - ref).mean())
  assert min(ratios) < 1 < 2 < max(ratios)  # upsampled, bilinear and area-averaged boxes all exercised


def test_flip_mirrors_columns_into_a_contiguous_array():
  image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  flipped = image_ops._flip(image)
  np.testing.assert_array_equal(flipped, image[:, ::-1])
  assert flipped.flags['C_CONTIGUOUS']


def test_a_box_of_exactly_the_output_size_comes_back_writable_and_contiguous():
  # 60x80 JPEG, a 32x32 box at (8, 4): with the region decoder the decoded box is the output itself.
  blob = _jpeg(60, 80, 1)
  pixels, box = image_ops.decode_jpeg_box(blob, (8, 4, 40, 36), 1, 60, 80)
  out = image_ops.resize(pixels, 32, box)
  assert out.shape == (32, 32, 3) and out.flags.writeable and out.flags['C_CONTIGUOUS']
  np.testing.assert_array_equal(out, image_ops.decode_image(blob)[4:36, 8:40])
