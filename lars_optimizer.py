"""LARS (You et al. 2017, "Large Batch Training of Convolutional Networks", arXiv:1708.03888) for Keras 3.

SimCLR trains with batches of up to 32k images, where plain momentum SGD is unstable; LARS scales each
variable's step by a trust ratio eeta * ||w|| / ||g||. The update rule is the one of the SimCLR authors' code
(so their learning rates carry over); classic momentum (the default), per variable:

    g <- g + weight_decay * w                     (unless excluded from weight decay)
    trust = eeta * ||w|| / ||g||                  (1 if either norm is 0, or excluded from adaptation)
    v <- momentum * v + lr * trust * g
    w <- w - v                                    (Nesterov: w <- w - (momentum * v + lr * trust * g))

With `classic_momentum=False` the trust ratio is computed on the momentum update instead:

    v <- momentum * v + g;  u = v  (Nesterov: u = momentum * v + g)
    trust = eeta * ||w|| / ||u||;  w <- w - lr * trust * u
"""

import re
import typing

import keras
import tensorflow as tf


def path_matches(path: str, patterns: typing.Optional[typing.Iterable[str]]) -> bool:
  """True if any regex in `patterns` is found in `path` (a Keras variable path such as 'dense/bias')."""
  return any(re.search(pattern, path) is not None for pattern in patterns or ())


@keras.saving.register_keras_serializable(package='simclr')
class LARSOptimizer(keras.optimizers.Optimizer):
  """Layer-wise Adaptive Rate Scaling with momentum and L2 weight decay folded into the gradient.

  Args:
    learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`.
    momentum: momentum coefficient.
    use_nesterov: Nesterov momentum.
    weight_decay: L2 coefficient added to the gradient (coupled decay, as in the paper).
    exclude_from_weight_decay: regexes; variables whose `path` matches one get no weight decay.
    exclude_from_layer_adaptation: regexes; variables whose `path` matches one use trust ratio 1. Defaults to
      `exclude_from_weight_decay`, as in the authors' code.
    classic_momentum: trust ratio on the gradient (True) or on the momentum update (False).
    eeta: LARS coefficient.
    **kwargs: other `keras.optimizers.Optimizer` arguments (clipnorm, name, ...), except `weight_decay`'s
      decoupled form, which this optimizer replaces.
  """

  def __init__(self, learning_rate: typing.Union[float, keras.optimizers.schedules.LearningRateSchedule],
               momentum: float = 0.9, use_nesterov: bool = False, weight_decay: float = 0.0,
               exclude_from_weight_decay: typing.Optional[typing.Sequence[str]] = None,
               exclude_from_layer_adaptation: typing.Optional[typing.Sequence[str]] = None,
               classic_momentum: bool = True, eeta: float = 0.001, name: str = 'LARSOptimizer', **kwargs) -> None:
    # The base class's `weight_decay` is decoupled (AdamW-style) decay; LARS folds decay into the gradient
    # before computing the trust ratio, so it must not also be given to the base class.
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    if momentum < 0:
      raise ValueError(f'momentum must be >= 0, got {momentum}.')
    if weight_decay is None or weight_decay < 0:
      raise ValueError(f'weight_decay must be >= 0, got {weight_decay}.')
    if eeta <= 0:
      raise ValueError(f'eeta must be > 0, got {eeta}.')
    self.momentum = momentum
    self.use_nesterov = use_nesterov
    self.lars_weight_decay = weight_decay
    self.classic_momentum = classic_momentum
    self.eeta = eeta
    self.weight_decay_exclusions = tuple(exclude_from_weight_decay or ())
    self.adaptation_exclusions = tuple(exclude_from_layer_adaptation or self.weight_decay_exclusions)

  def build(self, var_list: typing.Sequence[keras.Variable]) -> None:
    """Creates momentum slots and decides, from each variable's path, whether it is decayed/adapted.

    The decision is made here because under a tf.distribute strategy `update_step` receives the per-replica
    tf.Variable, which has no Keras path.
    """
    if self.built:
      return
    super().build(var_list)
    self._momentums = [self.add_variable_from_reference(v, 'momentum') for v in var_list]
    self._use_decay = [
        self.lars_weight_decay > 0 and not path_matches(v.path, self.weight_decay_exclusions)
        for v in var_list]
    self._use_adaptation = [not path_matches(v.path, self.adaptation_exclusions) for v in var_list]

  def _trust_ratio(self, w: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    w_norm = tf.norm(w, ord=2)
    u_norm = tf.norm(u, ord=2)
    return tf.where(w_norm > 0, tf.where(u_norm > 0, self.eeta * w_norm / u_norm, 1.0), 1.0)

  def update_step(self, gradient: tf.Tensor, variable: typing.Union[keras.Variable, tf.Variable],
                  learning_rate: tf.Tensor) -> None:
    index = self._get_variable_index(variable)
    v = self._momentums[index]
    w = variable.value if isinstance(variable, keras.Variable) else variable
    dtype = w.dtype
    lr = tf.cast(learning_rate, dtype)
    momentum = tf.cast(self.momentum, dtype)
    g = tf.cast(tf.convert_to_tensor(gradient), dtype)
    if self._use_decay[index]:
      g = g + tf.cast(self.lars_weight_decay, dtype) * w

    if self.classic_momentum:
      trust = self._trust_ratio(w, g) if self._use_adaptation[index] else 1.0
      scaled_lr = lr * trust
      next_v = momentum * v + scaled_lr * g
      update = momentum * next_v + scaled_lr * g if self.use_nesterov else next_v
    else:
      next_v = momentum * v + g
      update = momentum * next_v + g if self.use_nesterov else next_v
      trust = self._trust_ratio(w, update) if self._use_adaptation[index] else 1.0
      update = lr * trust * update
    self.assign(v, next_v)
    self.assign_sub(variable, update)

  def get_config(self) -> dict:
    config = super().get_config()
    config.update({
        'momentum': self.momentum,
        'use_nesterov': self.use_nesterov,
        'weight_decay': self.lars_weight_decay,
        'exclude_from_weight_decay': list(self.weight_decay_exclusions),
        'exclude_from_layer_adaptation': list(self.adaptation_exclusions),
        'classic_momentum': self.classic_momentum,
        'eeta': self.eeta,
    })
    return config
