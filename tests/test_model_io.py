"""model_io: the authors' SavedModels and training checkpoints (../shared/fixtures/authors_tf2, written by their
own tf2 code) and this project's files, read into this project's model exactly; exports for TF Hub and Keras 3."""

import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import config as config_lib
import architecture
import model as model_lib
import model_io
import optimization
import rundir
from model_files import FIXTURE_NAMES, build, fixture, randomise, save_run, write_from_keys


@pytest.mark.parametrize('fmt', ['ckpt', 'saved_model'])
@pytest.mark.parametrize('name', FIXTURE_NAMES)
def test_authors_models_import_exactly(name, fmt):
  """Every endpoint of the authors' model for inputs.npy, from the imported weights, to 1e-4 of its largest value;
  the network read from the file is the one their flags.json says it was built with."""
  folder, flags, inputs, expected = fixture(name)
  file = architecture.inspect(os.path.join(folder, fmt))
  arch = file.architecture
  assert file.authors and file.kind == {'ckpt': 'training checkpoint', 'saved_model': 'SavedModel'}[fmt]
  assert file.step == 0
  assert (arch.resnet_depth, arch.width_multiplier, arch.sk_ratio, arch.num_proj_layers, arch.proj_out_dim,
          arch.num_classes, arch.ft_proj_selector, arch.cifar_stem, arch.se_ratio) == (
              flags['resnet_depth'], flags['width_multiplier'], flags['sk_ratio'], flags['num_proj_layers'],
              flags['proj_out_dim'], flags['num_classes'], flags['ft_proj_selector'], flags['image_size'] <= 32, 0.0)
  net = build(arch)
  placed = model_io.restore(net, file)
  assert placed == len(net.variables) == len(file.tensors)  # all of them, heads included
  outputs = net(inputs, training=False)
  assert set(expected) == set(model_lib.OUTPUT_KEYS)
  for key, value in expected.items():
    difference = np.abs(outputs[key].numpy() - value).max() / np.abs(value).max()
    assert difference < 1e-4, (key, difference)







def test_partial_or_foreign_files_stop_with_one_line_and_change_nothing(tmp_path):
  folder, _, inputs, _ = fixture('r18_cifar_pretrain')
  file = architecture.inspect(os.path.join(folder, 'saved_model'))
  net = build(file.architecture)
  variables = {key: v.numpy() for key, v in architecture.model_variables(net).items()}
  before = [v.numpy().copy() for v in net.variables]

  # A block without its second BatchNorm's moving variance: the model has a variable the file does not.
  partial = {k: v for k, v in variables.items()
             if k != 'resnet_model/block_groups/1/layers/0/conv2d_bn_layers/3/bn/moving_variance'}
  prefix = write_from_keys(partial, str(tmp_path / 'partial' / 'ckpt-1'))
  partial_file = architecture.inspect(prefix)
  with pytest.raises(architecture.ModelFileError, match='does not fit the model') as error:
    model_io.restore(net, partial_file)
  assert '\n' not in str(error.value) and 'moving_variance' in str(error.value)
  for a, b in zip(before, net.variables):
    np.testing.assert_array_equal(a, b.numpy())

  # The same, complete, restores (so the writer above is faithful).
  model_io.restore(net, architecture.inspect(write_from_keys(variables, str(tmp_path / 'whole' / 'ckpt-1'))))

  # Three block groups: not a ResNet.
  three = {k: v for k, v in variables.items() if not k.startswith('resnet_model/block_groups/3/')}
  with pytest.raises(architecture.ModelFileError, match='not a SimCLR model this project can build'):
    architecture.inspect(write_from_keys(three, str(tmp_path / 'three' / 'ckpt-1')))

  # Not a SimCLR model at all, a folder without a model, a path that does not exist, a file that is no checkpoint.
  dense = keras.layers.Dense(3)
  dense.build((None, 2))
  foreign = tf.train.Checkpoint(model=dense).write(str(tmp_path / 'foreign' / 'ckpt-1'))
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'text.index').write_text('hello')
  (tmp_path / 'notes.txt').write_text('hello')
  for path, message in ((foreign, 'is not a SimCLR model'), (str(tmp_path / 'empty'), 'holds no SavedModel'),
                        (str(tmp_path / 'nothing'), 'does not exist'),
                        (str(tmp_path / 'text'), 'not a readable TF2 checkpoint'),
                        (str(tmp_path / 'notes.txt'), 'is a file, not a checkpoint prefix'),
                        (foreign + '.index', f'is one file of the checkpoint {foreign}: pass that prefix')):
    with pytest.raises(architecture.ModelFileError, match=message) as error:
      architecture.inspect(path)
    assert '\n' not in str(error.value) and str(error.value).startswith(path)



@pytest.mark.parametrize('kwargs', [
    dict(resnet_depth=18, width_multiplier=0.125, cifar_stem=False, sk_ratio=0.0625, se_ratio=0.25,
         num_proj_layers=2, proj_out_dim=16, ft_proj_selector=1),
    dict(resnet_depth=50, width_multiplier=0.0625, cifar_stem=True, se_ratio=0.25, proj_head_mode='linear',
         proj_out_dim=24),
    # Width 0.1 has no one conv that tells it (6, 12, 25, 51 channels; 25, 51, 102, 204 at the 4x outputs).
    dict(resnet_depth=50, width_multiplier=0.1, cifar_stem=True, se_ratio=0.25, num_proj_layers=1, proj_out_dim=8),
])
def test_this_projects_checkpoints_and_exports_read_back(tmp_path, kwargs):
  """Architectures the fixtures do not cover (basic blocks with SK + SE and a 2-layer head read from its layer 1,
  a CIFAR-stem bottleneck ResNet with SE and a linear head, width 0.1), from this project's training checkpoint
  and export."""
  keras.utils.set_random_seed(1)
  net = model_lib.SimCLRModel(7, config_lib.ModelConfig(global_bn=False, **kwargs), train_mode='finetune')
  size = 32 if kwargs['cifar_stem'] else 64
  images = tf.random.stateless_uniform([3, size, size, 3], seed=[3, 4])
  net(images, training=False)
  randomise(net, 5, stddev=0.2, variance_offset=1.5)
  expected = net(images, training=False)
  save_run(net, tmp_path / 'run', 12, {'ft_proj_selector': kwargs.get('ft_proj_selector', 0), 'train_mode': 'finetune'})
  exported = model_io.export(net, str(tmp_path / 'run'), 12)
  for path in (str(tmp_path / 'run'), exported):
    file = architecture.inspect(path)
    assert not file.authors and file.step == 12
    arch = file.architecture
    for name, value in kwargs.items():
      assert getattr(arch, name) == value or (name == 'proj_head_mode' and arch.num_proj_layers == 1), name
    assert arch.num_classes == 7
    restored = build(arch, image_size=size)
    model_io.restore(restored, file)
    outputs = restored(images, training=False)
    for key in model_lib.OUTPUT_KEYS:
      np.testing.assert_allclose(outputs[key].numpy(), expected[key].numpy(), rtol=1e-5, atol=1e-5, err_msg=key)


def test_a_linear_eval_head_on_an_earlier_block_is_found_in_the_export(tmp_path):
  net = model_lib.SimCLRModel(4, config_lib.ModelConfig(
      resnet_depth=18, width_multiplier=0.25, cifar_stem=True, global_bn=False, linear_eval_endpoint='block_group3'),
                              train_mode='linear_eval')
  net(tf.zeros([1, 32, 32, 3]), training=False)
  for v in net.supervised_head.variables:
    v.assign(tf.random.stateless_normal(v.shape, seed=[1, 2]))
  file = architecture.inspect(model_io.export(net, str(tmp_path), 3))
  assert (file.architecture.linear_eval_endpoint, file.architecture.num_classes) == ('block_group3', 4)


def test_export_takes_float32_float64_and_uint8_and_serves_keras_3(tmp_path):
  net = model_lib.SimCLRModel(5, config_lib.ModelConfig(
      resnet_depth=18, width_multiplier=0.125, cifar_stem=True, global_bn=False), train_mode='finetune')
  pixels = np.random.default_rng(0).integers(0, 256, size=(2, 20, 24, 3)).astype(np.uint8)
  floats = pixels.astype(np.float32) / 255.0
  net(floats, training=False)
  expected = net(floats, training=False)
  path = model_io.export(net, str(tmp_path), 0)
  loaded = tf.saved_model.load(path)
  for images in (floats, floats.astype(np.float64), pixels):
    outputs = loaded(images, trainable=False)
    assert set(outputs) == set(model_lib.OUTPUT_KEYS)
    np.testing.assert_allclose(outputs['logits_sup'].numpy(), expected['logits_sup'].numpy(), rtol=1e-5, atol=1e-6)
  served = keras.layers.TFSMLayer(path, call_endpoint='serving_default')(floats)
  np.testing.assert_allclose(served['final_avg_pool'].numpy(), expected['final_avg_pool'].numpy(), rtol=1e-5,
                             atol=1e-6)
  # `training` (TF Hub) overrides `trainable` (the authors' name): batch statistics, not the moving ones.
  batch_stats = loaded(floats, trainable=False, training=True)['final_avg_pool'].numpy()
  assert np.abs(batch_stats - expected['final_avg_pool'].numpy()).max() > 1e-3
  np.testing.assert_allclose(loaded(floats, trainable=True)['final_avg_pool'].numpy(), batch_stats, rtol=1e-5)
  assert len(loaded.variables) == len(net.variables) and len(loaded.trainable_variables) == len(
      net.trainable_variables) and list(loaded.regularization_losses) == []


def test_export_is_a_reusable_savedmodel_for_tf_hub(tmp_path):
  """hub.KerasLayer(trainable=True) in a tf-keras model: the encoder's weights are its trainable weights, all get
  gradients, and one optimizer step changes them."""
  import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top  (test-only requirements)
  import tf_keras  # pylint: disable=g-import-not-at-top
  net = model_lib.SimCLRModel(5, config_lib.ModelConfig(
      resnet_depth=18, width_multiplier=0.125, cifar_stem=True, global_bn=False), train_mode='finetune')
  net(tf.zeros([1, 16, 16, 3]), training=False)
  for v in net.trainable_variables:  # no zero-initialised gammas: every layer gets a gradient
    v.assign(tf.random.stateless_normal(v.shape, seed=[len(v.path), 7], mean=0.5, stddev=0.2))
  path = model_io.export(net, str(tmp_path), 0)
  layer = hub.KerasLayer(path, trainable=True, arguments={'trainable': False}, output_key='final_avg_pool')
  outer = tf_keras.Sequential([layer, tf_keras.layers.Dense(2)])
  images = tf.random.stateless_uniform([4, 16, 16, 3], seed=[5, 6])
  outer(images)
  encoder = {id(v) for v in layer.trainable_weights}
  assert len(layer.trainable_weights) == len(net.trainable_variables) > 60
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(tf.square(outer(images, training=True)))
  grads = tape.gradient(loss, outer.trainable_weights)
  encoder_grads = [(g, v) for g, v in zip(grads, outer.trainable_weights) if id(v) in encoder]
  kernels = [(g, v) for g, v in encoder_grads if 'kernel' in v.name and len(v.shape) == 4]
  assert all(g is not None for g, _ in encoder_grads) and kernels
  before = [v.numpy().copy() for _, v in kernels]
  tf_keras.optimizers.SGD(0.1).apply_gradients(zip(grads, outer.trainable_weights))
  assert all(np.abs(g.numpy()).max() > 0 for g, _ in kernels)
  assert all(np.abs(v.numpy() - b).max() > 0 for (_, v), b in zip(kernels, before))


def _save_two_checkpoints(tmp_path):
  net = model_lib.SimCLRModel(3, config_lib.ModelConfig(
      resnet_depth=18, width_multiplier=0.125, cifar_stem=True, global_bn=False), train_mode='finetune')
  net(tf.zeros([1, 16, 16, 3]), training=False)
  step = tf.Variable(0, dtype=tf.int64)
  checkpoint = tf.train.Checkpoint(model=net, step=step)
  manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=3, checkpoint_name='ckpt')
  for number, value in ((4, 1.0), (8, 2.0)):
    net.supervised_head.variables[0].assign(tf.fill(net.supervised_head.variables[0].shape, value))
    step.assign(number)
    manager.save(checkpoint_number=number)
  return net, checkpoint, step


def test_a_truncated_latest_checkpoint_is_skipped_and_none_readable_is_an_error(tmp_path, caplog):
  net, checkpoint, step = _save_two_checkpoints(tmp_path)
  assert [os.path.basename(p) for p in rundir.checkpoint_paths(str(tmp_path))] == ['ckpt-4', 'ckpt-8']
  for number in (8, 4):
    data = tf.io.gfile.glob(str(tmp_path / f'ckpt-{number}.data-*'))[0]
    with open(data, 'r+b') as f:
      f.truncate(os.path.getsize(data) // 2)
    if number == 8:
      with caplog.at_level(logging.WARNING):
        restored = model_io.restore_latest(checkpoint, str(tmp_path))
      assert restored.endswith('ckpt-4') and int(step.numpy()) == 4
      assert np.all(net.supervised_head.variables[0].numpy() == 1.0)
      assert 'ckpt-8' in caplog.text and 'cannot be read' in caplog.text
  with pytest.raises(architecture.ModelFileError, match='None of the 2 checkpoint'):
    model_io.restore_latest(checkpoint, str(tmp_path))
  assert model_io.restore_latest(checkpoint, str(tmp_path / 'none')) is None


@pytest.mark.parametrize('precision', ['float32', 'mixed_float16'])
def test_read_training_checkpoint_gives_the_global_step(tmp_path, precision):
  """The step of a checkpoint as training writes it (named by the step), also under mixed_float16, where the
  optimizer's counter sits inside the loss-scale optimizer; an unreadable one is skipped (None)."""
  with model_lib.dtype_policy(precision):
    net = model_lib.SimCLRModel(3, config_lib.ModelConfig(
      resnet_depth=18, width_multiplier=0.125, cifar_stem=True, global_bn=False), train_mode='finetune')
    net(tf.zeros([1, 16, 16, 3]), training=False)
  optimizer = optimization.build_optimizer('lars', 0.1, precision=precision)
  optimizer.build(net.trainable_variables)
  optimizer.iterations.assign(7)
  net.supervised_head.trainable_variables[0].assign(tf.ones_like(net.supervised_head.trainable_variables[0]))
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=net, optimizer=optimizer), str(tmp_path),
                                       max_to_keep=1, checkpoint_name='ckpt', step_counter=optimizer.iterations)
  path = manager.save(checkpoint_number=int(optimizer.iterations.numpy()))
  with model_lib.dtype_policy(precision):
    restored = model_lib.SimCLRModel(3, config_lib.ModelConfig(
      resnet_depth=18, width_multiplier=0.125, cifar_stem=True, global_bn=False), train_mode='finetune')
    restored(tf.zeros([1, 16, 16, 3]), training=False)
  assert model_io.read_training_checkpoint(restored, path) == 7
  np.testing.assert_array_equal(restored.supervised_head.trainable_variables[0].numpy(), 1.0)
  data = tf.io.gfile.glob(path + '.data-*')[0]
  with open(data, 'r+b') as f:
    f.truncate(10)
  assert model_io.read_training_checkpoint(restored, path) is None


