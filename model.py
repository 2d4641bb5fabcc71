"""The SimCLR network (encoder + projection head + supervised head), its LR schedule and optimizers.

Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations" (SimCLR) and
"Big Self-Supervised Models are Strong Semi-Supervised Learners" (SimCLRv2).
"""

import contextlib
import math

import keras
import tensorflow as tf

import data_util
import lars_optimizer
import resnet

# pretrain: NT-Xent (+ online linear head); finetune: supervised, from a pretrained encoder; linear_eval: a
# linear head on a frozen encoder; distill: a student learns a teacher's predictions (SimCLRv2 section 2.3).
TRAIN_MODES = ('pretrain', 'finetune', 'linear_eval', 'distill')
PROJ_HEAD_MODES = ('none', 'linear', 'nonlinear')
OPTIMIZERS = ('lars', 'momentum', 'adam')
LR_SCALINGS = ('linear', 'sqrt')
# Keras dtype policies. Mixed ones compute in 16 bits and keep float32 variables; BatchNorm statistics, NT-Xent
# and softmax are float32, and every model output is float32.
PRECISIONS = ('float32', 'mixed_bfloat16', 'mixed_float16')

# Weight decay and LARS adaptation exclusions, matched against Keras variable paths. This is the only place
# they are defined: BatchNorm parameters and biases are never decayed; the supervised head is left out of LARS
# (no decay, no trust ratio) and gets an explicit L2 term instead, as in the authors' code.
BATCH_NORM_PATTERN = r'batch_normalization'
BIAS_PATTERN = r'bias'
SUPERVISED_HEAD_PATTERN = r'head_supervised'
EXCLUDE_FROM_WEIGHT_DECAY = (BATCH_NORM_PATTERN, BIAS_PATTERN, SUPERVISED_HEAD_PATTERN)

# Keys of the dict `SimCLRModel` returns (None where a head does not exist), the interface of the SimCLR
# authors' exported models.
OUTPUT_KEYS = resnet.ENDPOINTS + ('proj_head_input', 'proj_head_output', 'logits_sup')


class LinearLayer(keras.layers.Layer):
  """Dense layer, optionally followed by BatchNorm, which then replaces the bias (BN's beta plays its role).

  `num_classes` may be a callable of the input shape, so a head can keep its input width.
  """

  def __init__(self, num_classes, use_bias=True, use_bn=False, zero_init=False, global_bn=True,
               batch_norm_decay=0.9, **kwargs):
    super().__init__(**kwargs)
    self.num_classes = num_classes
    self.use_bias = use_bias
    self.use_bn = use_bn
    self.zero_init = zero_init
    self.dense = None
    self.bn_relu = (
        resnet.BatchNormRelu(relu=False, center=use_bias, global_bn=global_bn,
                             batch_norm_decay=batch_norm_decay) if use_bn else None)

  def build(self, input_shape):
    units = self.num_classes(input_shape) if callable(self.num_classes) else self.num_classes
    init = 'zeros' if self.zero_init else keras.initializers.RandomNormal(stddev=0.01)
    self.dense = keras.layers.Dense(units, kernel_initializer=init, use_bias=self.use_bias and not self.use_bn,
                                    trainable=self.trainable, name='dense')  # frozen before being built: stay so

  def call(self, inputs, training=None):
    if inputs.shape.rank != 2:
      raise ValueError(f'LinearLayer expects [batch, features], got shape {inputs.shape}.')
    outputs = self.dense(inputs)
    if self.bn_relu is not None:
      outputs = self.bn_relu(outputs, training=training)
    return outputs


def selector_index(ft_proj_selector, num_proj_layers):
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

  def __init__(self, mode='nonlinear', num_layers=3, out_dim=128, ft_proj_selector=0, global_bn=True,
               batch_norm_decay=0.9, **kwargs):
    super().__init__(**kwargs)
    if mode not in PROJ_HEAD_MODES:
      raise ValueError(f'proj_head_mode must be one of {PROJ_HEAD_MODES}, got {mode!r}.')
    if mode == 'nonlinear' and num_layers < 1:
      raise ValueError(f'num_proj_layers must be >= 1 for a nonlinear head, got {num_layers}.')
    depth = {'none': 0, 'linear': 1, 'nonlinear': num_layers}[mode]
    if not -depth - 1 <= ft_proj_selector <= depth:
      raise ValueError(f'ft_proj_selector must be in 0..{depth} (or -1 for the last) for a {mode!r} head of '
                       f'{depth} layers, got {ft_proj_selector}.')
    if out_dim < 1:
      raise ValueError(f'proj_out_dim must be >= 1, got {out_dim}.')
    self.mode = mode
    self.ft_proj_selector = selector_index(ft_proj_selector, depth)
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

  def call(self, inputs, training=None):
    hiddens = [inputs]
    for j, layer in enumerate(self.linear_layers):
      h = layer(hiddens[-1], training=training)
      if j != len(self.linear_layers) - 1:
        h = tf.nn.relu(h)
      hiddens.append(h)
    return hiddens[-1], hiddens[self.ft_proj_selector]


class SupervisedHead(keras.layers.Layer):
  """Linear classifier on top of the representation (or the selected projection-head layer)."""

  def __init__(self, num_classes, zero_init=False, name='head_supervised', **kwargs):
    super().__init__(name=name, **kwargs)
    self.linear_layer = LinearLayer(num_classes, zero_init=zero_init, name='linear_layer')

  def call(self, inputs, training=None):
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

  def __init__(self, num_classes, resnet_depth=50, width_multiplier=1, cifar_stem=False, sk_ratio=0.0,
               se_ratio=0.0, global_bn=True, batch_norm_decay=0.9, proj_head_mode='nonlinear',
               proj_out_dim=128, num_proj_layers=3, ft_proj_selector=0, train_mode='pretrain',
               lineareval_while_pretraining=True, fine_tune_after_block=-1, zero_init_logits_layer=False,
               linear_eval_endpoint='final_avg_pool', name='simclr', **kwargs):
    super().__init__(name=name, **kwargs)
    if train_mode not in TRAIN_MODES:
      raise ValueError(f'train_mode must be one of {TRAIN_MODES}, got {train_mode!r}.')
    if train_mode == 'pretrain' and fine_tune_after_block != -1:
      raise ValueError('fine_tune_after_block freezes layers, which pretraining does not support: '
                       f'set it to -1 (got {fine_tune_after_block}).')
    if train_mode == 'linear_eval':
      if fine_tune_after_block not in (-1, 4):
        raise ValueError('linear_eval freezes the whole encoder: fine_tune_after_block must be -1 or 4, got '
                         f'{fine_tune_after_block}.')
      if linear_eval_endpoint not in resnet.ENDPOINTS:
        raise ValueError(f'linear_eval_endpoint must be one of {resnet.ENDPOINTS}, got {linear_eval_endpoint!r}.')
      fine_tune_after_block = 4
    has_supervised_head = train_mode != 'pretrain' or lineareval_while_pretraining
    if has_supervised_head and (num_classes is None or num_classes < 1):
      raise ValueError(f'num_classes must be >= 1 for a supervised head, got {num_classes}.')
    self.train_mode = train_mode
    self.lineareval_while_pretraining = lineareval_while_pretraining
    self.linear_eval_endpoint = linear_eval_endpoint
    bn_args = dict(global_bn=global_bn, batch_norm_decay=batch_norm_decay)
    self.resnet_model = resnet.resnet(
        resnet_depth, width_multiplier, cifar_stem=cifar_stem, sk_ratio=sk_ratio, se_ratio=se_ratio,
        fine_tune_after_block=fine_tune_after_block, **bn_args)
    self._projection_head = ProjectionHead(
        proj_head_mode, num_proj_layers, proj_out_dim, ft_proj_selector, name='projection_head', **bn_args)
    if train_mode == 'linear_eval':  # frozen too: its BatchNorm statistics stay those of pretraining
      self._projection_head.trainable = False
    self.supervised_head = (
        SupervisedHead(num_classes, zero_init=zero_init_logits_layer) if has_supervised_head else None)

  def call(self, inputs, training=None):
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
      if self.train_mode == 'linear_eval':  # the paper's protocol: a linear classifier on frozen features
        features = outputs[self.linear_eval_endpoint]
        supervised_head_input = features if features.shape.rank == 2 else tf.reduce_mean(features, [1, 2])
      if self.train_mode in ('pretrain', 'linear_eval'):
        supervised_head_input = tf.stop_gradient(supervised_head_input)
      logits_sup = self.supervised_head(supervised_head_input, training=training)
    outputs.update(proj_head_input=hiddens, proj_head_output=proj_head_output, logits_sup=logits_sup)
    return {key: None if value is None else tf.cast(value, tf.float32) for key, value in outputs.items()}


@contextlib.contextmanager
def dtype_policy(precision):
  """Layers created (and built) inside take this Keras dtype policy; the global one is restored after.

  Keras 3 has no per-model policy that reaches sublayers created in `__init__`, hence a scope.
  """
  if precision not in PRECISIONS:
    raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}.')
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(precision)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def build(cfg, num_classes, num_replicas=1):
  """The SimCLR model of `cfg` (its model group, train mode and image size), with its variables created (a
  forward pass) so checkpoints can be restored into it. Synchronized BatchNorm only when there is something to
  synchronize: on one replica it computes the same thing, slower."""
  m = cfg.model
  views = 2 if cfg.run.train_mode == 'pretrain' else 1
  with dtype_policy(m.precision):  # layers built lazily on this first call get it too
    model = SimCLRModel(
        num_classes, resnet_depth=m.resnet_depth, width_multiplier=m.width_multiplier,
        cifar_stem=cfg.use_cifar_stem, sk_ratio=m.sk_ratio, se_ratio=m.se_ratio,
        global_bn=m.global_bn and num_replicas > 1, batch_norm_decay=m.batch_norm_decay,
        proj_head_mode=m.proj_head_mode, proj_out_dim=m.proj_out_dim, num_proj_layers=m.num_proj_layers,
        ft_proj_selector=m.ft_proj_selector, train_mode=cfg.run.train_mode,
        lineareval_while_pretraining=m.lineareval_while_pretraining,
        fine_tune_after_block=m.fine_tune_after_block, zero_init_logits_layer=m.zero_init_logits_layer,
        linear_eval_endpoint=m.linear_eval_endpoint)
    model(tf.zeros([1, cfg.data.image_size, cfg.data.image_size, 3 * views]), training=False)
  return model


def get_train_steps(num_examples, train_batch_size, train_epochs=None, train_steps=None):
  """Number of training steps: `train_steps` if given, else the authors' epochs * examples // batch + 1."""
  if train_steps:
    return int(train_steps)
  if not train_epochs:
    raise ValueError('Either train_steps or train_epochs must be positive.')
  return int(num_examples * train_epochs // train_batch_size + 1)


def get_warmup_steps(warmup_epochs, num_examples, train_batch_size):
  """Warmup steps as the authors' code counts them: round(warmup_epochs * num_examples // batch)."""
  return int(round(warmup_epochs * num_examples // train_batch_size))


@keras.saving.register_keras_serializable(package='simclr')
class WarmUpAndCosineDecay(keras.optimizers.schedules.CosineDecay):
  """Linear warmup from 0 to the scaled learning rate, then cosine decay to 0 (SimCLR appendix B.1).

  The peak is `base_learning_rate * train_batch_size / 256` ('linear' scaling) or
  `base_learning_rate * sqrt(train_batch_size)` ('sqrt', better for small batches / long training, B.1).
  Step counts follow the authors' code: warmup = round(warmup_epochs * num_examples // batch).
  """

  def __init__(self, base_learning_rate, num_examples, train_batch_size, warmup_epochs=10,
               train_epochs=None, train_steps=None, scaling='linear', name='WarmUpAndCosineDecay'):
    if scaling not in LR_SCALINGS:
      raise ValueError(f'learning_rate_scaling must be one of {LR_SCALINGS}, got {scaling!r}.')
    if train_batch_size < 1 or num_examples < 1:
      raise ValueError(f'train_batch_size and num_examples must be >= 1, got {train_batch_size} and '
                       f'{num_examples}.')
    if warmup_epochs < 0:
      raise ValueError(f'warmup_epochs must be >= 0, got {warmup_epochs}.')
    self.base_learning_rate = base_learning_rate
    self.num_examples = num_examples
    self.train_batch_size = train_batch_size
    self.warmup_epochs = warmup_epochs
    self.train_epochs = train_epochs
    self.train_steps = train_steps
    self.scaling = scaling
    if scaling == 'linear':
      self.scaled_learning_rate = base_learning_rate * train_batch_size / 256.
    else:
      self.scaled_learning_rate = base_learning_rate * math.sqrt(train_batch_size)
    self.total_steps = get_train_steps(num_examples, train_batch_size, train_epochs, train_steps)
    warmup_steps = get_warmup_steps(warmup_epochs, num_examples, train_batch_size)
    # A warmup as long as training or longer: the rate rises all run, as in the authors' schedule.
    super().__init__(initial_learning_rate=0.0, decay_steps=max(1, self.total_steps - warmup_steps),
                     warmup_target=self.scaled_learning_rate, warmup_steps=warmup_steps, name=name)

  def get_config(self):
    return {
        'base_learning_rate': self.base_learning_rate,
        'num_examples': self.num_examples,
        'train_batch_size': self.train_batch_size,
        'warmup_epochs': self.warmup_epochs,
        'train_epochs': self.train_epochs,
        'train_steps': self.train_steps,
        'scaling': self.scaling,
        'name': self.name,
    }


def build_optimizer(name, learning_rate, momentum=0.9, weight_decay=0.0, precision='float32'):
  """The optimizer the paper's flags name. Only LARS applies weight decay itself; see `weight_decay_loss`.

  Under mixed_float16 it is wrapped in Keras' dynamic `LossScaleOptimizer`: gradients of the scaled loss
  are unscaled before the update, and a step with Inf/NaN gradients is skipped and halves the scale. Train
  steps call `optimizer.scale_loss(loss)` (the identity for the others).
  """
  if name == 'lars':
    optimizer = lars_optimizer.LARSOptimizer(learning_rate, momentum=momentum, weight_decay=weight_decay,
                                             exclude_from_weight_decay=EXCLUDE_FROM_WEIGHT_DECAY)
  elif name == 'momentum':
    optimizer = keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=True)
  elif name == 'adam':
    optimizer = keras.optimizers.Adam(learning_rate)
  else:
    raise ValueError(f'optimizer must be one of {OPTIMIZERS}, got {name!r}.')
  if precision == 'mixed_float16':
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def weight_decay_loss(variables, weight_decay, optimizer_name=None):
  """The explicit L2 term `weight_decay * sum(||w||^2 / 2)` for what the optimizer does not decay itself.

  With 'lars' that is the supervised head's kernel only (LARS decays the rest). With any other optimizer,
  or None (the regularization loss reported by eval), every variable except BatchNorm parameters.
  """
  if optimizer_name == 'lars':
    chosen = [v for v in variables
              if lars_optimizer.path_matches(v.path, (SUPERVISED_HEAD_PATTERN,))
              and not lars_optimizer.path_matches(v.path, (BIAS_PATTERN,))]
  else:
    chosen = [v for v in variables if not lars_optimizer.path_matches(v.path, (BATCH_NORM_PATTERN,))]
  if not chosen or not weight_decay:
    return tf.constant(0.0)
  return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in chosen])
