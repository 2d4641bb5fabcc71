"""Model weights in and out: a model file's weights into a model built for its network (`restore`, all or
nothing, for any file architecture.inspect read), this project's SavedModel export (also a TF Hub Reusable
SavedModel, with the authors' interface), and resuming from training checkpoints (damaged ones skipped).
"""

import typing

from absl import logging
import tensorflow as tf

import architecture
import model as model_lib
import progress
import rundir


def restore(model: model_lib.SimCLRModel, file: architecture.ModelFile, supervised_head: bool = True) -> int:
  """Places the file's weights into `model` (built for `file.architecture`), all or nothing.

  Every encoder and projection-head variable of the file goes to the variable with the same structural key
  and shape, and every such variable of the model gets one; `supervised_head` also restores the supervised
  head (else the model's stays as initialised). Returns the number of variables placed.
  """
  live = {key: variable for key, variable in architecture.model_variables(model).items()
          if supervised_head or not key.startswith(architecture.SUPERVISED_HEAD + '/')}
  parts = (architecture.ENCODER, architecture.PROJECTION_HEAD) + ((architecture.SUPERVISED_HEAD,) if supervised_head
                                                                  else ())
  wanted = {key for key in file.tensors if key.startswith(tuple(part + '/' for part in parts))}
  problems = [f'{key} is not in the model' for key in sorted(wanted - set(live))]
  problems += [f'the model\'s {key} is not in the file' for key in sorted(set(live) - wanted)]
  problems += [f'{key} has shape {file.tensors[key][1]} in the file, {tuple(live[key].shape)} in the model'
               for key in sorted(wanted & set(live)) if tuple(live[key].shape) != file.tensors[key][1]]
  if problems:
    raise architecture.ModelFileError(
        f'{file.path} does not fit the model: {problems[0]} ({len(problems)} difference(s)).')
  reader = tf.train.load_checkpoint(file.prefix)
  try:
    values = {key: reader.get_tensor(file.tensors[key][0]) for key in wanted}  # every read before any write
  except architecture.UNREADABLE as error:
    raise architecture.ModelFileError(f'{file.path} cannot be read ({error.__class__.__name__}: '
                         f'{str(error).splitlines()[0][:200]}).') from None
  for key in wanted:
    live[key].assign(values[key])
  return len(wanted)


# ------------------------------------------------------------------------------------------- a file's model


def as_file_config(cfg: 'config_lib.Config', file: architecture.ModelFile) -> 'config_lib.Config':
  """`cfg` that builds the file's network with its heads as they are (eval, export, embedding plot, teacher)."""
  return cfg.replace(**file.architecture.as_is_flags())


def load(cfg: 'config_lib.Config', strategy: tf.distribute.Strategy, file: architecture.ModelFile,
         role: str = 'Loaded') -> model_lib.SimCLRModel:
  """The model of a file with all its weights (heads included), for using it as it is; says what it loaded."""
  with strategy.scope():
    model = model_lib.build(as_file_config(cfg, file), file.architecture.num_classes or 1,
                            strategy.num_replicas_in_sync)
  count = restore(model, file, supervised_head=file.architecture.num_classes is not None)
  progress.status(f'{role} {file.describe()} ({count} variables).')
  return model


# ------------------------------------------------------------------------------------------- export


class ExportModule(tf.__internal__.tracking.AutoTrackable):
  """What a SavedModel export holds: `module(images, trainable=False)` -> dict of named endpoints.

  The interface of the SimCLR authors' released models (so code written for them works), a `serving_default`
  signature (so Keras 3's `keras.layers.TFSMLayer(path)` loads it), and TF Hub's Reusable SavedModel API:
  `variables`, `trainable_variables` and `regularization_losses` attributes and a `training` argument, so
  `hub.KerasLayer(path, trainable=True)` fine-tunes the encoder. `training`, when given, overrides
  `trainable` (both select batch statistics in BatchNorm and update its moving averages). Images: float32,
  float64 or uint8 (scaled to [0, 1]), `[B, H, W, 3]`, any size. (AutoTrackable, as Keras' own export uses:
  tf.Module reserves the `variables` names for properties that are not saved.)
  """

  INPUT_DTYPES = (tf.float32, tf.float64, tf.uint8)

  def __init__(self, model: model_lib.SimCLRModel) -> None:
    super().__init__()
    self.model = model
    self.variables = list(model.variables)
    self.trainable_variables = list(model.trainable_variables)
    self.regularization_losses = []  # weight decay is the optimizer's (LARS), not a loss of the model

  @tf.function
  def _forward(self, images, training):
    outputs = self.model(images, training=training)
    return {key: value for key, value in outputs.items() if value is not None}

  @tf.function
  def __call__(self, images, trainable=False, training=None):
    images = tf.cast(images, tf.float32) / 255.0 if images.dtype == tf.uint8 else tf.cast(images, tf.float32)
    return self._forward(images, trainable if training is None else training)

  def trace(self) -> typing.Callable[[tf.Tensor], dict]:
    """Traces every (dtype, trainable, training) the SavedModel answers; returns the serving function."""
    for dtype in self.INPUT_DTYPES:
      spec = tf.TensorSpec([None, None, None, 3], dtype, name='images')
      for trainable in (False, True):
        for training in (None, False, True):
          self.__call__.get_concrete_function(spec, trainable=trainable, training=training)
    spec = tf.TensorSpec([None, None, None, 3], tf.float32, name='images')
    return tf.function(lambda images: self(images, trainable=False), input_signature=[spec])


def export(model: model_lib.SimCLRModel, model_dir: str, step: int, keep: int = 1) -> str:
  """Writes model_dir's `saved_model/<step>/` atomically, computing in float32 (model.in_float32); keeps the
  newest `keep` exports; returns the path."""
  module = ExportModule(model_lib.in_float32(model))
  serving = module.trace()
  final = rundir.replace_export(rundir.export_path(model_dir, step),
                                lambda folder: tf.saved_model.save(module, folder,
                                                                   signatures={'serving_default': serving}))
  rundir.keep_newest_exports(model_dir, keep)
  logging.info('Exported SavedModel to %s', final)
  return final


# ------------------------------------------------------------------------------------------- training checkpoints


def restore_latest(checkpoint: tf.train.Checkpoint, model_dir: str) -> typing.Optional[str]:
  """Restores the newest readable checkpoint of model_dir into `checkpoint` (model and optimizer). One that
  cannot be read -- a data file truncated by a full disk or an interrupted copy -- is skipped with a warning
  naming it. Returns the restored path, None when there is no checkpoint; raises when none is readable."""
  paths = rundir.checkpoint_paths(model_dir)
  for path in reversed(paths):
    try:
      checkpoint.read(path).assert_existing_objects_matched().expect_partial()
      return path
    except architecture.UNREADABLE as error:
      logging.warning('Skipping checkpoint %s: it cannot be read (%s).', path, architecture.first_line(error))
    except (AssertionError, ValueError) as error:
      raise architecture.ModelFileError(
          f'{path} does not hold the model these flags build: resume with the flags of the run that wrote it '
          f'({architecture.first_line(error)}).') from None
  if paths:
    raise architecture.ModelFileError(
        f'None of the {len(paths)} checkpoint(s) in {model_dir} can be read (newest: {paths[-1]}); restore them from '
        'a copy, or move them away to train from step 0.')
  return None


def readable(path: str) -> bool:
  """Whether every tensor of a checkpoint can be read (a truncated data file fails here); warns if not."""
  try:
    reader = tf.train.load_checkpoint(path)
    for key in reader.get_variable_to_shape_map():
      reader.get_tensor(key)
  except architecture.UNREADABLE as error:
    logging.warning('Checkpoint %s cannot be read (%s).', path, architecture.first_line(error))
    return False
  return True


def read_training_checkpoint(model: model_lib.SimCLRModel, path: str) -> typing.Optional[int]:
  """Reads the model of a training checkpoint; returns its step, or None (with a warning) if it is unreadable."""
  try:
    tf.train.Checkpoint(model=model).read(path).assert_existing_objects_matched().expect_partial()
  except architecture.UNREADABLE as error:
    logging.warning('Skipping checkpoint %s: it cannot be read (%s).', path, architecture.first_line(error))
    return None
  except AssertionError as error:
    raise architecture.ModelFileError(
        f'{path} does not hold the model these flags build ({architecture.first_line(error)}).') from None
  return rundir.checkpoint_step(path)
