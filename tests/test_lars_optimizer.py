"""LARS against a numpy transcription of the update rule: eager, tf.function, schedules, 2 replicas."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import lars_optimizer


def lars_reference(weights, grads_per_step, lrs, momentum, weight_decay, eeta, nesterov, classic, excluded):
  """Numpy LARS. weights: {name: array}; grads_per_step: list of {name: array}; excluded: set of names."""
  weights = {k: v.astype(np.float64).copy() for k, v in weights.items()}
  velocity = {k: np.zeros_like(v) for k, v in weights.items()}
  for grads, lr in zip(grads_per_step, lrs):
    for name, w in weights.items():
      g = grads[name].astype(np.float64)
      if name not in excluded:
        g = g + weight_decay * w

      def trust(u):
        if name in excluded:
          return 1.0
        w_norm, u_norm = np.linalg.norm(w), np.linalg.norm(u)
        return eeta * w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0

      if classic:
        scaled_lr = lr * trust(g)
        velocity[name] = momentum * velocity[name] + scaled_lr * g
        update = momentum * velocity[name] + scaled_lr * g if nesterov else velocity[name]
      else:
        velocity[name] = momentum * velocity[name] + g
        update = momentum * velocity[name] + g if nesterov else velocity[name]
        update = lr * trust(update) * update
      weights[name] = w - update
  return weights


def _problem(seed=0, steps=4):
  rng = np.random.default_rng(seed)
  weights = {'kernel': rng.normal(size=(3, 4)).astype(np.float32),
             'bias': rng.normal(size=(4,)).astype(np.float32)}
  grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in weights.items()} for _ in range(steps)]
  return weights, grads


def _keras_variables(weights):
  dense = keras.layers.Dense(4, name='dense')
  dense.build((None, 3))
  dense.kernel.assign(weights['kernel'])
  dense.bias.assign(weights['bias'])
  assert dense.kernel.path == 'dense/kernel' and dense.bias.path == 'dense/bias'
  return dense


@pytest.mark.parametrize('classic, nesterov', [(True, False), (True, True), (False, False), (False, True)])
@pytest.mark.parametrize('compiled', [False, True])
def test_matches_numpy_reference_with_excluded_bias(classic, nesterov, compiled):
  weights, grads = _problem()
  dense = _keras_variables(weights)
  # eeta large enough that the trust ratio visibly changes the step.
  opt = lars_optimizer.LARSOptimizer(0.1, momentum=0.9, use_nesterov=nesterov, weight_decay=0.01,
                                     exclude_from_weight_decay=['bias'], classic_momentum=classic, eeta=0.5)

  def apply(kernel_grad, bias_grad):
    opt.apply_gradients([(kernel_grad, dense.kernel), (bias_grad, dense.bias)])

  if compiled:
    opt.build([dense.kernel, dense.bias])  # variables must exist before tracing (a lazy build inside a tf.function fails)
    apply = tf.function(apply)
  for step_grads in grads:
    apply(tf.constant(step_grads['kernel']), tf.constant(step_grads['bias']))
  expected = lars_reference(weights, grads, [0.1] * len(grads), 0.9, 0.01, 0.5, nesterov, classic, {'bias'})
  np.testing.assert_allclose(dense.kernel.numpy(), expected['kernel'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dense.bias.numpy(), expected['bias'], rtol=1e-5, atol=1e-6)


def test_schedule_learning_rate_is_used_per_step():
  weights, grads = _problem(seed=1, steps=5)
  dense = _keras_variables(weights)
  schedule = keras.optimizers.schedules.PolynomialDecay(0.2, decay_steps=4, end_learning_rate=0.0)
  opt = lars_optimizer.LARSOptimizer(schedule, momentum=0.9, weight_decay=1e-3,
                                     exclude_from_weight_decay=['bias'], eeta=0.1)
  for step_grads in grads:
    opt.apply_gradients([(tf.constant(step_grads['kernel']), dense.kernel),
                         (tf.constant(step_grads['bias']), dense.bias)])
  lrs = [float(schedule(step)) for step in range(5)]
  expected = lars_reference(weights, grads, lrs, 0.9, 1e-3, 0.1, False, True, {'bias'})
  np.testing.assert_allclose(dense.kernel.numpy(), expected['kernel'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dense.bias.numpy(), expected['bias'], rtol=1e-5, atol=1e-6)


def test_layer_adaptation_exclusions_can_differ_from_weight_decay_exclusions():
  weights, grads = _problem(seed=2, steps=2)
  dense = _keras_variables(weights)
  opt = lars_optimizer.LARSOptimizer(0.1, weight_decay=0.0, exclude_from_weight_decay=['bias'],
                                     exclude_from_layer_adaptation=['kernel'], eeta=0.5)
  for step_grads in grads:
    opt.apply_gradients([(tf.constant(step_grads['kernel']), dense.kernel),
                         (tf.constant(step_grads['bias']), dense.bias)])
  # No decay anywhere (weight_decay=0); the kernel is plain momentum SGD, the bias is adapted.
  expected_kernel = lars_reference({'kernel': weights['kernel']}, grads, [0.1] * 2, 0.9, 0.0, 0.5, False, True,
                                   {'kernel'})['kernel']
  expected_bias = lars_reference({'bias': weights['bias']}, grads, [0.1] * 2, 0.9, 0.0, 0.5, False, True,
                                 set())['bias']
  np.testing.assert_allclose(dense.kernel.numpy(), expected_kernel, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dense.bias.numpy(), expected_bias, rtol=1e-5, atol=1e-6)


def test_zero_weights_use_trust_ratio_one():
  variable = keras.Variable(np.zeros(3, np.float32), name='w')
  opt = lars_optimizer.LARSOptimizer(0.5, momentum=0.0, eeta=0.001)
  opt.apply_gradients([(tf.constant([1.0, 2.0, 3.0]), variable)])
  np.testing.assert_allclose(variable.numpy(), [-0.5, -1.0, -1.5])


def test_two_replicas_apply_the_summed_gradient(two_replica_strategy):
  """Under MirroredStrategy each replica's update (from all-reduced gradients) matches the numpy rule."""
  strategy = two_replica_strategy
  weights, grads = _problem(seed=3, steps=3)
  with strategy.scope():
    dense = _keras_variables(weights)
    opt = lars_optimizer.LARSOptimizer(0.1, weight_decay=0.01, exclude_from_weight_decay=['bias'], eeta=0.5)
    opt.build([dense.kernel, dense.bias])

  @tf.function
  def step(kernel_grad, bias_grad):
    def replica_fn():
      # Each replica contributes half of the gradient; the optimizer all-reduces (sums) them.
      opt.apply_gradients([(kernel_grad / 2, dense.kernel), (bias_grad / 2, dense.bias)])
    strategy.run(replica_fn)

  for step_grads in grads:
    step(tf.constant(step_grads['kernel']), tf.constant(step_grads['bias']))
  expected = lars_reference(weights, grads, [0.1] * 3, 0.9, 0.01, 0.5, False, True, {'bias'})
  for replica_value in strategy.experimental_local_results(dense.kernel.value):
    np.testing.assert_allclose(replica_value.numpy(), expected['kernel'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dense.bias.numpy(), expected['bias'], rtol=1e-5, atol=1e-6)
  assert opt.iterations.numpy() == 3


def test_config_round_trip_and_validation():
  opt = lars_optimizer.LARSOptimizer(0.3, momentum=0.8, use_nesterov=True, weight_decay=1e-6,
                                     exclude_from_weight_decay=['bias', 'batch_normalization'], eeta=0.002,
                                     classic_momentum=False)
  clone = lars_optimizer.LARSOptimizer.from_config(opt.get_config())
  for key in ('momentum', 'use_nesterov', 'lars_weight_decay', 'weight_decay_exclusions',
              'adaptation_exclusions', 'classic_momentum', 'eeta'):
    assert getattr(clone, key) == getattr(opt, key), key
  assert clone.weight_decay is None  # no decoupled decay from the Keras base class on top of LARS's own
  assert keras.optimizers.deserialize(keras.optimizers.serialize(opt)).eeta == 0.002
  with pytest.raises(ValueError, match='weight_decay'):
    lars_optimizer.LARSOptimizer(0.1, weight_decay=-1.0)
  with pytest.raises(ValueError, match='eeta'):
    lars_optimizer.LARSOptimizer(0.1, eeta=0.0)


def test_path_matches():
  assert lars_optimizer.path_matches('simclr/head_supervised/linear_layer/dense/bias', ['bias'])
  assert not lars_optimizer.path_matches('resnet/conv2d/kernel', ['bias', 'batch_normalization'])
  assert not lars_optimizer.path_matches('anything', None)
