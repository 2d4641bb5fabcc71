"""The SimCLR network: ResNet encoder f(.), projection head g(.) and supervised head, returning named endpoints.

Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations" (SimCLR) and
"Big Self-Supervised Models are Strong Semi-Supervised Learners" (SimCLRv2).
"""

import contextlib
import dataclasses
import typing

import keras
import tensorflow as tf

import config as config_lib
import data_util
import resnet
import resnet_shapes
import runtime

# Keys of the dict `SimCLRModel` returns (None where a head does not exist), the interface of the SimCLR
# authors' exported models.
OUTPUT_KEYS = resnet_shapes.ENDPOINTS + ('proj_head_input', 'proj_head_output', 'logits_sup')


class LinearLayer(keras.layers.Layer):
  """Dense layer, optionally followed by BatchNorm, which then replaces the bias (BN's beta plays its role).

  `num_classes` may be a callable of the input shape, so a head can keep its input width.
  """

  def __init__(self, num_classes: typing.Union[int, typing.Callable[[tuple], int]], use_bias: bool = True,
               use_bn: bool = False, zero_init: bool = False, global_bn: bool = True, batch_norm_decay: float = 0.9,
               **kwargs) -> None:
    super().__init__(**kwargs)
    self.num_classes = num_classes
    self.use_bias = use_bias
    self.use_bn = use_bn
    self.zero_init = zero_init
    self.dense = None
    self.bn_relu = (
        resnet.BatchNormRelu(relu=False, center=use_bias, global_bn=global_bn,
                             batch_norm_decay=batch_norm_decay) if use_bn else None)

  def build(self, input_shape: tuple) -> None:
    units = self.num_classes(input_shape) if callable(self.num_classes) else self.num_classes
    init = 'zeros' if self.zero_init else keras.initializers.RandomNormal(stddev=0.01)
    self.dense = keras.layers.Dense(units, kernel_initializer=init, use_bias=self.use_bias and not self.use_bn,
                                    trainable=self.trainable, name='dense')  # frozen before being built: stay so

  def call(self, inputs: tf.Tensor, training: typing.Optional[bool] = None) -> tf.Tensor:
    if inputs.shape.rank != 2:
      raise ValueError(f'LinearLayer expects [batch, features], got shape {inputs.shape}.')
    outputs = self.dense(inputs)
    if self.bn_relu is not None:
      outputs = self.bn_relu(outputs, training=training)
    return outputs


def selector_index(ft_proj_selector: int, num_proj_layers: int) -> int:
  """A projection-head layer as a position 0..num_proj_layers: negative ones count from the end, as in the
  authors' code (their -1, "the final layer", indexes the list of the head's input and layer outputs)."""
  return ft_proj_selector + num_proj_layers + 1 if ft_proj_selector < 0 else ft_proj_selector


class ProjectionHead(resnet.Layer):
  """The projection g(.) that NT-Xent is applied to (SimCLR section 2.1; SimCLRv2 section 2.2).

  'nonlinear': `num_layers` Dense+BN layers, ReLU on all but the last; the middle ones keep the input width,
  the last one has `out_dim` units and no bias. 'linear': one Dense(out_dim)+BN. 'none': identity.
  `call` returns `(proj_head_output, supervised_head_input)`, the latter being layer `ft_proj_selector` of
  [input, layer 1, ..., layer n]: SimCLRv2 fine-tunes from the middle of the head (selector 1); -1 is layer n.
  """

  def __init__(self, mode: str, num_layers: int, out_dim: int, ft_proj_selector: int, global_bn: bool,
               batch_norm_decay: float, **kwargs) -> None:
    """`num_layers`: the head's layers whatever its mode (ModelConfig.projection_layers); the settings are
    checked by config.check_model."""
    super().__init__(**kwargs)
    self.mode = mode
    self.ft_proj_selector = selector_index(ft_proj_selector, num_layers)
    bn_args = dict(global_bn=global_bn, batch_norm_decay=batch_norm_decay)
    if mode == 'linear':
      self.linear_layers = [LinearLayer(out_dim, use_bias=False, use_bn=True, name='l_0', **bn_args)]
    elif mode == 'nonlinear':
      self.linear_layers = [
          LinearLayer(lambda shape: int(shape[-1]), use_bias=True, use_bn=True, name=f'nl_{j}', **bn_args)
          for j in range(num_layers - 1)]
      self.linear_layers.append(
          LinearLayer(out_dim, use_bias=False, use_bn=True, name=f'nl_{num_layers - 1}', **bn_args))
    else:
      self.linear_layers = []

  def call(self, inputs: tf.Tensor, training: typing.Optional[bool] = None) -> tuple[tf.Tensor, tf.Tensor]:
    hiddens = [inputs]
    for j, layer in enumerate(self.linear_layers):
      h = layer(hiddens[-1], training=training)
      if j != len(self.linear_layers) - 1:
        h = tf.nn.relu(h)
      hiddens.append(h)
    return hiddens[-1], hiddens[self.ft_proj_selector]


class SupervisedHead(keras.layers.Layer):
  """Linear classifier on top of the representation (or the selected projection-head layer)."""

  def __init__(self, num_classes: int, zero_init: bool = False, name: str = 'head_supervised', **kwargs) -> None:
    super().__init__(name=name, **kwargs)
    self.linear_layer = LinearLayer(num_classes, zero_init=zero_init, name='linear_layer')

  def call(self, inputs: tf.Tensor, training: typing.Optional[bool] = None) -> tf.Tensor:
    return self.linear_layer(inputs, training=training)


class SimCLRModel(keras.Model):
  """ResNet encoder f(.), projection head g(.) and an optional supervised head.

  Input: `[B, H, W, 3 * num_views]`, the views stacked on channels as the data pipeline produces them; the
  views are moved onto the batch axis, so every output has `num_views * B` rows, [view 1; view 2; ...].
  Output: a dict with `OUTPUT_KEYS`; `logits_sup` is None when there is no supervised head.

  During pretraining the supervised head (`lineareval_while_pretraining`) sees stop-gradient features: it
  gives an online linear-evaluation signal without label information leaking into the representation.
  In 'linear_eval' the encoder and projection head are frozen (BatchNorm in inference mode) and the head sits
  on `linear_eval_endpoint` (spatial endpoints are average-pooled); 'distill' builds the same network as
  'finetune' (the student).
  """

  def __init__(self, num_classes: typing.Optional[int], settings: config_lib.ModelConfig, train_mode: str = 'pretrain',
               name: str = 'simclr', **kwargs) -> None:
    """`settings`: the network (`cifar_stem` resolved to a bool, `global_bn` as it should act); `num_classes`
    of the supervised head, None without one."""
    super().__init__(name=name, **kwargs)
    config_lib.check_model(settings, train_mode)
    s = self.settings = settings
    mode = self.mode = config_lib.TRAIN_MODE[train_mode]
    has_supervised_head = mode.labeled or mode.teacher or s.lineareval_while_pretraining
    if has_supervised_head and (num_classes is None or num_classes < 1):
      raise ValueError(f'num_classes must be >= 1 for a supervised head, got {num_classes}.')
    self.num_classes = num_classes
    self.train_mode = train_mode
    bn_args = dict(global_bn=s.global_bn, batch_norm_decay=s.batch_norm_decay)
    self.resnet_model = resnet.resnet(
        s.resnet_depth, s.width_multiplier, cifar_stem=bool(s.cifar_stem), sk_ratio=s.sk_ratio, se_ratio=s.se_ratio,
        fine_tune_after_block=4 if mode.frozen_encoder else s.fine_tune_after_block, **bn_args)
    self._projection_head = ProjectionHead(
        s.proj_head_mode, s.projection_layers, s.proj_out_dim, s.ft_proj_selector, name='projection_head', **bn_args)
    if mode.frozen_encoder:  # the projection head too: its BatchNorm statistics stay those of pretraining
      self._projection_head.trainable = False
    self.supervised_head = (
        SupervisedHead(num_classes, zero_init=s.zero_init_logits_layer) if has_supervised_head else None)

  def call(self, inputs: tf.Tensor, training: typing.Optional[bool] = None) -> dict[str, typing.Optional[tf.Tensor]]:
    channels = inputs.shape[-1]
    if channels is None or channels % 3:
      raise ValueError(f'Input channels must be a static multiple of 3 (views stacked on channels), got '
                       f'shape {inputs.shape}.')
    features = data_util.unstack_views(inputs, channels // 3)
    outputs = self.resnet_model(features, training=training, return_endpoints=True)
    hiddens = outputs['final_avg_pool']
    proj_head_output, supervised_head_input = self._projection_head(hiddens, training=training)
    logits_sup = None
    if self.supervised_head is not None:
      if self.mode.frozen_encoder:  # the paper's protocol: a linear classifier on frozen features
        features = outputs[self.settings.linear_eval_endpoint]
        supervised_head_input = features if features.shape.rank == 2 else tf.reduce_mean(features, [1, 2])
      if not self.mode.head_trains_encoder:
        supervised_head_input = tf.stop_gradient(supervised_head_input)
      logits_sup = self.supervised_head(supervised_head_input, training=training)
    outputs.update(proj_head_input=hiddens, proj_head_output=proj_head_output, logits_sup=logits_sup)
    return {key: None if value is None else tf.cast(value, tf.float32) for key, value in outputs.items()}


@contextlib.contextmanager
def dtype_policy(precision: str) -> typing.Iterator[None]:
  """Layers created (and built) inside take this Keras dtype policy; the global one is restored after.

  Keras 3 has no per-model policy that reaches sublayers created in `__init__`, hence a scope.
  """
  if precision not in config_lib.POLICIES:
    raise ValueError(f'precision must be one of {config_lib.POLICIES}, got {precision!r}.')
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(precision)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def in_float32(model: SimCLRModel, strategy: typing.Optional[tf.distribute.Strategy] = None) -> SimCLRModel:
  """`model` if it computes in float32, else the same network built in float32 (in `strategy`'s scope) holding
  its weights: what an evaluation or export computes is what the weights mean, whatever number format trained
  them."""
  if model.compute_dtype == 'float32':
    return model
  with strategy.scope() if strategy else contextlib.nullcontext(), dtype_policy('float32'):
    twin = SimCLRModel(model.num_classes, model.settings, model.train_mode)
    twin(tf.zeros([1, 32, 32, 3 * model.mode.views]), training=False)
  for ours, theirs in zip(twin.weights, model.weights, strict=True):
    ours.assign(theirs)
  return twin


def resolve_precision(precision: str, use_tpu: bool = False) -> tuple[str, str]:
  """(Keras dtype policy, why): `precision` itself, or for 'auto' the number format this hardware is fast at
  (runtime.choose_precision, from the TPU flag, the GPUs' compute capabilities and the CPU's features)."""
  if precision != 'auto':
    return precision, '--precision'
  capabilities = [tuple(tf.config.experimental.get_device_details(gpu).get('compute_capability', (0, 0)))
                  for gpu in tf.config.list_physical_devices('GPU')]
  chosen, why = runtime.choose_precision(use_tpu, capabilities)
  return chosen, f'--precision=auto: {why}'


def build(cfg: config_lib.Config, num_classes: typing.Optional[int], num_replicas: int = 1) -> SimCLRModel:
  """The SimCLR model of `cfg` (its model group, train mode and image size), with its variables created (a
  forward pass) so checkpoints can be restored into it. Synchronized BatchNorm only when there is something to
  synchronize: on one replica it computes the same thing, slower."""
  m = cfg.model
  views = config_lib.TRAIN_MODE[cfg.run.train_mode].views
  # Layers built lazily on the first call below get the policy too.
  with dtype_policy(resolve_precision(m.precision, cfg.run.use_tpu)[0]):
    model = SimCLRModel(num_classes, dataclasses.replace(m, cifar_stem=cfg.use_cifar_stem,
                                                         global_bn=m.global_bn and num_replicas > 1),
                        cfg.run.train_mode)
    model(tf.zeros([1, cfg.data.image_size, cfg.data.image_size, 3 * views]), training=False)
  return model
