"""Model files for the tests of architecture.py and model_io.py: the authors' fixtures, this project's model for
an Architecture, training checkpoints and hand-made object graphs."""

import json
import os

import keras
import numpy as np
import tensorflow as tf

import config as config_lib
import model as model_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, '..', 'shared', 'fixtures', 'authors_tf2')
FIXTURE_NAMES = ('r18_cifar_pretrain', 'r50_sk0_finetune', 'r50_sk1_pretrain')


def build(arch, train_mode=None, image_size=None):
  """This project's model for an Architecture, with its heads where the file has them, in float32."""
  flags = dict(arch.as_is_flags(), lineareval_while_pretraining=arch.num_classes is not None, precision='float32',
               image_size=image_size or (32 if arch.cifar_stem else 64))
  if train_mode is not None:
    flags['train_mode'] = train_mode
  return model_lib.build(config_lib.Config.defaults(**flags), arch.num_classes or 1)


def fixture(name):
  folder = os.path.join(FIXTURES, name)
  assert os.path.isdir(folder), f'the fixtures of the authors\' code are missing: {folder}'
  with open(os.path.join(folder, 'flags.json')) as f:
    flags = json.load(f)
  return folder, flags, np.load(os.path.join(folder, 'inputs.npy')), dict(np.load(os.path.join(folder, 'expected.npz')))


def randomise(net, seed, stddev=1.0, variance_offset=0.0):
  """Every variable of `net` (BatchNorm statistics included) to seeded normal values, so a variable read into
  the wrong place shows; `variance_offset` keeps moving variances positive."""
  for v in net.variables:
    v.assign(tf.random.stateless_normal(v.shape, seed=[len(v.path), seed], stddev=stddev) + (
        variance_offset if 'moving_variance' in v.path else 0.0))


def save_run(net, folder, step, flags=None):
  """`net` as a training checkpoint of step `step` in `folder` (with a flags.json if given)."""
  optimizer = keras.optimizers.SGD(0.1)
  optimizer.build(net.trainable_variables)
  optimizer.iterations.assign(step)
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=net, optimizer=optimizer), str(folder),
                                       max_to_keep=2, checkpoint_name='ckpt', step_counter=optimizer.iterations)
  manager.save(checkpoint_number=step)
  if flags is not None:
    (folder / 'flags.json').write_text(json.dumps(flags))


def write_from_keys(variables, path, root_extra=None):
  """A TF2 checkpoint whose object graph is `model/<structural key>` for each {key: variable} (lists as ListWrapper
  items, as the authors' code makes them)."""
  tree = {}
  for key, variable in variables.items():
    node = tree
    for part in key.split('/')[:-1]:
      node = node.setdefault(part, {})
    node[key.split('/')[-1]] = tf.Variable(variable)

  def trackable(node):
    if all(k.isdigit() for k in node):
      return [trackable(node[k]) if isinstance(node[k], dict) else node[k] for k in sorted(node, key=int)]
    obj = tf.Module()
    for k, v in node.items():
      setattr(obj, k, trackable(v) if isinstance(v, dict) else v)
    return obj

  return tf.train.Checkpoint(model=trackable(tree), **(root_extra or {})).write(path)
