"""SimCLR's data augmentations (SimCLR appendix A), over batches, with independent draws per image.

The authors' pipeline augments one image at a time inside `tf.data.Dataset.map` and is a known bottleneck
(google-research/simclr#62). Here every function takes a batch `[B, H, W, C]` and draws each image's random
parameters at once; the work is done where it is cheapest: crops are resized by TensorFlow's own bicubic
kernel image by image, and the colour distortion is one XLA-compiled loop over the images that fuses each
image's ops while it is in cache (saturation and hue in closed form, equal to tf.image's HSV kernels). The
distributions are those of the paper:

- crop: area uniform in [0.08, 1] of the image (`min_area`: --crop_min_area), aspect ratio log-uniform in
  [3/4, 4/3], up to 100 attempts, then a centre crop; bicubic resize (Keys a=-0.5, half-pixel centres: what
  `tf.image.resize` does); a JPEG file can be cropped decoding only the window (`decode_and_random_crop`, same
  draws and pixels);
- horizontal flip with p=0.5;
- colour jitter with p=0.8: brightness (multiplicative, 0.8s), contrast (0.8s), saturation (0.8s), hue (0.2s)
  in a random order per image, clipped to [0, 1] after each; then grayscale with p=0.2;
- Gaussian blur with p=0.5, sigma uniform in [0.1, 2], kernel 10% of the image side (pretraining only).

Images in are uint8 (or floats in [0, 1]); images out are float32 in [0, 1] with static shapes.
"""

import math
import typing

import tensorflow as tf

CROP_PROPORTION = 0.875  # Eval centre crop, as in the authors' code (and Inception-style evaluation).
MIN_CROP_AREA = 0.08  # Smallest training crop, as a fraction of the image's area (the authors' and Inception's).


def to_float(images: tf.Tensor) -> tf.Tensor:
  """uint8 -> float32 in [0, 1]; float images are passed through as float32."""
  if images.dtype == tf.uint8:
    return tf.cast(images, tf.float32) * (1.0 / 255.0)
  return tf.cast(images, tf.float32)


def _batch_size(images: tf.Tensor) -> tf.Tensor:
  return tf.shape(images)[0]


# ----------------------------------------------------------------------------------------------- crop


def sample_crop_windows(image_height: typing.Union[int, tf.Tensor], image_width: typing.Union[int, tf.Tensor],
                        batch_size: typing.Union[int, tf.Tensor],
                        area_range: tuple[float, float] = (MIN_CROP_AREA, 1.0),
                        aspect_ratio_range: tuple[float, float] = (3. / 4., 4. / 3.),
                        max_attempts: int = 100) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
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


def crop_and_resize(images: tf.Tensor, offset_y: tf.Tensor, offset_x: tf.Tensor, crop_height: tf.Tensor,
                    crop_width: tf.Tensor, height: int, width: int,
                    flip: typing.Optional[tf.Tensor] = None) -> tf.Tensor:
  """Crops one window per image and resizes it bicubically to `[height, width]` (optionally flipping it).

  Each image goes through TensorFlow's own crop and bicubic resize kernels (exactly the authors' numerics),
  one or two at a time so each stays in cache (tf.data runs batches in parallel). Returns float32 in [0, 1].
  """
  if flip is None:
    flip = tf.zeros_like(offset_y, tf.bool)

  def one(args):
    image, y, x, h, w, mirror = args
    return _flip_and_resize(image[y:y + h, x:x + w], mirror, height, width)

  resized = tf.map_fn(one, (images, offset_y, offset_x, crop_height, crop_width, flip),
                      fn_output_signature=tf.float32, parallel_iterations=2)
  return tf.ensure_shape(resized, [None, height, width, images.shape[-1]])


def _flip_and_resize(crop: tf.Tensor, mirror: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """One crop, mirrored when `mirror`, bicubic to `[height, width]` -> float32 in [0, 1]."""
  scale = 1.0 / 255.0 if crop.dtype == tf.uint8 else 1.0
  crop = tf.cond(mirror, lambda: tf.reverse(crop, axis=[1]), lambda: crop)
  resized = tf.image.resize(crop[None], [height, width], method='bicubic')[0] * scale
  return tf.clip_by_value(resized, 0.0, 1.0)  # bicubic overshoots; clipped while the image is in cache


def _random_windows_and_flips(image_height: typing.Union[int, tf.Tensor], image_width: typing.Union[int, tf.Tensor],
                              n: typing.Union[int, tf.Tensor], height: int, width: int, flip: bool,
                              min_area: float = MIN_CROP_AREA) -> tuple[tuple[tf.Tensor, ...], tf.Tensor]:
  """The draws of `random_crop_with_resize` for `n` crops, in its order: windows (SimCLR scales the aspect
  range by the output's aspect ratio), then flips (`[n]` bool, all False unless `flip`)."""
  aspect = width / height
  windows = sample_crop_windows(image_height, image_width, n, area_range=(min_area, 1.0),
                                aspect_ratio_range=(3. / 4. * aspect, 4. / 3. * aspect))
  mirror = tf.random.uniform([n]) < 0.5 if flip else tf.zeros([n], tf.bool)
  return windows, mirror


def random_crop_with_resize(images: tf.Tensor, height: int, width: int,
                            image_height: typing.Union[int, tf.Tensor, None] = None,
                            image_width: typing.Union[int, tf.Tensor, None] = None, flip: bool = False,
                            min_area: float = MIN_CROP_AREA) -> tf.Tensor:
  """Inception-style random resized crop of each image of the batch (SimCLR's main augmentation), its area
  uniform in [`min_area`, 1] of the image, and a horizontal flip with p=0.5 when `flip`.

  `image_height` / `image_width` (`[B]` or scalars) give the true sizes of zero-padded images; by default
  the batch's own size.
  """
  shape = tf.shape(images)
  image_height = shape[1] if image_height is None else image_height
  image_width = shape[2] if image_width is None else image_width
  windows, mirror = _random_windows_and_flips(image_height, image_width, shape[0], height, width, flip, min_area)
  return crop_and_resize(images, *windows, height, width, flip=mirror)


def decode_jpeg_crop(contents: tf.Tensor, offset_y: tf.Tensor, offset_x: tf.Tensor, crop_height: tf.Tensor,
                     crop_width: tf.Tensor) -> tf.Tensor:
  """The window of a JPEG file's bytes as uint8 `[crop_height, crop_width, 3]`, decoding little more than it.

  The pixels equal a full decode's (`tf.io.decode_jpeg`, cut): the window is decoded one column wider on
  each side, then cut, because libjpeg's fancy chroma upsampling takes a crop's edge for the image's, which
  alters the edge columns of 4:2:0 and 4:2:2 JPEGs.
  """
  offset_y, offset_x, crop_height, crop_width = (tf.cast(t, tf.int32)
                                                  for t in (offset_y, offset_x, crop_height, crop_width))
  image_width = tf.image.extract_jpeg_shape(contents)[1]
  left = tf.maximum(offset_x - 1, 0)
  right = tf.minimum(offset_x + crop_width + 1, image_width)
  wider = tf.image.decode_and_crop_jpeg(contents, tf.stack([offset_y, left, crop_height, right - left]), channels=3)
  return wider[:, offset_x - left:offset_x - left + crop_width]


def decode_and_random_crop(contents: tf.Tensor, height: int, width: int, num_views: int = 1, flip: bool = True,
                           min_area: float = MIN_CROP_AREA) -> tf.Tensor:
  """`num_views` random resized crops (and flips) of one JPEG file's bytes, each decoding only its window
  (`tf.image.decode_and_crop_jpeg`, as the authors' ImageNet pipeline does) -> `[num_views, height, width, 3]`.

  The draws are those `random_crop_with_resize` makes for `num_views` copies of the decoded image, in the
  same order, and the windows' pixels equal the decoded image's, so the views are the same (identical under
  the same seeds).
  """
  shape = tf.image.extract_jpeg_shape(contents)
  windows, mirror = _random_windows_and_flips(shape[0], shape[1], num_views, height, width, flip, min_area)
  views = [_flip_and_resize(decode_jpeg_crop(contents, *(t[i] for t in windows)), mirror[i], height, width)
           for i in range(num_views)]
  return tf.ensure_shape(tf.stack(views), [num_views, height, width, 3])


def center_crop_window(image_height: typing.Union[int, tf.Tensor], image_width: typing.Union[int, tf.Tensor],
                       height: int, width: int,
                       crop_proportion: float = CROP_PROPORTION) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
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


def random_flip_left_right(images: tf.Tensor) -> tf.Tensor:
  flip = tf.random.uniform([_batch_size(images), 1, 1, 1]) < 0.5
  return tf.where(flip, tf.reverse(images, axis=[2]), images)


# The colour ops below act on one image as three planes `[3, H, W]` (red, green, blue): per-pixel formulas
# across the planes then run on contiguous memory. Saturation and hue are tf.image's HSV adjustments
# (`tf.image.adjust_saturation` / `adjust_hue`, the authors' ops) written in closed form in RGB, equal to
# them to ~1e-6, so XLA can fuse them.


def _max_min(planes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  r, g, b = planes[0], planes[1], planes[2]
  return tf.maximum(tf.maximum(r, g), b), tf.minimum(tf.minimum(r, g), b)


def adjust_brightness(planes: tf.Tensor, factor: typing.Union[float, tf.Tensor]) -> tf.Tensor:
  return planes * factor  # SimCLRv2's multiplicative brightness


def adjust_contrast(planes: tf.Tensor, factor: typing.Union[float, tf.Tensor]) -> tf.Tensor:
  mean = tf.reduce_mean(planes, axis=[1, 2], keepdims=True)  # per channel, as tf.image.adjust_contrast
  return (planes - mean) * factor + mean


def adjust_saturation(planes: tf.Tensor, factor: typing.Union[float, tf.Tensor]) -> tf.Tensor:
  """HSV saturation times `factor`, clipped to [0, 1]: each channel moves towards or away from the pixel's
  maximum (the value V) by `factor`, at most until the minimum channel reaches 0."""
  value, minimum = _max_min(planes)
  scale = tf.minimum(factor, value / tf.maximum(value - minimum, 1e-30))
  return value + scale * (planes - value)


def adjust_hue(planes: tf.Tensor, delta: typing.Union[float, tf.Tensor]) -> tf.Tensor:
  """HSV hue rotated by `delta` (a fraction of the colour circle); value and saturation are kept."""
  r, g, b = planes[0], planes[1], planes[2]
  value, minimum = _max_min(planes)
  chroma = value - minimum
  inverse = 1.0 / tf.maximum(chroma, 1e-30)
  hue6 = tf.where(r == value, (g - b) * inverse,
                  tf.where(g == value, (b - r) * inverse + 2.0, (r - g) * inverse + 4.0)) + 6.0 * delta
  channels = []
  for offset in (5.0, 3.0, 1.0):  # HSV -> RGB: channel = V - C * clip(min(k, 4 - k), 0, 1), k = (offset + 6H) mod 6
    k = hue6 + offset
    k -= 6.0 * tf.floor(k * (1.0 / 6.0))
    channels.append(value - chroma * tf.clip_by_value(tf.minimum(k, 4.0 - k), 0.0, 1.0))
  return tf.stack(channels, axis=0)


def to_grayscale(planes: tf.Tensor) -> tf.Tensor:
  """Luma (ITU-R 601, the weights of tf.image.rgb_to_grayscale) in all three planes."""
  luma = 0.2989 * planes[0] + 0.5870 * planes[1] + 0.1140 * planes[2]
  return tf.stack([luma] * 3, axis=0)


NO_OP = 4  # op id of "no jitter at this position"


def _distort_one(image: tf.Tensor, op_ids: tf.Tensor, factors: tf.Tensor, gray: tf.Tensor) -> tf.Tensor:
  """One image: its 4 jitter ops in its own order (op ids, NO_OP = skip), clipped after each; grayscale."""
  planes = tf.transpose(image, [2, 0, 1])
  for position in range(4):
    branches = [lambda: adjust_brightness(planes, factors[0]), lambda: adjust_contrast(planes, factors[1]),
                lambda: adjust_saturation(planes, factors[2]), lambda: adjust_hue(planes, factors[3]),
                lambda: planes]
    planes = tf.clip_by_value(tf.switch_case(op_ids[position], branches), 0.0, 1.0)
  planes = tf.cond(gray, lambda: to_grayscale(planes), lambda: planes)
  return tf.transpose(planes, [1, 2, 0])


def _distort(images: tf.Tensor, op_ids: tf.Tensor, factors: tf.Tensor, gray: tf.Tensor,
             num_views: int = 1) -> tf.Tensor:
  """`_distort_one` over the batch; the `num_views` views of an image (view-major in the batch) come out
  stacked on channels, written while still in cache instead of in a separate pass over the batch."""
  n = tf.shape(images)[0] // num_views

  def one(i):
    views = [_distort_one(images[j], op_ids[j], factors[j], gray[j])
             for j in (v * n + i for v in range(num_views))]
    return tf.concat(views, axis=-1)

  return tf.map_fn(one, tf.range(n), fn_output_signature=images.dtype, parallel_iterations=1)


# XLA fuses each image's ops into a few loops over memory that stays in cache: 3-5x the speed of tf.image's
# kernels called per image (which is what per-image factors require without it). One compilation per batch
# shape (~2 s at 32 px, ~10 s at 224 px).
_distort_xla = tf.function(_distort, jit_compile=True)


def random_color_distortion(images: tf.Tensor, strength: float = 1.0, jitter_p: float = 0.8, gray_p: float = 0.2,
                            num_views: int = 1, jit_compile: bool = True) -> tf.Tensor:
  """SimCLR's colour distortion, parameters drawn per image: with probability `jitter_p` colour jitter --
  brightness (multiplicative), contrast and saturation factors uniform in [1 - 0.8s, 1 + 0.8s] (floored at
  0), hue shift uniform in [-0.2s, 0.2s] (SimCLRv2's strengths), in a random order, clipped to [0, 1] after
  each -- then grayscale with probability `gray_p`.

  `num_views` > 1: `images` holds that many views of each image, view-major (`[V * B, H, W, 3]`), and the
  result is stacked on channels (`[B, H, W, 3V]`, as `stack_views`). `jit_compile=False` runs the same ops
  without XLA (slower; for platforms without XLA on the host CPU).
  """
  images = to_float(images)
  n = _batch_size(images)
  jitter = 0.8 * strength
  factors = tf.stack([tf.random.uniform([n], max(0.0, 1.0 - jitter), 1.0 + jitter) for _ in range(3)] +
                     [tf.random.uniform([n], -0.2 * strength, 0.2 * strength)], axis=1)
  order = tf.argsort(tf.random.uniform([n, 4]), axis=1)  # a random permutation per image
  op_ids = tf.where(tf.random.uniform([n, 1]) < jitter_p, order, NO_OP)
  gray = tf.random.uniform([n]) < gray_p
  distorted = (_distort_xla if jit_compile else _distort)(images, op_ids, factors, gray, num_views)
  batch = None if images.shape[0] is None else images.shape[0] // num_views
  return tf.ensure_shape(distorted, [batch] + images.shape[1:3] + [3 * num_views])


def _apply_to_partitions(images: tf.Tensor, op_ids: tf.Tensor,
                         transforms: typing.Sequence[typing.Callable[[tf.Tensor, int], tf.Tensor]]) -> tf.Tensor:
  """Applies `transforms[i]` to the images whose op id is i (and nothing to id len(transforms))."""
  count = len(transforms) + 1
  parts = tf.dynamic_partition(images, op_ids, count)
  indices = tf.dynamic_partition(tf.range(_batch_size(images)), op_ids, count)
  outputs = [transform(part, i) for i, (transform, part) in enumerate(zip(transforms, parts))]
  return tf.dynamic_stitch(indices, outputs + [parts[-1]])


# ----------------------------------------------------------------------------------------------- blur


def gaussian_blur(images: tf.Tensor, sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
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


def random_blur(images: tf.Tensor, p: float = 0.5, sigma_range: tuple[float, float] = (0.1, 2.0)) -> tf.Tensor:
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


def random_geometry(images: tf.Tensor, height: int, width: int, crop: bool = True, flip: bool = True,
                    image_height: typing.Union[int, tf.Tensor, None] = None,
                    image_width: typing.Union[int, tf.Tensor, None] = None,
                    min_area: float = MIN_CROP_AREA) -> tf.Tensor:
  """The geometric half of the training augmentation: random resized crop (area in [`min_area`, 1] of the
  image) and flip -> float32 [0, 1].

  Split from the photometric half so images of different sizes can be cropped one by one (before batching)
  and coloured as a batch.
  """
  if crop:
    return random_crop_with_resize(images, height, width, image_height, image_width, flip=flip, min_area=min_area)
  images = resize(images, height, width)
  return random_flip_left_right(images) if flip else images


def random_photometric(images: tf.Tensor, color_distort: bool = True, color_jitter_strength: float = 1.0,
                       blur: bool = False, num_views: int = 1) -> tf.Tensor:
  """The photometric half: colour distortion (pretraining) and Gaussian blur (pretraining, optional).

  `num_views` > 1: `images` are view-major views (`[V * B, H, W, 3]`), returned stacked on channels
  (`[B, H, W, 3V]`); without blur the colour distortion stacks them as it writes them.
  """
  stacked_by_distortion = color_distort and not blur
  if color_distort:
    images = random_color_distortion(images, color_jitter_strength,
                                     num_views=num_views if stacked_by_distortion else 1)
  if blur:
    images = random_blur(images)
  if num_views > 1 and not stacked_by_distortion:
    images = stack_views(images, num_views)
  return images  # each step returns images in [0, 1]: no extra clipping pass over the batch


def stack_views(views: tf.Tensor, num_views: int = 2) -> tf.Tensor:
  """`[V * B, h, w, 3]` (view-major) -> `[B, h, w, 3 * V]`, the model's input layout."""
  return tf.concat(tf.split(views, num_views, axis=0), axis=-1)


def unstack_views(images: tf.Tensor, num_views: int = 2) -> tf.Tensor:
  """`[B, h, w, 3 * V]` -> `[V * B, h, w, 3]` (view-major): the inverse of `stack_views`."""
  return tf.concat(tf.split(images, num_views, axis=-1), axis=0)


def pretrain_views(images: tf.Tensor, height: int, width: int, color_jitter_strength: float = 1.0, blur: bool = False,
                   num_views: int = 2, min_area: float = MIN_CROP_AREA) -> tf.Tensor:
  """`num_views` independently augmented views of each image of a same-size batch, stacked on channels."""
  views = random_geometry(tf.concat([images] * num_views, axis=0), height, width, min_area=min_area)
  return random_photometric(views, color_jitter_strength=color_jitter_strength, blur=blur, num_views=num_views)


def preprocess_for_eval(images: tf.Tensor, height: int, width: int, crop: bool = True,
                        image_height: typing.Union[int, tf.Tensor, None] = None,
                        image_width: typing.Union[int, tf.Tensor, None] = None) -> tf.Tensor:
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


def resize(images: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """Bicubic resize of whole images (same kernel as the crops); a no-op cast when the size already matches."""
  if images.shape[1] == height and images.shape[2] == width:
    return to_float(images)
  n = _batch_size(images)
  window = [tf.zeros([n], tf.int32), tf.zeros([n], tf.int32),
            tf.fill([n], tf.shape(images)[1]), tf.fill([n], tf.shape(images)[2])]
  return crop_and_resize(images, *window, height, width)
