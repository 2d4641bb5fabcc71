"""SimCLR's data augmentations (SimCLR appendix A), vectorised over batches.

The authors' pipeline augments one image at a time inside `tf.data.Dataset.map`; at small image sizes the
per-image op overhead dominates (google-research/simclr#62). Here every function takes a batch `[B, H, W, C]`
and draws independent random parameters per image, so a batch costs a few dozen kernel launches whatever its
size, and the distributions are those of the paper:

- crop: area uniform in [0.08, 1] of the image, aspect ratio log-uniform in [3/4, 4/3], up to 100 attempts,
  then a centre crop; bicubic resize (Keys a=-0.5, half-pixel centres: what `tf.image.resize` does);
- horizontal flip with p=0.5;
- colour jitter with p=0.8: brightness (multiplicative, 0.8s), contrast (0.8s), saturation (0.8s), hue (0.2s)
  in a random order per image, clipped to [0, 1] after each; then grayscale with p=0.2;
- Gaussian blur with p=0.5, sigma uniform in [0.1, 2], kernel 10% of the image side (pretraining only).

Images in are uint8 (or floats in [0, 1]); images out are float32 in [0, 1] with static shapes.
"""

import math

import tensorflow as tf

CROP_PROPORTION = 0.875  # Eval centre crop, as in the authors' code (and Inception-style evaluation).


def to_float(images):
  """uint8 -> float32 in [0, 1]; float images are passed through as float32."""
  if images.dtype == tf.uint8:
    return tf.cast(images, tf.float32) * (1.0 / 255.0)
  return tf.cast(images, tf.float32)


def _batch_size(images):
  return tf.shape(images)[0]


# ----------------------------------------------------------------------------------------------- crop


def sample_crop_windows(image_height, image_width, batch_size, area_range=(0.08, 1.0),
                        aspect_ratio_range=(3. / 4., 4. / 3.), max_attempts=100):
  """Random crop windows, one per image: `(offset_y, offset_x, crop_height, crop_width)`, each `[B]` int32.

  Area is uniform in `area_range` (fraction of the image), aspect ratio (width / height) log-uniform in
  `aspect_ratio_range`. Each image takes its first of `max_attempts` draws that fits; if none fits, the
  largest centre crop whose aspect ratio is in range. `image_height` / `image_width` are scalars or `[B]`.
  """
  height = tf.cast(tf.broadcast_to(image_height, [batch_size]), tf.float32)
  width = tf.cast(tf.broadcast_to(image_width, [batch_size]), tf.float32)
  area = height * width
  target_area = area[:, None] * tf.random.uniform([batch_size, max_attempts], *area_range)
  log_ratio = tf.random.uniform([batch_size, max_attempts], math.log(aspect_ratio_range[0]),
                                math.log(aspect_ratio_range[1]))
  ratio = tf.exp(log_ratio)
  crop_w = tf.round(tf.sqrt(target_area * ratio))
  crop_h = tf.round(tf.sqrt(target_area / ratio))
  fits = (crop_w >= 1) & (crop_h >= 1) & (crop_w <= width[:, None]) & (crop_h <= height[:, None])
  first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)  # first fitting attempt
  any_fits = tf.reduce_any(fits, axis=1)
  pick = lambda t: tf.gather(t, first, axis=1, batch_dims=1)

  # Fallback: centre crop, aspect ratio clamped into range (the whole image when it already is in range).
  image_ratio = width / height
  fallback_w = tf.where(image_ratio < aspect_ratio_range[0], width,
                        tf.where(image_ratio > aspect_ratio_range[1],
                                 tf.round(height * aspect_ratio_range[1]), width))
  fallback_h = tf.where(image_ratio < aspect_ratio_range[0], tf.round(width / aspect_ratio_range[0]), height)
  crop_h = tf.where(any_fits, pick(crop_h), fallback_h)
  crop_w = tf.where(any_fits, pick(crop_w), fallback_w)
  offset_y = tf.where(any_fits, tf.floor(tf.random.uniform([batch_size]) * (height - crop_h + 1)),
                      tf.floor((height - crop_h) / 2))
  offset_x = tf.where(any_fits, tf.floor(tf.random.uniform([batch_size]) * (width - crop_w + 1)),
                      tf.floor((width - crop_w) / 2))
  as_int = lambda t: tf.cast(t, tf.int32)
  return as_int(offset_y), as_int(offset_x), as_int(crop_h), as_int(crop_w)


def crop_and_resize(images, offset_y, offset_x, crop_height, crop_width, height, width, flip=None):
  """Crops one window per image and resizes it bicubically to `[height, width]` (optionally flipping it).

  Each image goes through TensorFlow's own crop and bicubic resize kernels (exactly the authors' numerics);
  `tf.map_fn` runs them in parallel without tf.data's per-element overhead. Returns float32 in [0, 1].
  """
  scale = 1.0 / 255.0 if images.dtype == tf.uint8 else 1.0
  if flip is None:
    flip = tf.zeros_like(offset_y, tf.bool)

  def one(args):
    image, y, x, h, w, mirror = args
    crop = image[y:y + h, x:x + w]
    crop = tf.cond(mirror, lambda: tf.reverse(crop, axis=[1]), lambda: crop)
    return tf.image.resize(crop[None], [height, width], method='bicubic')[0] * scale

  resized = tf.map_fn(one, (images, offset_y, offset_x, crop_height, crop_width, flip),
                      fn_output_signature=tf.float32, parallel_iterations=16)
  return tf.clip_by_value(tf.ensure_shape(resized, [None, height, width, images.shape[-1]]), 0.0, 1.0)


def random_crop_with_resize(images, height, width, image_height=None, image_width=None, flip=False):
  """Inception-style random resized crop of each image of the batch (SimCLR's main augmentation), and a
  horizontal flip with p=0.5 when `flip`.

  `image_height` / `image_width` (`[B]` or scalars) give the true sizes of zero-padded images; by default
  the batch's own size.
  """
  shape = tf.shape(images)
  image_height = shape[1] if image_height is None else image_height
  image_width = shape[2] if image_width is None else image_width
  aspect = width / height  # SimCLR scales the aspect range by the output's aspect ratio
  windows = sample_crop_windows(image_height, image_width, shape[0],
                                aspect_ratio_range=(3. / 4. * aspect, 4. / 3. * aspect))
  mirror = tf.random.uniform([shape[0]]) < 0.5 if flip else None
  return crop_and_resize(images, *windows, height, width, flip=mirror)


def center_crop_window(image_height, image_width, height, width, crop_proportion=CROP_PROPORTION):
  """The authors' eval crop: the centred `crop_proportion` of the image at the output's aspect ratio."""
  image_height = tf.cast(image_height, tf.float32)
  image_width = tf.cast(image_width, tf.float32)
  aspect = height / width
  wider = aspect > image_width / image_height
  crop_h = tf.where(wider, tf.math.rint(crop_proportion / aspect * image_width),
                    tf.math.rint(crop_proportion * image_height))
  crop_w = tf.where(wider, tf.math.rint(crop_proportion * image_width),
                    tf.math.rint(crop_proportion * aspect * image_height))
  offset_y = tf.floor((image_height - crop_h + 1) / 2)
  offset_x = tf.floor((image_width - crop_w + 1) / 2)
  return tuple(tf.cast(t, tf.int32) for t in (offset_y, offset_x, crop_h, crop_w))


# ----------------------------------------------------------------------------------------------- colour


def random_flip_left_right(images):
  flip = tf.random.uniform([_batch_size(images), 1, 1, 1]) < 0.5
  return tf.where(flip, tf.reverse(images, axis=[2]), images)


def _per_image(values):
  return tf.reshape(values, [-1, 1, 1, 1])


def _adjust_brightness(images, factor):
  return images * _per_image(factor)  # SimCLRv2's multiplicative brightness


def _adjust_contrast(images, factor):
  mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)  # per image and channel, as tf.image does
  return (images - mean) * _per_image(factor) + mean


def _per_image_kernel(kernel):
  """Runs a tf.image kernel that takes one scalar parameter per call on each image with its own parameter."""
  def apply(images, params):
    return tf.map_fn(lambda args: kernel(args[0], args[1]), (images, params),
                     fn_output_signature=images.dtype, parallel_iterations=16)
  return apply


# TensorFlow's fused HSV kernels: the authors' exact numerics, and faster than composing rgb_to_hsv ops.
_adjust_saturation = _per_image_kernel(tf.image.adjust_saturation)
_adjust_hue = _per_image_kernel(tf.image.adjust_hue)


def _apply_to_partitions(images, op_ids, transforms):
  """Applies `transforms[i]` to the images whose op id is i (and nothing to id len(transforms))."""
  count = len(transforms) + 1
  parts = tf.dynamic_partition(images, op_ids, count)
  indices = tf.dynamic_partition(tf.range(_batch_size(images)), op_ids, count)
  outputs = [transform(part, i) for i, (transform, part) in enumerate(zip(transforms, parts))]
  return tf.dynamic_stitch(indices, outputs + [parts[-1]])


def color_jitter(images, strength=1.0, p=0.8):
  """With probability p per image: brightness, contrast, saturation and hue in a random order per image.

  Strengths as in the SimCLRv2 code: 0.8s for brightness/contrast/saturation, 0.2s for hue; each factor is
  drawn per image. Each position of the random order is applied to all images at once by partitioning the
  batch by the op each image draws there, so every image gets exactly its 4 ops, clipped after each.
  """
  b = c = s = 0.8 * strength
  h = 0.2 * strength
  n = _batch_size(images)
  factors = [
      tf.random.uniform([n], max(0.0, 1.0 - b), 1.0 + b),
      tf.random.uniform([n], max(0.0, 1.0 - c), 1.0 + c),
      tf.random.uniform([n], max(0.0, 1.0 - s), 1.0 + s),
      tf.random.uniform([n], -h, h),
  ]
  ops = [_adjust_brightness, _adjust_contrast, _adjust_saturation, _adjust_hue]
  order = tf.argsort(tf.random.uniform([n, len(ops)]), axis=1)  # a random permutation per image
  apply = tf.random.uniform([n]) < p
  for k in range(len(ops)):
    op_ids = tf.where(apply, order[:, k], len(ops))
    factor_parts = [tf.dynamic_partition(f, op_ids, len(ops) + 1)[i] for i, f in enumerate(factors)]
    transforms = [lambda part, i, op=op: op(part, factor_parts[i]) for op in ops]
    images = tf.clip_by_value(_apply_to_partitions(images, op_ids, transforms), 0.0, 1.0)
  return images


def random_grayscale(images, p=0.2):
  """With probability p per image, luma (ITU-R 601, tf.image.rgb_to_grayscale) copied to 3 channels."""
  selected = tf.cast(tf.random.uniform([_batch_size(images)]) >= p, tf.int32)  # 0 = grayscale
  to_gray = lambda part, _: tf.tile(tf.image.rgb_to_grayscale(part), [1, 1, 1, 3])
  return _apply_to_partitions(images, selected, [to_gray])


def random_color_distortion(images, strength=1.0):
  """SimCLR's colour distortion: jitter with p=0.8, then grayscale with p=0.2."""
  return random_grayscale(color_jitter(images, strength, p=0.8), p=0.2)


# ----------------------------------------------------------------------------------------------- blur


def gaussian_blur(images, sigma, kernel_size):
  """Separable Gaussian blur with one sigma per image (`sigma` `[B]`), zero 'SAME' padding as the authors'.

  The batch is folded into channels so a single depthwise convolution applies every image's own kernel.
  """
  radius = kernel_size // 2
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernels = tf.exp(-tf.square(x)[None, :] / (2.0 * tf.square(tf.reshape(sigma, [-1, 1]))))
  kernels /= tf.reduce_sum(kernels, axis=1, keepdims=True)  # [B, taps]
  n, channels = tf.shape(images)[0], images.shape[-1]
  folded = tf.transpose(images, [1, 2, 0, 3])  # [H, W, B, C]
  folded = tf.reshape(folded, [1, tf.shape(images)[1], tf.shape(images)[2], n * channels])
  per_channel = tf.reshape(tf.repeat(kernels, channels, axis=0), [n * channels, -1])  # [B*C, taps]
  taps = 2 * radius + 1
  horizontal = tf.reshape(tf.transpose(per_channel), [1, taps, n * channels, 1])
  vertical = tf.reshape(tf.transpose(per_channel), [taps, 1, n * channels, 1])
  blurred = tf.nn.depthwise_conv2d(folded, horizontal, [1, 1, 1, 1], 'SAME')
  blurred = tf.nn.depthwise_conv2d(blurred, vertical, [1, 1, 1, 1], 'SAME')
  blurred = tf.reshape(blurred, [tf.shape(images)[1], tf.shape(images)[2], n, channels])
  return tf.ensure_shape(tf.transpose(blurred, [2, 0, 1, 3]), images.shape)


def random_blur(images, p=0.5, sigma_range=(0.1, 2.0)):
  """With probability p per image, a Gaussian blur with sigma uniform in `sigma_range` and a kernel of 10% of
  the image height. Only the selected images are convolved."""
  kernel_size = images.shape[1] // 10
  if kernel_size < 2:  # a 1-tap kernel is the identity
    return images
  selected = tf.cast(tf.random.uniform([_batch_size(images)]) >= p, tf.int32)  # 0 = blur

  def blur(part, _):
    sigma = tf.random.uniform([_batch_size(part)], *sigma_range)
    return tf.clip_by_value(gaussian_blur(part, sigma, kernel_size), 0.0, 1.0)

  return tf.ensure_shape(_apply_to_partitions(images, selected, [blur]), images.shape)


# ----------------------------------------------------------------------------------------------- recipes


def random_geometry(images, height, width, crop=True, flip=True, image_height=None, image_width=None):
  """The geometric half of the training augmentation: random resized crop and flip -> float32 [0, 1].

  Split from the photometric half so images of different sizes can be cropped one by one (before batching)
  and coloured as a batch.
  """
  if crop:
    return random_crop_with_resize(images, height, width, image_height, image_width, flip=flip)
  images = resize(images, height, width)
  return random_flip_left_right(images) if flip else images


def random_photometric(images, color_distort=True, color_jitter_strength=1.0, blur=False):
  """The photometric half: colour distortion (pretraining) and Gaussian blur (pretraining, optional)."""
  if color_distort:
    images = random_color_distortion(images, color_jitter_strength)
  if blur:
    images = random_blur(images)
  return tf.clip_by_value(images, 0.0, 1.0)


def preprocess_for_train(images, height, width, color_distort=True, color_jitter_strength=1.0, blur=False,
                         crop=True, flip=True, image_height=None, image_width=None):
  """Training views of a batch: crop+resize, flip, then (pretraining) colour distortion and blur.

  Fine-tuning uses `color_distort=False, blur=False` (crop and flip only), as the authors do.
  """
  images = random_geometry(images, height, width, crop, flip, image_height, image_width)
  return random_photometric(images, color_distort, color_jitter_strength, blur)


def stack_views(views, num_views=2):
  """`[V * B, h, w, 3]` (view-major) -> `[B, h, w, 3 * V]`, the model's input layout."""
  return tf.concat(tf.split(views, num_views, axis=0), axis=-1)


def pretrain_views(images, height, width, color_jitter_strength=1.0, blur=False, num_views=2):
  """`num_views` independently augmented views of each image of a same-size batch, stacked on channels."""
  views = preprocess_for_train(tf.concat([images] * num_views, axis=0), height, width,
                               color_jitter_strength=color_jitter_strength, blur=blur)
  return stack_views(views, num_views)


def preprocess_for_eval(images, height, width, crop=True, image_height=None, image_width=None):
  """Deterministic eval view: centre crop of 87.5% resized to [height, width]; `crop=False` (images of
  32 px or less, as the authors do) only resizes, and only if the size differs."""
  if not crop and image_height is None and image_width is None:
    return resize(images, height, width)
  shape = tf.shape(images)
  image_height = shape[1] if image_height is None else image_height
  image_width = shape[2] if image_width is None else image_width
  n = shape[0]
  if crop:
    window = center_crop_window(image_height, image_width, height, width)
  else:
    window = (0, 0, image_height, image_width)
  window = [tf.broadcast_to(tf.cast(t, tf.int32), [n]) for t in window]
  return crop_and_resize(images, *window, height, width)


def resize(images, height, width):
  """Bicubic resize of whole images (same kernel as the crops); a no-op cast when the size already matches."""
  if images.shape[1] == height and images.shape[2] == width:
    return to_float(images)
  n = _batch_size(images)
  window = [tf.zeros([n], tf.int32), tf.zeros([n], tf.int32),
            tf.fill([n], tf.shape(images)[1]), tf.fill([n], tf.shape(images)[2])]
  return crop_and_resize(images, *window, height, width)
