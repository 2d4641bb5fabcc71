"""How the weights move: step counts, the learning-rate schedule, the optimizer, and the one weight-decay rule
that training applies and evaluation reports.

Weight decay, as in the SimCLR authors' code: BatchNorm parameters are never decayed; with LARS the optimizer
decays every other variable except biases and the supervised head (LARS also leaves those out of its trust
ratio), and the supervised head's kernel gets an explicit L2 term in the loss instead; with any other optimizer
the explicit L2 term covers every variable but the BatchNorm ones. `EXCLUDED_FROM_LARS` and
`explicitly_decayed` are that rule; training's `train/weight_decay` and evaluation's `eval/regularization_loss`
are both `weight_decay_loss`.
"""

import math
import typing

import keras
import tensorflow as tf

import config as config_lib
import lars_optimizer

# Keras variable paths (regexes) of what the rule above names.
BATCH_NORM = r'batch_normalization'
BIAS = r'bias'
SUPERVISED_HEAD = r'head_supervised'
EXCLUDED_FROM_LARS = (BATCH_NORM, BIAS, SUPERVISED_HEAD)
# What a time budget's schedule counts before its steps are fixed: no decay yet.
UNKNOWN_TOTAL_STEPS = 2 ** 31 - 1


# ------------------------------------------------------------------------------------------- step counts


def train_steps(num_examples: int, batch_size: int, epochs: float = 0, steps: int = 0) -> int:
  """Training steps: `steps` if given, else the authors' `epochs * num_examples // batch_size + 1`."""
  if steps:
    return int(steps)
  if not epochs:
    raise ValueError('Either train_steps or train_epochs must be positive.')
  return int(num_examples * epochs // batch_size + 1)


def warmup_steps(warmup_epochs: float, num_examples: int, batch_size: int) -> int:
  """Warmup steps as the authors' code counts them: round(warmup_epochs * num_examples // batch_size)."""
  return int(round(warmup_epochs * num_examples // batch_size))


def peak_learning_rate(base_learning_rate: float, batch_size: int, scaling: str) -> float:
  """'linear': base * B / 256; 'sqrt': base * sqrt(B) (SimCLR appendix B.1: better for small batches)."""
  if scaling not in config_lib.LR_SCALINGS:
    raise ValueError(f'learning_rate_scaling must be one of {config_lib.LR_SCALINGS}, got {scaling!r}.')
  return base_learning_rate * (batch_size / 256. if scaling == 'linear' else math.sqrt(batch_size))


# ------------------------------------------------------------------------------------------- schedule


@keras.saving.register_keras_serializable(package='simclr')
class WarmUpAndDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warmup from 0 to `peak` over `warmup_steps`, then decay to 0 at `total_steps`: cosine (SimCLR
  appendix B.1) or linear (Li, Yumer and Ramanan 2020: the robust choice under a fixed time budget).

  A warmup as long as training or longer rises all run, as in the authors' schedule. `total_steps` is a
  variable: a run with a time budget sets it once the step's speed is measured (`set_total_steps`); until then
  only the warmup's first steps run, which do not depend on it.
  """

  def __init__(self, peak: float, warmup_steps: int, total_steps: int, decay: str = 'cosine',
               name: str = 'WarmUpAndDecay') -> None:
    if decay not in config_lib.LR_DECAYS:
      raise ValueError(f'learning_rate_decay must be one of {config_lib.LR_DECAYS}, got {decay!r}.')
    if warmup_steps < 0 or total_steps < 1:
      raise ValueError(f'warmup_steps must be >= 0 and total_steps >= 1, got {warmup_steps} and {total_steps}.')
    self.peak = float(peak)
    self.warmup_steps = int(warmup_steps)
    self.decay = decay
    self.name = name
    self._total_steps = tf.Variable(float(total_steps), trainable=False, dtype=tf.float32, name='total_steps')

  @property
  def total_steps(self) -> int:
    return int(self._total_steps.numpy())

  def set_total_steps(self, total_steps: int) -> None:
    self._total_steps.assign(float(total_steps))

  def __call__(self, step: typing.Union[int, tf.Tensor]) -> tf.Tensor:
    step = tf.cast(step, tf.float32)
    warmup = float(self.warmup_steps)
    rising = self.peak * step / warmup if self.warmup_steps else tf.constant(self.peak)
    progress = tf.clip_by_value((step - warmup) / tf.maximum(self._total_steps - warmup, 1.0), 0.0, 1.0)
    if self.decay == 'cosine':
      decayed = self.peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
    else:
      decayed = self.peak * (1.0 - progress)
    return tf.where(step < warmup, rising, decayed)

  def get_config(self) -> dict:
    return {'peak': self.peak, 'warmup_steps': self.warmup_steps, 'total_steps': self.total_steps,
            'decay': self.decay, 'name': self.name}


def schedule(optim: 'config_lib.OptimConfig', num_examples: int, total_steps: typing.Optional[int] = None
             ) -> WarmUpAndDecay:
  """The schedule of `optim` for a split of `num_examples`: its step count (`total_steps` when a time budget
  gave one; until it does, a budget's schedule counts `UNKNOWN_TOTAL_STEPS`, so its first steps -- warmup, or
  the peak rate -- are what they will be)."""
  warmup = warmup_steps(optim.warmup_epochs, num_examples, optim.train_batch_size)
  if total_steps is None:
    total_steps = (UNKNOWN_TOTAL_STEPS if optim.train_seconds else
                   train_steps(num_examples, optim.train_batch_size, optim.train_epochs, optim.train_steps))
  return WarmUpAndDecay(peak_learning_rate(optim.learning_rate, optim.train_batch_size, optim.learning_rate_scaling),
                        warmup, total_steps, optim.learning_rate_decay)


# ------------------------------------------------------------------------------------------- optimizer


def build_optimizer(name: str, learning_rate: typing.Union[float, keras.optimizers.schedules.LearningRateSchedule],
                    momentum: float = 0.9, weight_decay: float = 0.0, precision: str = 'float32'
                    ) -> keras.optimizers.Optimizer:
  """The optimizer the paper's flags name; only LARS applies weight decay itself (the module's rule).

  Under mixed_float16 it is wrapped in Keras' dynamic `LossScaleOptimizer`: gradients of the scaled loss
  are unscaled before the update, and a step with Inf/NaN gradients is skipped and halves the scale. Train
  steps call `optimizer.scale_loss(loss)` (the identity for the others).
  """
  if name == 'lars':
    optimizer = lars_optimizer.LARSOptimizer(learning_rate, momentum=momentum, weight_decay=weight_decay,
                                             exclude_from_weight_decay=EXCLUDED_FROM_LARS)
  elif name == 'momentum':
    optimizer = keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=True)
  elif name == 'adam':
    optimizer = keras.optimizers.Adam(learning_rate)
  else:
    raise ValueError(f'optimizer must be one of {config_lib.OPTIMIZERS}, got {name!r}.')
  if precision == 'mixed_float16':
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def explicitly_decayed(variables: typing.Sequence[tf.Variable], optimizer_name: str) -> list:
  """The variables the explicit L2 term covers: with LARS the supervised head's kernel (LARS decays the rest),
  with any other optimizer every variable but BatchNorm's."""
  matches = lambda v, pattern: lars_optimizer.path_matches(v.path, (pattern,))
  if optimizer_name == 'lars':
    return [v for v in variables if matches(v, SUPERVISED_HEAD) and not matches(v, BIAS)]
  return [v for v in variables if not matches(v, BATCH_NORM)]


def weight_decay_loss(variables: typing.Sequence[tf.Variable], weight_decay: float, optimizer_name: str
                      ) -> tf.Tensor:
  """`weight_decay * sum(||w||^2 / 2)` over `explicitly_decayed(variables, optimizer_name)` (float32 scalar)."""
  chosen = explicitly_decayed(variables, optimizer_name)
  if not chosen or not weight_decay:
    return tf.constant(0.0)
  return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in chosen])
