"""run.py at scale: replica equivalence of the full pretrain step, multi-worker training, what the TPU path
needs, mixed precision and XLA.

Two replicas run on the two logical CPU devices conftest.py creates; multi-worker runs two local processes.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import config as config_lib
import data as data_lib
import model as model_lib
import run
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 16


def step_config(**overrides):
  values = dict(width_multiplier=0.25, image_size=16, train_batch_size=BATCH, train_steps=10, warmup_epochs=0,
                learning_rate=1.0, weight_decay=1e-4, precision='float32')  # not the machine's 'auto' choice
  return config_lib.Config.defaults(**{**values, **overrides})


def one_step(cfg, strategy, initial_weights, images, labels):
  """One run.py train step on `strategy` (the batch split across its replicas) from `initial_weights`.

  Returns (metrics, gradients summed over replicas, weights after the update): the gradients are captured
  where the optimizer receives them.
  """
  with strategy.scope():
    model, optimizer, _ = train.build_training(cfg, strategy, num_classes=10, num_examples=1000)
    captured = [tf.Variable(tf.zeros_like(v), trainable=False,
                            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                for v in model.trainable_variables]
  for variable, value in zip(model.weights, initial_weights):
    variable.assign(value)
  apply_gradients = optimizer.apply_gradients

  def capturing_apply_gradients(grads_and_vars):
    grads_and_vars = list(grads_and_vars)
    assert len(grads_and_vars) == len(captured)  # every variable has a gradient in pretraining
    summed = tf.distribute.get_replica_context().all_reduce('SUM', [g for g, _ in grads_and_vars])
    for slot, grad in zip(captured, summed):
      slot.assign(grad)
    return apply_gradients(grads_and_vars)

  optimizer.apply_gradients = capturing_apply_gradients
  step = train.make_train_step(cfg.optim, cfg.run.train_mode, model, optimizer, strategy)

  @tf.function
  def distributed_step(images, labels):
    values = strategy.run(step, args=(images, labels))
    return {name: strategy.reduce('MEAN', value, axis=None) for name, value in values.items()}

  values = distributed_step(data_lib.split_batch(strategy, images), data_lib.split_batch(strategy, labels))
  return ({k: float(v) for k, v in values.items()}, [c.numpy() for c in captured],
          [(v.path, v.numpy()) for v in model.weights])


@pytest.fixture(scope='module')
def batch_and_weights():
  rng = np.random.default_rng(0)
  images = tf.constant(rng.uniform(size=(BATCH, 16, 16, 6)), tf.float32)
  labels = tf.one_hot(rng.integers(0, 10, BATCH), 10)
  keras.utils.set_random_seed(0)
  model = model_lib.build(step_config(), 10)
  for variable in model.weights:  # non-trivial BatchNorm parameters and statistics, not just ones and zeros
    if 'batch_normalization' in variable.path:
      variable.assign(variable + tf.random.uniform(variable.shape, 0.0, 0.5))
  return images, labels, [v.numpy() for v in model.weights]


@pytest.fixture(scope='module')
def one_replica(batch_and_weights):
  return one_step(step_config(), tf.distribute.get_strategy(), *_weights_first(batch_and_weights))


def _weights_first(batch_and_weights):
  images, labels, weights = batch_and_weights
  return weights, images, labels


def _max_relative_error(expected, actual):
  """max |a - e| / max |e| per tensor: robust to elements that are ~0 in both."""
  return max(np.max(np.abs(a - e)) / max(np.max(np.abs(e)), 1e-12) for e, a in zip(expected, actual))


def test_two_replicas_with_global_bn_equal_one_replica(one_replica, two_replica_strategy, batch_and_weights):
  """Same loss, gradients and updated weights (LARS + weight decay) as one replica on the whole batch.

  Tolerances: float32 sums in a different order (2 partial sums + an all-reduce; synchronized BN computes
  E[x^2] - E[x]^2 where the fused kernel uses a two-pass variance), compounded through ~20 layers of backprop.
  Measured here: 1.4e-7 relative on the loss, 1.1e-5 of each tensor's largest gradient, 9e-5 on updated
  weights; asserted with ~10x margin. Dropping replica 1's label offset in NT-Xent, or BatchNorm
  synchronization (next test), moves the gradients by > 100% instead. This equivalence is a float32 one: in
  bfloat16 (measured on a CPU that emulates it) one replica's gradients differ from float32's by a median 22% of
  each tensor's largest value and two replicas' from one's by 17%, while the loss agrees to 0.05%; bfloat16
  training is checked by its loss (test_mixed_bfloat16_step_is_close_to_float32) and by learning
  (test_run.test_distillation_step_teaches_the_student_the_teachers_rule).
  """
  values1, grads1, weights1 = one_replica
  values2, grads2, weights2 = one_step(step_config(global_bn=True), two_replica_strategy,
                                       *_weights_first(batch_and_weights))
  for name in ('train/total_loss', 'train/contrast_loss', 'train/supervised_loss', 'train/weight_decay',
               'train/contrast_acc', 'train/supervised_acc'):
    np.testing.assert_allclose(values2[name], values1[name], rtol=1e-5, err_msg=name)
  assert _max_relative_error(grads1, grads2) < 2e-4
  assert len(weights1) == len(weights2)
  for (path, expected), (_, actual) in zip(weights1, weights2):  # same creation order; Keras numbers names
    # Every variable, BatchNorm moving statistics included, after the LARS update.
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=5e-5, err_msg=path)  # TF 2.16: 1.7e-5


def test_two_replicas_without_global_bn_differ(one_replica, two_replica_strategy, batch_and_weights):
  """Per-replica BatchNorm normalizes each half-batch on its own statistics: a different function, which is
  what lets replicas "cheat" the contrastive task (google-research/simclr#103). The difference is real."""
  values1, grads1, _ = one_replica
  values2, grads2, _ = one_step(step_config(global_bn=False), two_replica_strategy,
                                *_weights_first(batch_and_weights))
  assert abs(values2['train/contrast_loss'] - values1['train/contrast_loss']) > 1e-3
  assert _max_relative_error(grads1, grads2) > 1e-2


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  try:
    for s in sockets:
      s.bind(('127.0.0.1', 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


@contextlib.contextmanager
def _two_workers(tmp_path, *command):
  """Two processes `python <command>` with a 2-worker TF_CONFIG on free local ports, their output in files (a
  full pipe would block one worker and stall the collectives); killed at the end if still running."""
  try:
    ports = _free_ports(2)
  except OSError as error:
    pytest.skip(f'no local ports: {error}')
  cluster = {'worker': [f'127.0.0.1:{p}' for p in ports]}
  workers, logs = [], [tmp_path / f'worker_{task}.log' for task in range(2)]
  for task in range(2):
    env = dict(os.environ, TF_CONFIG=json.dumps({'cluster': cluster, 'task': {'type': 'worker', 'index': task}}))
    with open(logs[task], 'w') as log:
      workers.append(subprocess.Popen([sys.executable, *command], env=env, cwd=ROOT, stdout=log,
                                      stderr=subprocess.STDOUT))
  try:
    yield workers, logs
  finally:
    for worker in workers:
      if worker.poll() is None:
        worker.kill()
        worker.wait()


@pytest.mark.multiworker
def test_two_workers_train_in_lockstep_and_only_the_chief_writes(shapes_data_dir, tmp_path):
  """MultiWorkerMirroredStrategy from TF_CONFIG, 2 processes on 127.0.0.1, through run.py's main."""
  model_dir, out_dir = tmp_path / 'model', tmp_path / 'out'
  out_dir.mkdir()
  flags = [f'--data_dir={shapes_data_dir}', f'--model_dir={model_dir}', '--width_multiplier=0.25',
           '--image_size=16', '--train_batch_size=16', '--eval_batch_size=64', '--eval_steps=1', '--train_steps=4',
           '--checkpoint_steps=2', '--warmup_epochs=0', '--linear_eval=False']
  with _two_workers(tmp_path, os.path.join(ROOT, 'tests', 'multiworker_main.py'), str(out_dir), *flags) as (
      workers, logs):
    for worker in workers:
      worker.wait(timeout=300)
  outputs = [log.read_text() for log in logs]
  for task, (worker, output) in enumerate(zip(workers, outputs)):
    assert worker.returncode == 0, f'worker {task} failed:\n{output[-4000:]}'
  assert 'MultiWorkerMirroredStrategy over 2 workers, 2 replica(s)' in outputs[0]

  # Lockstep: the same weights on both workers (all-reduced updates) after the 4 steps.
  weights = [np.load(out_dir / f'worker_{task}.npz') for task in range(2)]
  assert len(weights[0].files) == len(weights[1].files) > 50
  for name in weights[0].files:
    np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)
  assert json.loads((model_dir / 'result.json').read_text())['global_step'] == 4

  # Only the chief (worker 0) writes: its checkpoints, one events file, one export; nothing from worker 1.
  assert sorted(p.name for p in model_dir.glob('ckpt-*.index')) == ['ckpt-2.index', 'ckpt-4.index']
  assert len(list(model_dir.glob('events.out.tfevents.*'))) == 1
  assert [p.name for p in (model_dir / 'saved_model').iterdir()] == ['4']

  # Sharded input: the workers read disjoint halves of the split, together all of it.
  ids = [set(json.loads((out_dir / f'ids_{task}.json').read_text())) for task in range(2)]
  assert not ids[0] & ids[1]
  assert len(ids[0]) + len(ids[1]) == 5000 and abs(len(ids[0]) - len(ids[1])) <= 1


@pytest.mark.multiworker
def test_sigterm_to_one_worker_stops_both_at_the_same_step_with_a_checkpoint(shapes_data_dir, tmp_path):
  """Preemption of one worker of two: the stop flag is all-reduced before every step, so both stop after the same
  step and the chief writes its checkpoint; neither waits forever in a collective."""
  model_dir = tmp_path / 'model'
  flags = [f'--data_dir={shapes_data_dir}', f'--model_dir={model_dir}', '--width_multiplier=0.25', '--image_size=16',
           '--train_batch_size=16', '--train_steps=400', '--checkpoint_steps=200', '--warmup_epochs=0', '--mode=train']
  with _two_workers(tmp_path, os.path.join(ROOT, 'run.py'), *flags) as (workers, logs):
    deadline = time.monotonic() + 240
    while 'step 10/400' not in logs[0].read_text() and time.monotonic() < deadline:
      assert all(w.poll() is None for w in workers), [log.read_text()[-2000:] for log in logs]
      time.sleep(0.2)
    workers[1].send_signal(signal.SIGTERM)
    for worker in workers:
      worker.wait(timeout=120)
  outputs = [log.read_text() for log in logs]
  assert [w.returncode for w in workers] == [143, 143], outputs
  steps = [int(re.search(r'at step (\d+); checkpoint written', out).group(1)) for out in outputs]
  assert steps[0] == steps[1] and 10 <= steps[0] < 200
  assert "Stopped by another worker's signal" in outputs[0] and 'Stopped by SIGTERM' in outputs[1]
  assert sorted(p.name for p in model_dir.glob('ckpt-*.index')) == [f'ckpt-{steps[0]}.index']


# ------------------------------------------------------------------------------------------- TPU path


def test_use_tpu_builds_the_resolver_and_strategy_as_documented(monkeypatch):
  """No TPU here: the calls are recorded instead of made."""
  calls = []
  monkeypatch.setattr(tf.distribute.cluster_resolver, 'TPUClusterResolver',
                      lambda **kwargs: calls.append(('resolver', kwargs)) or 'resolver')
  monkeypatch.setattr(tf.config, 'experimental_connect_to_cluster', lambda r: calls.append(('connect', r)))
  monkeypatch.setattr(tf.tpu.experimental, 'initialize_tpu_system', lambda r: calls.append(('initialize', r)))

  class FakeTPUStrategy:
    num_replicas_in_sync = 8

    def __init__(self, resolver):
      calls.append(('strategy', resolver))

  monkeypatch.setattr(tf.distribute, 'TPUStrategy', FakeTPUStrategy)
  cfg = config_lib.Config.defaults(use_tpu=True, tpu_name='my-tpu', tpu_zone='europe-west4-a', gcp_project='proj')
  assert isinstance(run.build_strategy(cfg), FakeTPUStrategy)
  assert calls == [('resolver', {'tpu': 'my-tpu', 'zone': 'europe-west4-a', 'project': 'proj'}),
                   ('connect', 'resolver'), ('initialize', 'resolver'), ('strategy', 'resolver')]
  calls.clear()
  run.build_strategy(config_lib.Config.defaults(use_tpu=True, master='grpc://10.0.0.2:8470'))
  assert calls[0] == ('resolver', {'tpu': 'grpc://10.0.0.2:8470', 'zone': None, 'project': None})


def test_an_unreachable_tpu_is_one_line(monkeypatch):
  def unreachable(**kwargs):  # what TPUClusterResolver raises when the GCE metadata server does not answer
    raise OSError('<urlopen error [Errno -2] Name or service not known>')

  monkeypatch.setattr(tf.distribute.cluster_resolver, 'TPUClusterResolver', unreachable)
  with pytest.raises(config_lib.UsageError) as error:
    run.build_strategy(config_lib.Config.defaults(use_tpu=True, tpu_name='nonexistent'))
  assert str(error.value).startswith("--use_tpu: cannot reach TPU 'nonexistent' (OSError: <urlopen error")
  assert '--tpu_name=local' in str(error.value) and '\n' not in str(error.value)


def test_train_step_compiles_with_xla_and_matches(batch_and_weights, one_replica):
  """XLA is the compiler TPUs run: the whole forward/backward pass compiling means every op has an XLA kernel
  and every shape is static. It computes the same step (float32: loss 1e-5, weights 5e-5 absolute)."""
  values, _, weights = one_step(step_config(jit_compile=True), tf.distribute.get_strategy(),
                                *_weights_first(batch_and_weights))
  np.testing.assert_allclose(values['train/total_loss'], one_replica[0]['train/total_loss'], rtol=1e-5)
  for (path, expected), (_, actual) in zip(one_replica[2], weights):
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=5e-5, err_msg=path)  # TF 2.16: 1.7e-5


def test_training_batches_have_static_shapes(shapes_data_dir):
  """TPUs need every training batch full and its shape known when the step is compiled."""
  source = data_lib.load_source(data_lib.EMBEDDED_DATASET, shapes_data_dir)
  for train_mode, channels in (('pretrain', 6), ('finetune', 3)):
    dataset = data_lib.build_dataset(source, 'train', 24, config_lib.DataConfig(image_size=16), is_training=True,
                                     train_mode=train_mode)
    images, labels = dataset.element_spec
    assert images.shape.as_list() == [24, 16, 16, channels]
    assert labels.shape.as_list() == [24, 10]


# ------------------------------------------------------------------------------------------- precision


def test_mixed_bfloat16_step_is_close_to_float32(batch_and_weights, one_replica):
  """bf16 keeps 8 significant bits (relative rounding 2^-9 per op); BatchNorm, NT-Xent and softmax stay in
  float32, so the loss moves far less than the 1% asserted (measured here: 0.03%)."""
  cfg = step_config(precision='mixed_bfloat16')
  model = model_lib.build(cfg, 10)
  conv = next(layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Conv2D))  # pylint: disable=protected-access
  assert conv.compute_dtype == 'bfloat16' and conv.kernel.dtype == 'float32'
  outputs = model(batch_and_weights[0], training=False)
  assert all(v.dtype == tf.float32 for v in outputs.values() if v is not None)
  assert keras.config.dtype_policy().name == 'float32'  # the policy scope was left
  values, _, _ = one_step(cfg, tf.distribute.get_strategy(), *_weights_first(batch_and_weights))
  for name in ('train/total_loss', 'train/contrast_loss', 'train/supervised_loss'):
    np.testing.assert_allclose(values[name], one_replica[0][name], rtol=1e-2, err_msg=name)


def test_mixed_float16_loss_scaling_skips_overflowing_steps(batch_and_weights):
  """An overflowing float16 step changes no weight and halves the loss scale; the next one trains."""
  images, labels, initial = batch_and_weights
  cfg = step_config(precision='mixed_float16')
  model, optimizer, _ = train.build_training(cfg, tf.distribute.get_strategy(), num_classes=10, num_examples=1000)
  assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
  for variable, value in zip(model.weights, initial):
    variable.assign(value)
  step = tf.function(train.make_train_step(cfg.optim, cfg.run.train_mode, model, optimizer, tf.distribute.get_strategy()))
  optimizer.dynamic_scale.assign(2.0 ** 60)  # the scaled gradients overflow float16 (max 65504)
  step(images, labels)
  assert int(optimizer.iterations.numpy()) == 0
  assert float(optimizer.dynamic_scale.numpy()) == 2.0 ** 59
  trainable = {id(v) for v in model.trainable_variables}  # (BatchNorm statistics move in the forward pass)
  for variable, value in zip(model.weights, initial):
    if id(variable) in trainable:
      np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
  optimizer.dynamic_scale.assign(2.0 ** 10)
  values = step(images, labels)
  assert int(optimizer.iterations.numpy()) == 1 and np.isfinite(float(values['train/total_loss']))
  changed = [not np.array_equal(v.numpy(), w) for v, w in zip(model.weights, initial) if id(v) in trainable]
  assert all(np.isfinite(v.numpy()).all() for v in model.weights) and sum(changed) > len(changed) // 2
