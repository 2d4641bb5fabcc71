"""The encoder is the paper's: parameter counts, endpoints, zero-init, freezing, validation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import config as config_lib
import resnet
import resnet_shapes


def trainable_count(layer):
  return sum(int(np.prod(v.shape)) for v in layer.trainable_variables)


def build(depth, width=1, image_size=32, **kwargs):
  encoder = resnet.resnet(depth, width, **kwargs)
  encoder(tf.zeros([1, image_size, image_size, 3]), training=False)
  return encoder


@pytest.mark.parametrize('depth, width, cifar_stem, expected', [
    (50, 1, False, 23_508_032),  # torchvision's ResNet-50 minus its 1000-way fc (2,049,000)
    (18, 1, True, 11_173_056),  # CIFAR stem, projection shortcut in block group 1 as in the authors' code
])
def test_parameter_counts_exact(depth, width, cifar_stem, expected):
  assert trainable_count(build(depth, width, cifar_stem=cifar_stem)) == expected


# SimCLRv2 README, "Param (M)" column (encoder only; rounded to millions there).
@pytest.mark.slow
@pytest.mark.parametrize('depth, width, sk_ratio, millions', [
    (50, 1, 0.0625, 35), (50, 2, 0.0, 94), (101, 1, 0.0625, 65), (152, 3, 0.0625, 795)])
def test_parameter_counts_simclrv2_table(depth, width, sk_ratio, millions):
  count = trainable_count(build(depth, width, sk_ratio=sk_ratio))
  assert round(count / 1e6) == millions, count


@pytest.mark.parametrize('depth, width, cifar_stem, image_size, expected_shapes', [
    (18, 0.25, True, 32, {'initial_conv': (32, 32, 16), 'initial_max_pool': (32, 32, 16),
                          'block_group1': (32, 32, 16), 'block_group2': (16, 16, 32),
                          'block_group3': (8, 8, 64), 'block_group4': (4, 4, 128), 'final_avg_pool': (128,)}),
    (50, 0.25, False, 64, {'initial_conv': (32, 32, 16), 'initial_max_pool': (16, 16, 16),
                           'block_group1': (16, 16, 64), 'block_group2': (8, 8, 128),
                           'block_group3': (4, 4, 256), 'block_group4': (2, 2, 512), 'final_avg_pool': (512,)}),
])
def test_endpoints_and_fractional_widths(depth, width, cifar_stem, image_size, expected_shapes):
  encoder = resnet.resnet(depth, width, cifar_stem=cifar_stem)
  images = tf.random.uniform([2, image_size, image_size, 3])
  endpoints = encoder(images, training=False, return_endpoints=True)
  assert tuple(endpoints) == resnet_shapes.ENDPOINTS
  assert {k: tuple(v.shape[1:]) for k, v in endpoints.items()} == expected_shapes
  pooled = encoder(images, training=False)
  np.testing.assert_allclose(pooled.numpy(), endpoints['final_avg_pool'].numpy(), rtol=1e-6)
  assert pooled.shape[-1] == resnet_shapes.output_width(depth, width)


@pytest.mark.parametrize('depth, width, stem, groups, shortcuts', [
    # The authors' code passes 64 * w (a float) to Keras 2, which truncates; these are the channels of
    # ResNets their code wrote at width 0.1 (a bottleneck's output int(1024 * 0.1) = 102, not 4 * 25).
    (50, 0.1, 6, [6, 12, 25, 51], [25, 51, 102, 204]),
    (18, 0.3, 19, [19, 38, 76, 153], [19, 38, 76, 153]),
])
def test_fractional_widths_truncate_as_the_authors_code_does(depth, width, stem, groups, shortcuts):
  encoder = build(depth, width, image_size=64)
  main, shortcut = ('conv2d_bn_layers', 'shortcut_layers') if depth < 50 else (
      'conv_relu_dropblock_layers', 'projection_layers')
  assert encoder.initial_conv_relu_max_pool[0].conv2d.kernel.shape[-1] == stem
  firsts = [group.layers[0] for group in encoder.block_groups]
  assert [getattr(b, main)[0].conv2d.kernel.shape[-1] for b in firsts] == groups
  assert [getattr(b, shortcut)[0].conv2d.kernel.shape[-1] for b in firsts] == shortcuts
  assert resnet_shapes.output_width(depth, width) == shortcuts[-1]


def test_selective_kernels_need_even_widths():
  assert resnet_shapes.selective_kernels_fit(50, 0.25)
  assert not resnet_shapes.selective_kernels_fit(50, 0.1)  # int(2 * 25.6) = 51
  with pytest.raises(config_lib.UsageError, match='selective kernels need even widths'):
    config_lib.check_model(config_lib.ModelConfig(resnet_depth=50, width_multiplier=0.1, sk_ratio=0.0625), 'pretrain')
  assert resnet_shapes.selective_kernels_fit(18, 0.1)  # basic blocks have no selective kernel, only ResNet-D
  build(18, 0.1, sk_ratio=0.0625)


def test_odd_image_sizes_use_fixed_padding():
  # 7x7/2 conv on 33 px with fixed padding 3: floor((33 + 6 - 7) / 2) + 1 = 17; max-pool 'same': 9.
  endpoints = resnet.resnet(18, 0.25)(tf.zeros([1, 33, 33, 3]), training=False, return_endpoints=True)
  assert endpoints['initial_conv'].shape[1:3] == (17, 17)
  assert endpoints['initial_max_pool'].shape[1:3] == (9, 9)


@pytest.mark.parametrize('depth, sk_ratio, se_ratio', [(18, 0.0, 0.0), (50, 0.0625, 0.25)])
def test_last_batchnorm_of_each_block_starts_at_zero_gamma(depth, sk_ratio, se_ratio):
  encoder = build(depth, 0.25, sk_ratio=sk_ratio, se_ratio=se_ratio)
  blocks = [block for group in encoder.block_groups for block in group.layers]
  for block in blocks:
    inner = block.conv2d_bn_layers if depth < 50 else block.conv_relu_dropblock_layers
    last_bn = [layer for layer in inner if isinstance(layer, resnet.BatchNormRelu)][-1]
    np.testing.assert_array_equal(last_bn.bn.gamma.numpy(), 0.0)
  zero_gammas = [v for v in encoder.trainable_variables if v.path.endswith('gamma') and not np.any(v.numpy())]
  assert len(zero_gammas) == len(blocks) == sum(resnet_shapes.ARCHITECTURES[depth][1])
  # At initialisation a block without projection is relu(input): its residual branch is exactly 0.
  channels = 16 if depth < 50 else 64
  x = tf.random.normal([2, 8, 8, channels])
  np.testing.assert_allclose(blocks[1](x, training=False).numpy(), tf.nn.relu(x).numpy(), atol=1e-6)


def test_batchnorm_settings_follow_arguments():
  encoder = build(18, 0.25, cifar_stem=True, global_bn=False, batch_norm_decay=0.97)
  bns = [layer.bn for layer in _all_layers(encoder) if isinstance(layer, resnet.BatchNormRelu)]
  assert bns and all(bn.momentum == 0.97 and bn.epsilon == 1e-5 and not bn.synchronized for bn in bns)
  synced = build(18, 0.25, cifar_stem=True)
  assert all(layer.bn.synchronized for layer in _all_layers(synced) if isinstance(layer, resnet.BatchNormRelu))


def _all_layers(layer):
  found = []
  for sub in layer._flatten_layers(include_self=False, recursive=True):
    found.append(sub)
  return found


@pytest.mark.parametrize('after_block', [0, 2, 4])
def test_fine_tune_after_block_freezes_the_prefix(after_block):
  encoder = build(18, 0.25, cifar_stem=True, fine_tune_after_block=after_block)
  full = build(18, 0.25, cifar_stem=True)
  frozen_prefixes = ['block_group%d' % i for i in range(1, after_block + 1)]
  for v in encoder.trainable_variables:
    assert '/block_group' in v.path, f'stem variable {v.path} should be frozen'
    assert not any(f'/{p}/' in v.path for p in frozen_prefixes), v.path
  assert len(encoder.trainable_variables) < len(full.trainable_variables)

  # Frozen BatchNorms do not update their moving statistics in training mode.
  stem_bn = encoder.initial_conv_relu_max_pool[1].bn
  before = stem_bn.moving_mean.numpy().copy()
  images = tf.random.uniform([4, 32, 32, 3])
  with tf.GradientTape() as tape:
    out = encoder(images, training=True)
  np.testing.assert_array_equal(stem_bn.moving_mean.numpy(), before)
  grads = tape.gradient(out, encoder.trainable_variables)
  if after_block < 4:
    assert all(g is not None for g in grads) and any(np.any(g.numpy()) for g in grads)
  else:
    assert not encoder.trainable_variables or all(g is None for g in grads)


@pytest.mark.parametrize('settings, message', [
    (dict(resnet_depth=20), 'resnet_depth'), (dict(width_multiplier=0), 'width_multiplier'),
    (dict(width_multiplier=1 / 64), 'width_multiplier'), (dict(fine_tune_after_block=5), 'fine_tune_after_block')])
def test_encoders_that_cannot_be_built_are_refused(settings, message):
  with pytest.raises(config_lib.UsageError, match=message):
    config_lib.check_model(config_lib.ModelConfig(**settings), 'finetune')



@pytest.mark.parametrize('center, scale', [(True, True), (False, True)])
def test_fused_batchnorm_computes_what_keras_batchnorm_computes(center, scale):
  x = tf.random.normal([8, 5, 5, 6]) * 3 + 1
  ours = resnet.BatchNormalization(momentum=0.9, epsilon=1e-5, center=center, scale=scale)
  reference = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, center=center, scale=scale)
  for layer in (ours, reference):
    layer.build(x.shape)
    if scale:
      layer.gamma.assign(tf.linspace(0.5, 1.5, 6))
    if center:
      layer.beta.assign(tf.linspace(-1.0, 1.0, 6))
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    y_ours, y_ref = ours(x, training=True), reference(x, training=True)
    loss_ours, loss_ref = tf.reduce_sum(y_ours ** 3), tf.reduce_sum(y_ref ** 3)
  np.testing.assert_allclose(y_ours.numpy(), y_ref.numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(tape.gradient(loss_ours, x).numpy(), tape.gradient(loss_ref, x).numpy(),
                             rtol=1e-3, atol=1e-3)
  for a, b in zip(ours.trainable_variables, reference.trainable_variables):
    np.testing.assert_allclose(tape.gradient(loss_ours, a).numpy(), tape.gradient(loss_ref, b).numpy(),
                               rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(ours.moving_mean.numpy(), reference.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ours.moving_variance.numpy(), reference.moving_variance.numpy(), rtol=1e-5)
  np.testing.assert_allclose(ours(x, training=False).numpy(), reference(x, training=False).numpy(), rtol=1e-4,
                             atol=1e-5)


def test_fused_batchnorm_on_bfloat16_keeps_float32_statistics():
  """Under mixed_bfloat16 the fused kernel takes bf16 activations directly and keeps statistics in float32:
  same moving statistics as Keras' layer (which casts to float32) to float32 precision of the bf16 inputs,
  outputs within bf16 rounding (2^-8 relative)."""
  x = tf.cast(tf.random.normal([16, 6, 6, 8]) * 3 + 1, tf.bfloat16)
  ours = resnet.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype='mixed_bfloat16')
  reference = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype='mixed_bfloat16')
  y_ours, y_ref = ours(x, training=True), reference(x, training=True)
  assert y_ours.dtype == tf.bfloat16 and ours.moving_mean.dtype == 'float32'
  np.testing.assert_allclose(ours.moving_mean.numpy(), reference.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ours.moving_variance.numpy(), reference.moving_variance.numpy(), rtol=1e-4)
  np.testing.assert_allclose(tf.cast(y_ours, tf.float32).numpy(), tf.cast(y_ref, tf.float32).numpy(),
                             rtol=2e-2, atol=2e-2)
