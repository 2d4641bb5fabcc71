"""optimization.py: step counts, the warmup-and-decay schedule (cosine and linear, its total steps set late),
the optimizer factory, and the one weight-decay rule of training and evaluation."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import config as config_lib
import lars_optimizer
import model
import optimization

TINY = dict(resnet_depth=18, width_multiplier=0.25, cifar_stem=True)


def reference_schedule(step, base_lr, num_examples, batch, warmup_epochs, total_steps, scaling, decay='cosine'):
  """The authors' WarmUpAndCosineDecay in plain Python; 'linear' decays on a straight line instead."""
  warmup = int(round(warmup_epochs * num_examples // batch))
  peak = base_lr * batch / 256 if scaling == 'linear' else base_lr * math.sqrt(batch)
  if step < warmup:
    return step / warmup * peak
  progress = min(step - warmup, total_steps - warmup) / (total_steps - warmup)
  return peak * 0.5 * (1 + math.cos(math.pi * progress)) if decay == 'cosine' else peak * (1 - progress)


def make_schedule(base_lr, num_examples, batch, warmup_epochs, epochs, steps, scaling, decay='cosine'):
  optim = config_lib.OptimConfig(learning_rate=base_lr, train_batch_size=batch, warmup_epochs=warmup_epochs,
                                 train_epochs=epochs or 0, train_steps=steps or 0, learning_rate_scaling=scaling,
                                 learning_rate_decay=decay)
  return optimization.schedule(optim, num_examples)


@pytest.mark.parametrize('decay', config_lib.LR_DECAYS)
@pytest.mark.parametrize('base_lr, num_examples, batch, warmup_epochs, epochs, steps, scaling', [
    (0.3, 50_000, 512, 10, 100, None, 'linear'),  # CIFAR-10 style
    (0.075, 1_281_167, 4096, 10, 100, None, 'sqrt'),  # ImageNet with sqrt scaling
    (0.1, 1000, 100, 0, None, 50, 'linear'),  # no warmup, explicit steps
    (1.0, 1000, 64, 2.5, 20, None, 'linear'),  # fractional warmup epochs
])
def test_schedule_matches_reference(base_lr, num_examples, batch, warmup_epochs, epochs, steps, scaling, decay):
  schedule = make_schedule(base_lr, num_examples, batch, warmup_epochs, epochs, steps, scaling, decay)
  total = optimization.train_steps(num_examples, batch, epochs, steps)
  assert schedule.total_steps == total
  probe = sorted({0, 1, schedule.warmup_steps - 1, schedule.warmup_steps, schedule.warmup_steps + 1,
                  total // 2, total - 1, total, total + 10} - {-1})
  got = [float(schedule(step)) for step in probe]
  want = [reference_schedule(s, base_lr, num_examples, batch, warmup_epochs, total, scaling, decay) for s in probe]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  clone = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
  assert float(clone(total // 3)) == pytest.approx(float(schedule(total // 3)))


def test_a_warmup_longer_than_training_rises_all_run_as_the_authors_schedule_does():
  schedule = make_schedule(1.0, 1000, 100, warmup_epochs=20, epochs=10, steps=None, scaling='linear')  # 200 > 101
  steps = range(0, schedule.total_steps + 1, 10)
  np.testing.assert_allclose([float(schedule(s)) for s in steps], [s / 200 * (100 / 256) for s in steps],
                             rtol=1e-5, atol=1e-8)


def test_a_time_budgets_schedule_decays_only_once_its_steps_are_fixed():
  """Before the budget fixes its steps the schedule is its warmup, then the peak (no decay); once fixed, the
  decay is laid over exactly those steps, in a tf.function traced before (the total is a variable)."""
  optim = config_lib.OptimConfig(learning_rate=0.5, train_batch_size=128, warmup_epochs=1, train_time='10m',
                                 learning_rate_decay='linear')
  schedule = optimization.schedule(optim, 1280)  # 10 warmup steps
  rate = tf.function(schedule)
  assert float(rate(5)) == pytest.approx(0.125) and float(rate(500)) == pytest.approx(0.25)
  schedule.set_total_steps(110)
  assert float(rate(60)) == pytest.approx(0.125) and float(rate(110)) == 0.0
  assert schedule.total_steps == 110


def test_step_counts_and_validation():
  assert optimization.train_steps(50_000, 128, epochs=8) == 3126  # the authors' epochs * n // batch + 1
  assert optimization.train_steps(50_000, 128, epochs=8, steps=7) == 7
  assert optimization.warmup_steps(2.5, 1000, 64) == 39
  with pytest.raises(ValueError, match='train_steps or train_epochs'):
    optimization.train_steps(100, 10)
  with pytest.raises(ValueError, match='learning_rate_scaling'):
    optimization.peak_learning_rate(0.1, 10, 'log')
  with pytest.raises(ValueError, match='learning_rate_decay'):
    optimization.WarmUpAndDecay(1.0, 0, 10, decay='step')


def test_build_optimizer():
  assert isinstance(optimization.build_optimizer('lars', 0.1, weight_decay=1e-6), lars_optimizer.LARSOptimizer)
  sgd = optimization.build_optimizer('momentum', 0.1, momentum=0.8)
  assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov and sgd.momentum == 0.8
  assert isinstance(optimization.build_optimizer('adam', 0.1), keras.optimizers.Adam)
  assert isinstance(optimization.build_optimizer('adam', 0.1, precision='mixed_float16'),
                    keras.optimizers.LossScaleOptimizer)
  with pytest.raises(ValueError, match='optimizer'):
    optimization.build_optimizer('rmsprop', 0.1)


def test_weight_decay_exclusions_on_real_variable_paths():
  """LARS decays conv/dense kernels only; the explicit L2 covers exactly the supervised head's kernel."""
  net = model.SimCLRModel(5, config_lib.ModelConfig(**TINY))
  net(tf.zeros([1, 32, 32, 6]), training=False)
  variables = net.trainable_variables
  opt = optimization.build_optimizer('lars', 0.1, weight_decay=1e-4)
  opt.build(variables)
  decayed = {v.path for v, flag in zip(variables, opt._use_decay) if flag}
  adapted = {v.path for v, flag in zip(variables, opt._use_adaptation) if flag}
  assert decayed == adapted
  assert decayed == {v.path for v in variables if v.path.endswith('kernel') and 'head_supervised' not in v.path}
  assert not any('gamma' in p or 'beta' in p or 'bias' in p for p in decayed)
  # Together, LARS and the explicit term cover every kernel once; nothing else.
  explicit = {v.path for v in optimization.explicitly_decayed(variables, 'lars')}
  assert explicit == {net.supervised_head.linear_layer.dense.kernel.path} and not explicit & decayed

  head_kernel = net.supervised_head.linear_layer.dense.kernel.numpy()
  np.testing.assert_allclose(optimization.weight_decay_loss(variables, 1e-4, 'lars').numpy(),
                             1e-4 * 0.5 * np.sum(head_kernel ** 2), rtol=1e-5)
  # Other optimizers: every non-BatchNorm variable, biases included (the authors' rule).
  non_bn = [v.numpy() for v in variables if 'batch_normalization' not in v.path]
  assert any(v.path.endswith('bias') for v in variables)
  np.testing.assert_allclose(optimization.weight_decay_loss(variables, 1e-4, 'momentum').numpy(),
                             1e-4 * 0.5 * sum(np.sum(w ** 2) for w in non_bn), rtol=1e-5)
  assert float(optimization.weight_decay_loss(variables, 0.0, 'momentum')) == 0.0
