"""Heads, SimCLRModel, its dtype policy scope and its checkpoint."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import config as config_lib
import model

TINY = dict(resnet_depth=18, width_multiplier=0.25, cifar_stem=True)


def test_nonlinear_projection_head_layers_and_selector():
  head = model.ProjectionHead('nonlinear', num_layers=3, out_dim=24, ft_proj_selector=1, global_bn=False,
                              batch_norm_decay=0.9)
  x = tf.random.normal([6, 40])
  out, selected = head(x, training=False)
  assert out.shape == (6, 24) and selected.shape == (6, 40)
  shapes = {v.path.split('/', 1)[1]: tuple(v.shape) for v in head.trainable_variables}
  # Middle layers: Dense(input width) without bias + BN with beta (its bias); last: Dense(out_dim) + BN, no beta.
  assert shapes['nl_0/dense/kernel'] == (40, 40) and shapes['nl_1/dense/kernel'] == (40, 40)
  assert shapes['nl_2/dense/kernel'] == (40, 24)
  assert sum(p.endswith('beta') for p in shapes) == 2 and sum(p.endswith('gamma') for p in shapes) == 3
  assert not any(p.endswith('dense/bias') for p in shapes)
  # Selector 1 is the first layer's output after its ReLU.
  first = tf.nn.relu(head.linear_layers[0](x, training=False))
  np.testing.assert_allclose(selected.numpy(), first.numpy(), rtol=1e-6)
  assert np.all(selected.numpy() >= 0)


def test_linear_and_none_heads():
  x = tf.random.normal([4, 12])
  bn = dict(global_bn=False, batch_norm_decay=0.9)
  out, selected = model.ProjectionHead('linear', 1, 5, 0, **bn)(x, training=False)
  assert out.shape == (4, 5)
  np.testing.assert_array_equal(selected.numpy(), x.numpy())
  out, selected = model.ProjectionHead('none', 0, 128, 0, **bn)(x, training=False)
  np.testing.assert_array_equal(out.numpy(), x.numpy())


@pytest.mark.parametrize('settings, message', [
    (dict(proj_head_mode='mlp'), 'proj_head_mode'), (dict(num_proj_layers=2, ft_proj_selector=3), 'ft_proj_selector'),
    (dict(proj_head_mode='none', ft_proj_selector=1), 'ft_proj_selector'), (dict(proj_out_dim=0), 'proj_out_dim')])
def test_projection_head_settings_that_build_no_head_are_refused(settings, message):
  with pytest.raises(config_lib.UsageError, match=message):
    model.SimCLRModel(3, config_lib.ModelConfig(**TINY, **settings))


def test_pretrain_model_splits_views_and_stops_supervised_gradient():
  net = model.SimCLRModel(7, config_lib.ModelConfig(**TINY))
  view = tf.random.uniform([3, 32, 32, 3])
  outputs = net(tf.concat([view, view], -1), training=False)
  assert set(outputs) == set(model.OUTPUT_KEYS)
  assert outputs['proj_head_output'].shape == (6, 128) and outputs['logits_sup'].shape == (6, 7)
  # Views go onto the batch axis as [view 1; view 2]: identical views give identical halves.
  np.testing.assert_allclose(outputs['proj_head_output'][:3].numpy(), outputs['proj_head_output'][3:].numpy(),
                             rtol=1e-5, atol=1e-6)
  with tf.GradientTape(persistent=True) as tape:
    outputs = net(tf.random.uniform([2, 32, 32, 6]), training=True)
    sup = tf.reduce_sum(outputs['logits_sup'])
    con = tf.reduce_sum(outputs['proj_head_output'][0])  # (a batch-normalised column sums to 0)
  encoder_vars = net.resnet_model.trainable_variables
  assert all(g is None for g in tape.gradient(sup, encoder_vars))  # linear eval cannot shape the encoder
  assert any(g is not None and np.any(g.numpy()) for g in tape.gradient(con, encoder_vars))
  assert all(g is not None for g in tape.gradient(sup, net.supervised_head.trainable_variables))


def test_finetune_model_trains_encoder_through_supervised_head():
  net = model.SimCLRModel(4, config_lib.ModelConfig(ft_proj_selector=1, **TINY), train_mode='finetune')
  with tf.GradientTape() as tape:
    outputs = net(tf.random.uniform([2, 32, 32, 3]), training=True)
    loss = tf.reduce_sum(outputs['logits_sup'] ** 2)
  grads = tape.gradient(loss, net.resnet_model.trainable_variables)
  assert all(g is not None for g in grads)
  # Selector 1: the supervised head reads the first projection layer (width 128 here).
  assert net.supervised_head.linear_layer.dense.kernel.shape == (128, 4)


@pytest.mark.parametrize('endpoint, width', [('final_avg_pool', 128), ('block_group3', 64)])
def test_linear_eval_model_trains_only_its_head_on_the_chosen_endpoint(endpoint, width):
  """The paper's linear evaluation: nothing but the linear head is trainable, BatchNorm stays in inference mode
  (outputs do not depend on the rest of the batch), spatial endpoints are average-pooled."""
  net = model.SimCLRModel(5, config_lib.ModelConfig(linear_eval_endpoint=endpoint, **TINY), train_mode='linear_eval')
  images = tf.random.uniform([4, 32, 32, 3])
  outputs = net(images, training=True)
  assert [v.path for v in net.trainable_variables] == [v.path for v in net.supervised_head.trainable_variables]
  assert net.supervised_head.linear_layer.dense.kernel.shape == (width, 5)
  alone = net(images[:1], training=True)  # batch statistics would change this row
  np.testing.assert_allclose(alone['logits_sup'][0], outputs['logits_sup'][0], rtol=1e-4, atol=1e-5)
  pooled = tf.reduce_mean(outputs[endpoint], [1, 2]) if outputs[endpoint].shape.rank == 4 else outputs[endpoint]
  head = net.supervised_head.linear_layer.dense
  np.testing.assert_allclose(outputs['logits_sup'], pooled @ head.kernel + head.bias, rtol=1e-4, atol=1e-5)


def test_distill_student_is_the_finetune_network():
  student = model.SimCLRModel(4, config_lib.ModelConfig(**TINY), train_mode='distill')
  student(tf.zeros([1, 32, 32, 3]))
  finetune = model.SimCLRModel(4, config_lib.ModelConfig(**TINY), train_mode='finetune')
  finetune(tf.zeros([1, 32, 32, 3]))
  assert [v.shape for v in student.trainable_variables] == [v.shape for v in finetune.trainable_variables]


def test_dtype_policy_scope():
  with model.dtype_policy('mixed_bfloat16'):
    net = model.SimCLRModel(3, config_lib.ModelConfig(**TINY), train_mode='finetune')
    outputs = net(tf.zeros([2, 32, 32, 3]), training=False)
  assert net.resnet_model.compute_dtype == 'bfloat16' and keras.config.dtype_policy().name == 'float32'
  assert all(v.dtype == 'float32' for v in net.weights)
  assert all(v.dtype == tf.float32 for v in outputs.values() if v is not None)
  with pytest.raises(ValueError, match='precision'):
    with model.dtype_policy('float8'):
      pass


def test_model_without_supervised_head_and_validation():
  net = model.SimCLRModel(None, config_lib.ModelConfig(lineareval_while_pretraining=False, **TINY))
  outputs = net(tf.zeros([1, 32, 32, 6]), training=False)
  assert outputs['logits_sup'] is None and net.supervised_head is None
  with pytest.raises(ValueError, match='fine_tune_after_block'):
    model.SimCLRModel(10, config_lib.ModelConfig(fine_tune_after_block=2, **TINY))
  with pytest.raises(ValueError, match='train_mode'):
    model.SimCLRModel(10, config_lib.ModelConfig(**TINY), train_mode='selfsupervised')
  with pytest.raises(ValueError, match='linear_eval_endpoint'):
    model.SimCLRModel(10, config_lib.ModelConfig(linear_eval_endpoint='block_group5', **TINY), train_mode='linear_eval')
  with pytest.raises(ValueError, match='linear_eval freezes the whole encoder'):
    model.SimCLRModel(10, config_lib.ModelConfig(fine_tune_after_block=2, **TINY), train_mode='linear_eval')
  with pytest.raises(ValueError, match='multiple of 3'):
    net(tf.zeros([1, 32, 32, 4]))


def test_checkpoint_holds_every_variable_and_restores_encoder_only(tmp_path):
  """Layers kept in lists (blocks, heads) are checkpointed, BatchNorm moving statistics included."""
  def make(train_mode):
    net = model.SimCLRModel(3, config_lib.ModelConfig(**TINY), train_mode=train_mode)
    net(tf.random.uniform([4, 32, 32, 6 if train_mode == 'pretrain' else 3]), training=True)
    return net

  source = make('pretrain')
  path = tf.train.Checkpoint(model=source).write(str(tmp_path / 'ckpt'))
  saved = {name for name, _ in tf.train.list_variables(path) if name.startswith('model/')}
  assert len(saved) == len(source.variables)
  assert any('moving_mean' in name and 'block_groups_3' in name for name in saved)
  restored = make('pretrain')
  tf.train.Checkpoint(model=restored).read(path).assert_existing_objects_matched()
  for a, b in zip(source.variables, restored.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  # Fine-tuning restores the encoder and projection head, not the supervised head.
  finetune = make('finetune')
  parts = tf.train.Checkpoint(resnet_model=finetune.resnet_model, _projection_head=finetune._projection_head)
  tf.train.Checkpoint(model=parts).read(path).assert_existing_objects_matched()
  for a, b in zip(source.resnet_model.variables + source._projection_head.variables,
                  finetune.resnet_model.variables + finetune._projection_head.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert not np.array_equal(source.supervised_head.variables[0].numpy(),
                            finetune.supervised_head.variables[0].numpy())
