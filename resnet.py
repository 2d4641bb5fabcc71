"""The ResNet v1 encoders of SimCLR and SimCLRv2, in Keras 3.

Post-activation ResNets (He et al. 2015, arXiv:1512.03385) exactly as the SimCLR authors' code builds them:
a projection shortcut on the first block of every group (also in group 1 of ResNet-18/34), fixed padding
before strided convolutions, zero-initialised gamma on the last BatchNorm of each block, BatchNorm
epsilon 1e-5. SimCLRv2 additions: selective kernels (Li et al. 2019, arXiv:1903.06586) with a ResNet-D stem
and shortcut (He et al. 2018, arXiv:1812.01187) when `sk_ratio > 0`, and squeeze-excitation
(Hu et al. 2017, arXiv:1709.01507) when `se_ratio > 0`.

The attribute names of the layers follow the authors' TF2 code, so the two share one object graph.
Images are NHWC floats in [0, 1]; the authors' code does not normalise them either.
"""

import typing

import keras
import tensorflow as tf

import resnet_shapes

if keras.backend.backend() != 'tensorflow':
  raise ImportError(
      'SimCLR needs the TensorFlow backend of Keras (synchronized BatchNorm, tf.distribute); '
      f'KERAS_BACKEND is {keras.backend.backend()!r}: unset it or set it to "tensorflow".')

BATCH_NORM_EPSILON = 1e-5

class Layer(keras.layers.Layer):
  """A Keras layer whose sublayers held in Python lists are also checkpoint dependencies.

  Keras 3 wraps list attributes in its own tracking containers, which `tf.train.Checkpoint` does not
  traverse: without this, a checkpoint would silently miss every layer stored in a list (and the BatchNorm
  moving statistics of all of them). Children are named `<attribute>_<index>`, in checkpoints and SavedModels
  alike, so the variables of an exported model can be restored by the same object graph.
  """

  def _trackable_children(self, save_type: str = 'checkpoint', **kwargs) -> dict:
    children = super()._trackable_children(save_type, **kwargs)
    for name in getattr(self, '_tracked', ()):  # also for SavedModels, so an export restores like a checkpoint
      value = getattr(self, name, None)
      if isinstance(value, list):
        for i, item in enumerate(value):
          if isinstance(item, tf.__internal__.tracking.Trackable):
            children[f'{name}_{i}'] = item
    return children


def _conv_initializer() -> keras.initializers.Initializer:
  return keras.initializers.VarianceScaling()


class BatchNormalization(keras.layers.BatchNormalization):
  """Keras BatchNormalization that uses TensorFlow's fused kernel for unsynchronized 4-D NHWC inputs.

  Keras 3 composes batch norm from elementwise ops; the fused kernel is ~3x faster forward + backward on CPU
  (README, Speed). Same variables and the same moving-average rule (biased batch variance), so it computes
  what `keras.layers.BatchNormalization` computes (tested) and checkpoints are interchangeable.
  """

  def call(self, inputs: tf.Tensor, training: typing.Optional[bool] = None,
           mask: typing.Optional[tf.Tensor] = None) -> tf.Tensor:
    if self.synchronized or getattr(self, 'renorm', False) or mask is not None or len(inputs.shape) != 4 or self.axis not in (-1, 3):
      return super().call(inputs, training=training, mask=mask)
    # The kernel keeps statistics and scale/offset in float32 for 16-bit inputs: no cast needed around it.
    x = inputs if inputs.dtype in (tf.bfloat16, tf.float16) else tf.cast(inputs, tf.float32)
    channels = x.shape[-1]
    gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
    beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
    if training and self.trainable:
      outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=self.epsilon,
                                                                  is_training=True)
      # The kernel returns the unbiased (n / (n - 1)) variance for moving averages; Keras uses the biased one.
      n = tf.cast(tf.size(x) // channels, tf.float32)  # (mean and variance are float32)
      variance = variance * (n - 1.0) / n
      self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
      self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
    else:
      outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
          x, gamma, beta, mean=tf.cast(self.moving_mean, tf.float32),
          variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon, is_training=False)
    return tf.cast(outputs, self.compute_dtype)


class BatchNormRelu(keras.layers.Layer):
  """BatchNorm (cross-replica when `global_bn`) followed by an optional ReLU."""

  def __init__(self, relu: bool = True, init_zero: bool = False, center: bool = True, scale: bool = True,
               global_bn: bool = True, batch_norm_decay: float = 0.9, **kwargs) -> None:
    super().__init__(**kwargs)
    self.relu = relu
    self.bn = BatchNormalization(
        axis=-1,
        momentum=batch_norm_decay,
        epsilon=BATCH_NORM_EPSILON,
        center=center,
        scale=scale,
        gamma_initializer='zeros' if init_zero else 'ones',
        synchronized=global_bn,
        name='batch_normalization')

  def call(self, inputs: tf.Tensor, training: typing.Optional[bool] = None) -> tf.Tensor:
    inputs = self.bn(inputs, training=training)
    return tf.nn.relu(inputs) if self.relu else inputs


def _fixed_padding(inputs: tf.Tensor, kernel_size: int) -> tf.Tensor:
  """Pads H and W so a strided 'VALID' conv does not depend on the input size being even."""
  pad_total = kernel_size - 1
  pad_beg = pad_total // 2
  pad_end = pad_total - pad_beg
  return tf.pad(inputs, [[0, 0], [pad_beg, pad_end], [pad_beg, pad_end], [0, 0]])


class Conv2dFixedPadding(keras.layers.Layer):
  """Bias-free convolution; strided ones pad explicitly ('VALID') as in the reference ResNet. `filters` may be a
  fraction (a width-multiplied base width): it is truncated, as Keras 2 did in the authors' code."""

  def __init__(self, filters: float, kernel_size: int, strides: int, **kwargs) -> None:
    super().__init__(**kwargs)
    self.kernel_size = kernel_size
    self.strides = strides
    self.conv2d = keras.layers.Conv2D(
        filters=int(filters),
        kernel_size=kernel_size,
        strides=strides,
        padding='same' if strides == 1 else 'valid',
        use_bias=False,
        kernel_initializer=_conv_initializer(),
        name='conv2d')

  def call(self, inputs: tf.Tensor, training: typing.Optional[bool] = None) -> tf.Tensor:
    if self.strides > 1:
      inputs = _fixed_padding(inputs, self.kernel_size)
    return self.conv2d(inputs)


class SK_Conv2D(Layer):  # pylint: disable=invalid-name
  """Selective kernel 3x3 convolution (SimCLRv2): two 3x3 streams mixed by a learnt softmax attention.

  As in the SimCLRv2 code, both streams are 3x3 (one conv with 2x filters, split in two) and the attention
  MLP has max(filters * sk_ratio, min_dim) hidden channels.
  """

  def __init__(self, filters: float, strides: int, sk_ratio: float, min_dim: int = 32, global_bn: bool = True,
               batch_norm_decay: float = 0.9, **kwargs) -> None:
    super().__init__(**kwargs)
    bn_args = dict(global_bn=global_bn, batch_norm_decay=batch_norm_decay)
    self.conv2d_fixed_padding = Conv2dFixedPadding(2 * filters, kernel_size=3, strides=strides)  # int() inside
    self.batch_norm_relu = BatchNormRelu(**bn_args)
    mid_dim = resnet_shapes.sk_attention_width(filters, sk_ratio, min_dim)
    self.conv2d_0 = keras.layers.Conv2D(mid_dim, kernel_size=1, use_bias=False,
                                        kernel_initializer=_conv_initializer())
    self.batch_norm_relu_1 = BatchNormRelu(**bn_args)
    self.conv2d_1 = keras.layers.Conv2D(int(2 * filters), kernel_size=1, use_bias=False,
                                        kernel_initializer=_conv_initializer())

  def call(self, inputs: tf.Tensor, training: typing.Optional[bool] = None) -> tf.Tensor:
    streams = self.batch_norm_relu(self.conv2d_fixed_padding(inputs), training=training)
    streams = tf.stack(tf.split(streams, 2, axis=-1))  # [2, B, H, W, C]
    global_features = tf.reduce_mean(tf.reduce_sum(streams, axis=0), [1, 2], keepdims=True)
    global_features = self.batch_norm_relu_1(self.conv2d_0(global_features), training=training)
    mixing = tf.stack(tf.split(self.conv2d_1(global_features), 2, axis=-1))
    mixing = tf.nn.softmax(mixing, axis=0)
    return tf.reduce_sum(streams * mixing, axis=0)


class SE_Layer(keras.layers.Layer):  # pylint: disable=invalid-name
  """Squeeze-excitation: channel gates from a bottleneck MLP on globally pooled features.

  The bottleneck has max(1, filters * se_ratio) channels, where `filters` is the block's base width (not its
  4x output), as in the SimCLRv2 code.
  """

  def __init__(self, filters: float, se_ratio: float, **kwargs) -> None:
    super().__init__(**kwargs)
    self.se_reduce = keras.layers.Conv2D(resnet_shapes.se_width(filters, se_ratio), kernel_size=1,
                                         use_bias=True, kernel_initializer=_conv_initializer())
    self.se_expand = None

  def build(self, input_shape: tuple) -> None:
    self.se_expand = keras.layers.Conv2D(input_shape[-1], kernel_size=1, use_bias=True,
                                         kernel_initializer=_conv_initializer(),
                                         trainable=self.trainable)  # frozen before it was built: stay so

  def call(self, inputs: tf.Tensor, training: typing.Optional[bool] = None) -> tf.Tensor:
    se_tensor = tf.reduce_mean(inputs, [1, 2], keepdims=True)
    se_tensor = self.se_expand(tf.nn.relu(self.se_reduce(se_tensor)))
    return tf.sigmoid(se_tensor) * inputs


def _projection_shortcut(filters_out: float, strides: int, resnet_d: bool, bn_args: dict) -> list[keras.layers.Layer]:
  """Layers of the shortcut of a group's first block: 1x1 conv (ResNet-D: avg-pool, then 1x1) + BN."""
  layers = []
  if resnet_d:
    if strides > 1:
      layers.append(keras.layers.ZeroPadding2D(((0, 1), (0, 1))))  # fixed padding for a 2x2 pool
    layers.append(keras.layers.AveragePooling2D(pool_size=2, strides=strides,
                                                padding='same' if strides == 1 else 'valid'))
    layers.append(Conv2dFixedPadding(filters_out, kernel_size=1, strides=1))
  else:
    layers.append(Conv2dFixedPadding(filters_out, kernel_size=1, strides=strides))
  layers.append(BatchNormRelu(relu=False, **bn_args))
  return layers


class ResidualBlock(Layer):
  """Basic block of ResNet-18/34: two 3x3 convolutions."""

  def __init__(self, filters: float, strides: int, use_projection: bool = False, sk_ratio: float = 0.0,
               se_ratio: float = 0.0, global_bn: bool = True, batch_norm_decay: float = 0.9, **kwargs) -> None:
    super().__init__(**kwargs)
    bn_args = dict(global_bn=global_bn, batch_norm_decay=batch_norm_decay)
    self.shortcut_layers = (
        _projection_shortcut(filters, strides, sk_ratio > 0, bn_args) if use_projection else [])
    self.conv2d_bn_layers = [
        Conv2dFixedPadding(filters, kernel_size=3, strides=strides),
        BatchNormRelu(**bn_args),
        Conv2dFixedPadding(filters, kernel_size=3, strides=1),
        BatchNormRelu(relu=False, init_zero=True, **bn_args),
    ]
    self.se_layer = SE_Layer(filters, se_ratio) if se_ratio > 0 else None

  def call(self, inputs: tf.Tensor, training: typing.Optional[bool] = None) -> tf.Tensor:
    shortcut = inputs
    for layer in self.shortcut_layers:
      shortcut = layer(shortcut, training=training)
    for layer in self.conv2d_bn_layers:
      inputs = layer(inputs, training=training)
    if self.se_layer is not None:
      inputs = self.se_layer(inputs, training=training)
    return tf.nn.relu(inputs + shortcut)


class BottleneckBlock(Layer):
  """Bottleneck block of ResNet-50 and deeper: 1x1, 3x3 (or selective kernel), 1x1 with 4x filters."""

  def __init__(self, filters: float, strides: int, use_projection: bool = False, sk_ratio: float = 0.0,
               se_ratio: float = 0.0, global_bn: bool = True, batch_norm_decay: float = 0.9, **kwargs) -> None:
    super().__init__(**kwargs)
    bn_args = dict(global_bn=global_bn, batch_norm_decay=batch_norm_decay)
    self.projection_layers = (
        _projection_shortcut(4 * filters, strides, sk_ratio > 0, bn_args) if use_projection else [])
    layers = [Conv2dFixedPadding(filters, kernel_size=1, strides=1), BatchNormRelu(**bn_args)]
    if sk_ratio > 0:
      layers.append(SK_Conv2D(filters, strides, sk_ratio, **bn_args))
    else:
      layers += [Conv2dFixedPadding(filters, kernel_size=3, strides=strides), BatchNormRelu(**bn_args)]
    layers += [Conv2dFixedPadding(4 * filters, kernel_size=1, strides=1),
               BatchNormRelu(relu=False, init_zero=True, **bn_args)]
    if se_ratio > 0:
      layers.append(SE_Layer(filters, se_ratio))
    self.conv_relu_dropblock_layers = layers

  def call(self, inputs: tf.Tensor, training: typing.Optional[bool] = None) -> tf.Tensor:
    shortcut = inputs
    for layer in self.projection_layers:
      shortcut = layer(shortcut, training=training)
    for layer in self.conv_relu_dropblock_layers:
      inputs = layer(inputs, training=training)
    return tf.nn.relu(inputs + shortcut)


class BlockGroup(Layer):
  """`blocks` blocks; the first one strides and has the projection shortcut. `filters` is the group's base
  width times the width multiplier, a float as in the authors' code: each layer truncates its own multiple."""

  def __init__(self, filters: float, block_fn: type[keras.layers.Layer], blocks: int, strides: int,
               block_args: dict, **kwargs) -> None:
    super().__init__(**kwargs)
    self.layers = [block_fn(filters, strides, use_projection=True, **block_args)]
    self.layers += [block_fn(filters, 1, **block_args) for _ in range(1, blocks)]

  def call(self, inputs: tf.Tensor, training: typing.Optional[bool] = None) -> tf.Tensor:
    for layer in self.layers:
      inputs = layer(inputs, training=training)
    return inputs


class Resnet(Layer):
  """ResNet v1 trunk + global average pool: images [B, H, W, 3] -> representation [B, C].

  `call(images, training, return_endpoints=True)` returns the dict of `resnet_shapes.ENDPOINTS` instead.
  `fine_tune_after_block` = k >= 0 freezes everything up to block group k (0 = the stem): those layers are
  not trainable (their BatchNorms use the moving statistics) and no gradient flows into them.
  """

  def __init__(self, block_fn: type[keras.layers.Layer], layers: typing.Sequence[int], width_multiplier: float,
               cifar_stem: bool = False, sk_ratio: float = 0.0, se_ratio: float = 0.0, global_bn: bool = True,
               batch_norm_decay: float = 0.9, fine_tune_after_block: int = -1, **kwargs) -> None:
    super().__init__(**kwargs)
    self.fine_tune_after_block = fine_tune_after_block
    bn_args = dict(global_bn=global_bn, batch_norm_decay=batch_norm_decay)

    width = lambda filters: resnet_shapes.channels(filters, width_multiplier)
    stem = []
    if cifar_stem:
      stem += [Conv2dFixedPadding(width(64), kernel_size=3, strides=1), BatchNormRelu(**bn_args)]
    else:
      if sk_ratio > 0:  # ResNet-D stem: three 3x3 convolutions instead of one 7x7.
        stem += [Conv2dFixedPadding(width(64) // 2, kernel_size=3, strides=2), BatchNormRelu(**bn_args),
                 Conv2dFixedPadding(width(64) // 2, kernel_size=3, strides=1), BatchNormRelu(**bn_args),
                 Conv2dFixedPadding(width(64), kernel_size=3, strides=1)]
      else:
        stem += [Conv2dFixedPadding(width(64), kernel_size=7, strides=2)]
      stem += [BatchNormRelu(**bn_args), keras.layers.MaxPooling2D(pool_size=3, strides=2, padding='same')]
    self.initial_conv_relu_max_pool = stem
    # Index of the stem layer whose output is the `initial_conv` endpoint (before the stem's last BN-ReLU).
    self._initial_conv_index = len(stem) - (2 if cifar_stem else 3)

    block_args = dict(sk_ratio=sk_ratio, se_ratio=se_ratio, **bn_args)
    self.block_groups = [
        BlockGroup(filters, block_fn, blocks, strides, block_args, name=f'block_group{i + 1}')
        for i, (filters, blocks, strides) in enumerate(
            zip(resnet_shapes.group_widths(width_multiplier), layers, (1, 2, 2, 2)))
    ]
    # Freeze the stem (k = 0) and the block groups up to k, as the authors' code does for fine-tuning.
    if fine_tune_after_block >= 0:
      for layer in stem + self.block_groups[:fine_tune_after_block]:
        layer.trainable = False

  def call(self, inputs: tf.Tensor, training: typing.Optional[bool] = None,
           return_endpoints: bool = False) -> typing.Union[tf.Tensor, dict[str, tf.Tensor]]:
    endpoints = {}
    net = inputs
    for i, layer in enumerate(self.initial_conv_relu_max_pool):
      net = layer(net, training=training)
      if i == self._initial_conv_index:
        endpoints['initial_conv'] = net
    endpoints['initial_max_pool'] = net
    for i, group in enumerate(self.block_groups):
      if i == self.fine_tune_after_block:
        net = tf.stop_gradient(net)
      net = group(net, training=training)
      endpoints[f'block_group{i + 1}'] = net
    if self.fine_tune_after_block == 4:
      net = tf.stop_gradient(net)
    net = tf.reduce_mean(net, [1, 2])
    endpoints['final_avg_pool'] = net
    return endpoints if return_endpoints else net


def resnet(resnet_depth: int, width_multiplier: float = 1, cifar_stem: bool = False, sk_ratio: float = 0.0,
           se_ratio: float = 0.0, global_bn: bool = True, batch_norm_decay: float = 0.9,
           fine_tune_after_block: int = -1, name: str = 'resnet') -> Resnet:
  """Builds the SimCLR ResNet encoder.

  Args:
    resnet_depth: 18 or 34 (basic blocks), 50, 101, 152 or 200 (bottleneck blocks).
    width_multiplier: channel multiplier; the paper's 1, 2, 3, 4, or a fraction such as 0.25 for CPUs.
    cifar_stem: 3x3 stride-1 stem without max-pool, for images of 32 px or less.
    sk_ratio: selective-kernel attention ratio (SimCLRv2 uses 0.0625); > 0 also selects ResNet-D.
    se_ratio: squeeze-excitation ratio; 0 disables it.
    global_bn: synchronise BatchNorm statistics across replicas.
    batch_norm_decay: BatchNorm moving-average momentum.
    fine_tune_after_block: -1 trains everything; k in 0..4 freezes up to block group k (0 = stem).
    name: Keras layer name.

  Returns:
    A `Resnet` layer; output width is int(512 * w) (depth 18/34) or int(2048 * w).
  """
  block, layers = resnet_shapes.ARCHITECTURES[resnet_depth]
  block_fn = ResidualBlock if block == 'basic' else BottleneckBlock
  return Resnet(block_fn, layers, width_multiplier, cifar_stem=cifar_stem, sk_ratio=sk_ratio,
                se_ratio=se_ratio, global_bn=global_bn, batch_norm_decay=batch_norm_decay,
                fine_tune_after_block=fine_tune_after_block, name=name)
