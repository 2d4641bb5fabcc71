"""Augmentations: distributions over thousands of draws, exactness against tf.image, shapes and ranges."""

import math

import numpy as np
import pytest
import tensorflow as tf

import data_util


def test_crop_windows_area_and_aspect_distribution():
  n, side = 20000, 256
  oy, ox, h, w = [t.numpy() for t in data_util.sample_crop_windows(side, side, n)]
  assert (oy >= 0).all() and (ox >= 0).all() and (oy + h <= side).all() and (ox + w <= side).all()
  area = h * w / side ** 2
  ratio = w / h
  assert area.min() >= 0.08 * 0.97 and area.max() <= 1.0  # (rounding to whole pixels)
  assert ratio.min() >= 0.75 * 0.98 and ratio.max() <= 4 / 3 * 1.02
  # Accepted draws are uniform in area on [0.08, 0.75] (every aspect ratio fits there); above 0.75 the
  # density falls as -2 log(a) / log(16/9) (the fraction of aspect ratios that still fit).
  tail = lambda a: -2 * math.log(a) / math.log(16 / 9)
  tail_mass = sum(tail(0.75 + (i + 0.5) * 0.25 / 1000) for i in range(1000)) * 0.25 / 1000
  expected_tail = tail_mass / (0.75 - 0.08 + tail_mass)
  assert abs(np.mean(area > 0.75) - expected_tail) < 0.01
  counts, _ = np.histogram(area[area <= 0.75], bins=8, range=(0.08, 0.75))
  assert counts.min() > 0.9 * counts.mean() and counts.max() < 1.1 * counts.mean()
  # Aspect ratio log-uniform: the log-ratio of small crops is uniform on [log 3/4, log 4/3].
  log_ratio = np.log(ratio[area < 0.5])
  counts, _ = np.histogram(log_ratio, bins=6, range=(math.log(3 / 4), math.log(4 / 3)))
  assert counts.min() > 0.85 * counts.mean() and counts.max() < 1.15 * counts.mean()


def test_crop_falls_back_to_a_centre_crop():
  # No window of >= 8% area with aspect in [3/4, 4/3] fits in a 10 x 300 strip.
  oy, ox, h, w = [t.numpy() for t in data_util.sample_crop_windows(10, 300, 5)]
  np.testing.assert_array_equal(h, 10)
  np.testing.assert_array_equal(w, 13)
  np.testing.assert_array_equal(ox, (300 - 13) // 2)
  np.testing.assert_array_equal(oy, 0)


def test_crop_and_resize_is_tf_image_resize_of_the_crop():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(3, 40, 50, 3)).astype(np.uint8)
  windows = [tf.constant(v) for v in ([0, 5, 10], [3, 0, 20], [40, 20, 11], [30, 50, 25])]
  got = data_util.crop_and_resize(tf.constant(images), *windows, 24, 24).numpy()
  for i in range(3):
    oy, ox, h, w = (int(t[i]) for t in windows)
    crop = tf.image.convert_image_dtype(images[i, oy:oy + h, ox:ox + w], tf.float32)
    want = tf.clip_by_value(tf.image.resize(crop, [24, 24], method='bicubic'), 0, 1).numpy()
    np.testing.assert_allclose(got[i], want, atol=1e-6)


def _constant_images(n, size=8, seed=0):
  rng = np.random.default_rng(seed)
  colours = rng.uniform(0.1, 0.9, size=(n, 1, 1, 3)).astype(np.float32)
  return tf.constant(np.broadcast_to(colours, (n, size, size, 3)).copy())


def test_color_jitter_probability_and_range():
  images = _constant_images(4000)
  jittered = data_util.random_color_distortion(images, 1.0, jitter_p=0.8, gray_p=0.0).numpy()
  changed = np.abs(jittered - images.numpy()).max(axis=(1, 2, 3)) > 1e-6
  assert abs(changed.mean() - 0.8) < 0.025
  assert jittered.min() >= 0.0 and jittered.max() <= 1.0
  assert jittered.shape == (4000, 8, 8, 3)


def test_color_jitter_applies_each_op_once_in_random_order():
  # The closed-form saturation and hue equal tf.image's HSV kernels (the authors' ops) on each image,
  # including gray pixels, black, saturation clipping and hue wrap-around.
  images = tf.concat([tf.random.uniform([6, 5, 5, 3]), tf.zeros([1, 5, 5, 3]), tf.fill([1, 5, 5, 3], 0.5)], 0)
  factors = [0.0, 0.2, 0.5, 1.0, 1.5, 1.8, 3.0, 1.3]
  deltas = [-0.5, -0.2, -0.1, 0.0, 0.05, 0.1, 0.2, 0.5]
  planes = lambda image: tf.transpose(image, [2, 0, 1])
  for i in range(8):
    sat = tf.transpose(data_util.adjust_saturation(planes(images[i]), factors[i]), [1, 2, 0])
    hue = tf.transpose(data_util.adjust_hue(planes(images[i]), deltas[i]), [1, 2, 0])
    np.testing.assert_allclose(sat, tf.image.adjust_saturation(images[i], factors[i]), atol=2e-6)
    np.testing.assert_allclose(hue, tf.image.adjust_hue(images[i], deltas[i]), atol=2e-6)
  # Orders are per image: with two ops that do not commute under clipping (brightness x1.8 then contrast,
  # or contrast then brightness), a batch of identical images yields more than two distinct results.
  same = tf.constant(np.tile(np.linspace(0.1, 0.9, 25, dtype=np.float32).reshape(1, 5, 5, 1), (200, 1, 1, 3)))
  out = data_util.random_color_distortion(same, 1.0, jitter_p=1.0, gray_p=0.0).numpy()
  assert len({np.round(o, 4).tobytes() for o in out}) > 150


def _reference_distortion(image, op_ids, factors, gray):
  """The authors' per-image colour distortion with given parameters, from tf.image's ops."""
  ops = [lambda x: x * factors[0], lambda x: tf.image.adjust_contrast(x, factors[1]),
         lambda x: tf.image.adjust_saturation(x, factors[2]), lambda x: tf.image.adjust_hue(x, factors[3])]
  for op_id in op_ids:
    if op_id < 4:
      image = tf.clip_by_value(ops[op_id](image), 0.0, 1.0)
  return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3]) if gray else image


@pytest.mark.parametrize('jit_compile', [True, False])
def test_color_distortion_equals_tf_image_ops_in_each_images_order(jit_compile):
  rng = np.random.default_rng(3)
  n = 12
  images = tf.constant(rng.uniform(size=(n, 9, 7, 3)).astype(np.float32))
  op_ids = np.stack([rng.permutation(4) for _ in range(n)]).astype(np.int32)
  op_ids[:3] = data_util.NO_OP  # not jittered
  factors = np.stack([rng.uniform(0.2, 1.8, n), rng.uniform(0.2, 1.8, n), rng.uniform(0.2, 1.8, n),
                      rng.uniform(-0.2, 0.2, n)], axis=1).astype(np.float32)
  gray = rng.uniform(size=n) < 0.3
  distort = data_util._distort_xla if jit_compile else data_util._distort
  out = distort(images, tf.constant(op_ids), tf.constant(factors), tf.constant(gray), 1).numpy()
  for i in range(n):
    np.testing.assert_allclose(out[i], _reference_distortion(images[i], op_ids[i], factors[i], gray[i]),
                               atol=1e-5)
  # Two views per image come out stacked on channels, each distorted with its own parameters.
  stacked = distort(images, tf.constant(op_ids), tf.constant(factors), tf.constant(gray), 2).numpy()
  np.testing.assert_allclose(stacked, data_util.stack_views(out, 2), atol=1e-6)


def test_grayscale_probability():
  images = _constant_images(4000)
  out = data_util.random_color_distortion(images, jitter_p=0.0, gray_p=0.2).numpy()
  gray = np.all(np.abs(out[..., 0] - out[..., 1]) < 1e-6, axis=(1, 2)) & np.all(
      np.abs(out[..., 1] - out[..., 2]) < 1e-6, axis=(1, 2))
  assert abs(gray.mean() - 0.2) < 0.02
  luma = images.numpy() @ np.array([0.2989, 0.5870, 0.1140], np.float32)
  np.testing.assert_allclose(out[gray][..., 0], luma[gray], atol=1e-3)


def test_colour_distortion_rates_together():
  out = data_util.random_color_distortion(_constant_images(3000, seed=1), strength=0.5).numpy()
  gray = np.all(np.ptp(out, axis=-1) < 1e-6, axis=(1, 2))
  assert abs(gray.mean() - 0.2) < 0.025


def test_blur_probability_sigma_and_kernel():
  n, size = 2000, 40  # kernel = 10% of 40 px = 4 -> 5 taps
  impulse = np.zeros((n, size, size, 3), np.float32)
  impulse[:, 20, 20, :] = 1.0
  out = data_util.random_blur(tf.constant(impulse)).numpy()
  # A blur is visible when the impulse leaks into its neighbour: exp(-1 / (2 sigma^2)) > 1e-7, i.e. for
  # sigma > 0.176, which is 96% of the sigma range [0.1, 2].
  blurred = out[:, 20, 21, 0] > 1e-7
  visible = (2.0 - math.sqrt(1 / (2 * math.log(1e7)))) / 1.9
  assert abs(blurred.mean() - 0.5 * visible) < 0.035
  # The blurred impulse is the (normalised, 5-tap) Gaussian kernel: its variance recovers sigma in range.
  rows = out[blurred][:, 20, 18:23, 0]
  rows /= rows.sum(1, keepdims=True)
  variance = (rows * (np.arange(-2, 3) ** 2)).sum(1)
  assert variance.max() < 2.0 ** 2 and variance.min() >= 0  # truncation at 2 taps caps variance
  np.testing.assert_allclose(out[~blurred], impulse[~blurred], atol=1e-6)
  widest = out[blurred][np.argmax(variance), :, :, 0]  # a small sigma's corners underflow float32 to 0
  assert np.count_nonzero(widest) == 25  # separable 5x5 support


def test_gaussian_blur_matches_numpy_per_image_sigma():
  rng = np.random.default_rng(3)
  images = rng.uniform(size=(2, 9, 9, 3)).astype(np.float32)
  sigmas = np.array([0.5, 1.7], np.float32)
  got = data_util.gaussian_blur(tf.constant(images), tf.constant(sigmas), kernel_size=5).numpy()
  for i, sigma in enumerate(sigmas):
    k = np.exp(-np.arange(-2, 3) ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    padded = np.pad(images[i], ((2, 2), (2, 2), (0, 0)))
    horizontal = sum(k[t] * padded[:, t:t + 9] for t in range(5))
    want = sum(k[t] * horizontal[t:t + 9] for t in range(5))
    np.testing.assert_allclose(got[i], want, atol=1e-5)


def test_pretrain_views_shapes_ranges_and_independence():
  images = tf.constant(np.random.default_rng(4).integers(0, 256, (16, 48, 48, 3)).astype(np.uint8))
  views = data_util.pretrain_views(images, 32, 32, blur=True)
  assert views.shape == (16, 32, 32, 6) and views.dtype == tf.float32
  values = views.numpy()
  assert values.min() >= 0.0 and values.max() <= 1.0
  assert all(np.abs(values[i, ..., :3] - values[i, ..., 3:]).max() > 1e-3 for i in range(16))


def test_eval_is_deterministic_and_centre_crops():
  images = tf.constant(np.random.default_rng(5).integers(0, 256, (4, 64, 64, 3)).astype(np.uint8))
  first = data_util.preprocess_for_eval(images, 48, 48).numpy()
  np.testing.assert_array_equal(first, data_util.preprocess_for_eval(images, 48, 48).numpy())
  # 87.5% of 64 = 56 px centred (offset 4), resized to 48.
  crop = tf.image.convert_image_dtype(images[:, 4:60, 4:60], tf.float32)
  want = tf.clip_by_value(tf.image.resize(crop, [48, 48], method='bicubic'), 0, 1).numpy()
  np.testing.assert_allclose(first, want, atol=1e-6)
  small = tf.constant(np.random.default_rng(6).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8))
  np.testing.assert_allclose(data_util.preprocess_for_eval(small, 32, 32, crop=False).numpy(),
                             small.numpy() / 255.0, atol=1e-7)


@pytest.mark.parametrize('color_distort', [True, False])
def test_finetune_augmentation_only_crops_and_flips(color_distort):
  # A constant-colour image keeps its colour under crop+flip; colour distortion changes most of them.
  images = tf.cast(_constant_images(200) * 255, tf.uint8)
  out = data_util.random_photometric(data_util.random_geometry(images, 8, 8), color_distort=color_distort).numpy()
  source = tf.image.convert_image_dtype(images, tf.float32).numpy()
  unchanged = np.abs(out - source).max(axis=(1, 2, 3)) < 1e-6
  if color_distort:
    assert unchanged.mean() < 0.3
  else:
    assert unchanged.all()


def _jpegs():
  """JPEGs in the layouts libjpeg decodes differently: 4:2:0 and 4:4:4 chroma, progressive, grayscale, 4:2:2
  (PIL), odd sides, and a thin strip on which the crop falls back to a centre crop."""
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(7)

  def image(h, w):
    ramp = np.linspace(0, 200, w)[None, :, None] * rng.uniform(0.3, 1, 3)
    return np.clip(ramp + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)

  pil = io.BytesIO()
  Image.fromarray(image(45, 58)).save(pil, 'JPEG', quality=90, subsampling=1)
  return {'420': tf.io.encode_jpeg(image(37, 53)).numpy(),
          '444': tf.io.encode_jpeg(image(41, 35), chroma_downsampling=False).numpy(),
          'progressive': tf.io.encode_jpeg(image(50, 47), progressive=True).numpy(),
          'gray': tf.io.encode_jpeg(image(33, 40)[..., :1]).numpy(),
          '422': pil.getvalue(),
          'strip': tf.io.encode_jpeg(image(6, 90)).numpy()}


def test_decode_jpeg_crop_equals_the_full_decode_cut():
  rng = np.random.default_rng(8)
  for kind, contents in _jpegs().items():
    full = tf.io.decode_jpeg(contents, channels=3).numpy()
    height, width = full.shape[:2]
    for _ in range(40):
      h, w = rng.integers(1, height + 1), rng.integers(1, width + 1)
      y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
      got = data_util.decode_jpeg_crop(contents, y, x, h, w).numpy()
      np.testing.assert_array_equal(got, full[y:y + h, x:x + w], err_msg=f'{kind} {(y, x, h, w)}')


@pytest.mark.parametrize('num_views', [1, 2])
def test_decode_and_random_crop_equals_cropping_the_decoded_image(num_views):
  # Same seeds -> the same windows and flips as random_geometry on the decoded image (its two pretraining
  # views are two copies of the image), and the same pixels: identical views, so identical distributions.
  for kind, contents in _jpegs().items():
    decoded = tf.io.decode_jpeg(contents, channels=3)
    for seed in range(8):
      tf.random.set_seed(seed)
      want = data_util.random_geometry(tf.stack([decoded] * num_views), 16, 12).numpy()
      tf.random.set_seed(seed)
      got = data_util.decode_and_random_crop(tf.constant(contents), 16, 12, num_views).numpy()
      np.testing.assert_array_equal(got, want, err_msg=f'{kind} seed {seed}')


def test_a_larger_min_area_keeps_every_crop_above_it():
  _, _, h, w = [t.numpy() for t in data_util.sample_crop_windows(64, 64, 5000, area_range=(0.35, 1.0))]
  area = h * w / 64 ** 2
  assert area.min() >= 0.35 * 0.95 and np.mean(area < 0.5) > 0.1  # (rounding to whole pixels)
