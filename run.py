r"""SimCLR: pretrain, fine-tune, evaluate and export, with one command.

  python run.py                      # pretrain on the embedded dataset, then report linear-eval accuracy
  python run.py --flagfile=configs/cifar10_pretrain.cfg --data_dir=...
  python run.py --train_mode=finetune --checkpoint=runs/simclr_shapes --label_fraction=0.1 ...
  python run.py --mode=eval --model_dir=...

Flags keep the names and meanings of the SimCLR authors' run.py, so their recipes work unchanged. This is the
only module that reads flags: everything else takes plain arguments.
"""

import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow loads: keep its C++ chatter out

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import keras
import tensorflow as tf

import data as data_lib
import embed_plot as embed_plot_lib
import linear_eval as linear_eval_lib
import metrics as metrics_lib
import model as model_lib
import objective as obj_lib

FLAGS = flags.FLAGS

# Defaults are the CPU recipe for the embedded dataset (`python run.py` in under 10 minutes on 2 cores): the
# authors' CIFAR-10 choices (LARS, temperature 0.5, colour strength 0.5, no blur) at batch 128 for 30 epochs.
# configs/ holds the paper's recipes.

# --- what to run
flags.DEFINE_enum('mode', 'train_then_eval', ['train', 'eval', 'train_then_eval', 'embed_plot'],
                  'What to do. embed_plot: a PNG of 2-D PCA projections of the eval split\'s features, for the '
                  'model in model_dir (or --checkpoint) and a random encoder.')
flags.DEFINE_enum('train_mode', 'pretrain', list(model_lib.TRAIN_MODES),
                  'pretrain: contrastive learning (+ online linear eval); finetune: supervised from --checkpoint; '
                  'linear_eval: a linear head on the frozen encoder of --checkpoint; distill: learn the '
                  'predictions of --teacher on the (unlabeled) train images.')
flags.DEFINE_string('model_dir', 'runs/simclr_shapes', 'Checkpoints, summaries, results and exports go here.')
# --- data
flags.DEFINE_string('dataset', data_lib.EMBEDDED_DATASET,
                    'A TFDS name, an image folder <root>/<split>/<class>/<image>, or the embedded '
                    f'{data_lib.EMBEDDED_DATASET}.')
flags.DEFINE_string('data_dir', None, 'TFDS data directory (default: ~/tensorflow_datasets).')
flags.DEFINE_string('train_split', 'train', 'Split to train on.')
flags.DEFINE_string('eval_split', 'test', 'Split to evaluate on.')
flags.DEFINE_bool('cache_dataset', False, 'Cache decoded examples in memory (small datasets).')
flags.DEFINE_float('label_fraction', 1.0, 'Fine-tune on this class-balanced fraction of the train labels.')
flags.DEFINE_integer('label_fraction_seed', 0, 'Seed of the label-fraction subset.')
flags.DEFINE_bool('strict_images', False, 'Fail on a corrupt image file instead of skipping it.')
flags.DEFINE_integer('image_size', 32, 'Input image size (the CIFAR stem is used at 32 px or less).')
flags.DEFINE_float('color_jitter_strength', 0.5, 'Colour distortion strength s.')
flags.DEFINE_bool('use_blur', False, 'Gaussian blur in pretraining (the paper uses it for ImageNet).')
# --- schedule and optimisation
flags.DEFINE_integer('train_batch_size', 128, 'Global training batch size.')
flags.DEFINE_integer('train_epochs', 30, 'Training epochs (ignored when train_steps > 0).')
flags.DEFINE_integer('train_steps', 0, 'Training steps; 0 = from train_epochs.')
flags.DEFINE_float('warmup_epochs', 1, 'Linear warmup epochs.')
flags.DEFINE_float('learning_rate', 2.0, 'Base learning rate (scaled by learning_rate_scaling).')
flags.DEFINE_enum('learning_rate_scaling', 'linear', list(model_lib.LR_SCALINGS),
                  'linear: lr * B / 256; sqrt: lr * sqrt(B).')
flags.DEFINE_float('weight_decay', 1e-4, 'L2 weight decay.')
flags.DEFINE_enum('optimizer', 'lars', list(model_lib.OPTIMIZERS), 'Optimizer.')
flags.DEFINE_float('momentum', 0.9, 'Momentum.')
flags.DEFINE_integer('checkpoint_epochs', 1, 'Checkpoint (and log) every this many epochs.')
flags.DEFINE_integer('checkpoint_steps', 0, 'Checkpoint every this many steps; overrides checkpoint_epochs.')
flags.DEFINE_integer('keep_checkpoint_max', 5, 'Checkpoints to keep.')
flags.DEFINE_integer('keep_hub_module_max', 1, 'SavedModel exports to keep.')
# --- evaluation
flags.DEFINE_integer('eval_batch_size', 256, 'Global evaluation batch size.')
flags.DEFINE_integer('eval_steps', 0, 'Evaluation steps; 0 = the whole eval split.')
flags.DEFINE_string('eval_name', None, 'Name of the evaluation (subdirectory of its summaries).')
flags.DEFINE_integer('eval_timeout', 0, '--mode=eval waits this many seconds for new checkpoints, then ends.')
flags.DEFINE_bool('linear_eval', True,
                  'After pretraining (train_then_eval), fit a logistic regression on frozen features of the '
                  'pretrained and of a randomly initialised encoder, and report both.')
flags.DEFINE_integer('linear_eval_max_examples', 20000, 'Training examples the linear evaluation uses, at most.')
flags.DEFINE_enum('linear_eval_endpoint', 'final_avg_pool', list(model_lib.resnet.ENDPOINTS),
                  '--train_mode=linear_eval: the encoder endpoint the linear head reads (spatial ones pooled).')
flags.DEFINE_integer('knn_eval_steps', 0,
                     'Pretraining: every this many steps, weighted-kNN top-1 of frozen features on --eval_split '
                     '(the train split as memory bank); 0 = off.')
flags.DEFINE_integer('knn_k', 200, 'Neighbours of the kNN monitor.')
flags.DEFINE_float('knn_temperature', 0.1, 'Temperature of the kNN monitor\'s vote weights exp(sim / t).')
# --- model
flags.DEFINE_integer('resnet_depth', 18, 'ResNet depth: 18, 34, 50, 101, 152 or 200.')
flags.DEFINE_float('width_multiplier', 0.25, 'ResNet width multiplier (1, 2, 3, 4, or a fraction).')
flags.DEFINE_float('sk_ratio', 0.0, 'Selective kernel ratio (SimCLRv2: 0.0625); 0 disables.')
flags.DEFINE_float('se_ratio', 0.0, 'Squeeze-excitation ratio; 0 disables.')
flags.DEFINE_bool('global_bn', True, 'Aggregate BatchNorm statistics across replicas.')
flags.DEFINE_float('batch_norm_decay', 0.9, 'BatchNorm moving-average decay.')
flags.DEFINE_enum('precision', 'float32', list(model_lib.PRECISIONS),
                  'Keras dtype policy. mixed_bfloat16 for TPUs and CPUs with AMX/AVX512-BF16, mixed_float16 '
                  '(with dynamic loss scaling) for GPUs. BatchNorm statistics, NT-Xent and softmax stay float32.')
flags.DEFINE_bool('jit_compile', False, 'Compile the train step with XLA (off by default: slower on CPU).')
flags.DEFINE_enum('proj_head_mode', 'nonlinear', list(model_lib.PROJ_HEAD_MODES), 'Projection head.')
flags.DEFINE_integer('proj_out_dim', 128, 'Projection output dimension.')
flags.DEFINE_integer('num_proj_layers', 3, 'Layers of the nonlinear projection head.')
flags.DEFINE_integer('ft_proj_selector', 0, 'Projection-head layer to fine-tune from (0 = its input).')
flags.DEFINE_bool('lineareval_while_pretraining', True, 'Train a linear head on stop-gradient features.')
flags.DEFINE_float('temperature', 0.5, 'NT-Xent temperature.')
flags.DEFINE_bool('hidden_norm', True, 'L2-normalise projections before NT-Xent (cosine similarity).')
# --- fine-tuning
flags.DEFINE_string('checkpoint', None,
                    'Fine-tune from: a checkpoint prefix, a model_dir (its latest checkpoint), or a SavedModel '
                    'exported by this project. Encoder and projection head only.')
flags.DEFINE_bool('random_init', False, 'Fine-tune from a random initialisation (baselines) instead.')
flags.DEFINE_bool('zero_init_logits_layer', False, 'Start the supervised head at zero.')
flags.DEFINE_string('teacher', None,
                    '--train_mode=distill: the teacher, an exported SavedModel or a model_dir / checkpoint prefix '
                    'of this project (rebuilt from its flags.json).')
flags.DEFINE_float('distill_temperature', 1.0, 'Softmax temperature of teacher and student in distillation.')
flags.DEFINE_float('distill_alpha', 0.0,
                   'Weight of the labeled cross-entropy added to the distillation loss (0: unlabeled only).')
flags.DEFINE_integer('fine_tune_after_block', -1,
                     'Freeze the encoder up to block group k (0 = the stem, 4 = all: linear evaluation).')
# --- where to run
flags.DEFINE_bool('use_tpu', False, 'Run on a Cloud TPU.')
flags.DEFINE_string('tpu_name', None, 'Cloud TPU name (or grpc:// address).')
flags.DEFINE_string('tpu_zone', None, 'Cloud TPU zone.')
flags.DEFINE_string('gcp_project', None, 'GCP project of the TPU.')
flags.DEFINE_string('master', None, 'TPU master address, for the TPU cluster resolver.')


@dataclasses.dataclass(frozen=True)
class Config:
  """Every flag value, read once; the rest of the program takes this instead of FLAGS."""
  mode: str
  train_mode: str
  model_dir: str
  dataset: str
  data_dir: str
  train_split: str
  eval_split: str
  cache_dataset: bool
  label_fraction: float
  label_fraction_seed: int
  strict_images: bool
  image_size: int
  color_jitter_strength: float
  use_blur: bool
  train_batch_size: int
  train_epochs: int
  train_steps: int
  warmup_epochs: float
  learning_rate: float
  learning_rate_scaling: str
  weight_decay: float
  optimizer: str
  momentum: float
  checkpoint_epochs: int
  checkpoint_steps: int
  keep_checkpoint_max: int
  keep_hub_module_max: int
  eval_batch_size: int
  eval_steps: int
  eval_name: str
  eval_timeout: int
  linear_eval: bool
  linear_eval_max_examples: int
  linear_eval_endpoint: str
  knn_eval_steps: int
  knn_k: int
  knn_temperature: float
  resnet_depth: int
  width_multiplier: float
  sk_ratio: float
  se_ratio: float
  global_bn: bool
  batch_norm_decay: float
  precision: str
  jit_compile: bool
  proj_head_mode: str
  proj_out_dim: int
  num_proj_layers: int
  ft_proj_selector: int
  lineareval_while_pretraining: bool
  temperature: float
  hidden_norm: bool
  checkpoint: str
  random_init: bool
  teacher: str
  distill_temperature: float
  distill_alpha: float
  zero_init_logits_layer: bool
  fine_tune_after_block: int
  use_tpu: bool
  tpu_name: str
  tpu_zone: str
  gcp_project: str
  master: str

  @classmethod
  def from_flags(cls):
    return cls(**{field.name: getattr(FLAGS, field.name) for field in dataclasses.fields(cls)})

  @classmethod
  def defaults(cls, **overrides):
    """The flags' default values with `overrides` (for scripts, notebooks and tests)."""
    values = {field.name: FLAGS[field.name].default for field in dataclasses.fields(cls)}
    return cls(**{**values, **overrides})


class UsageError(ValueError):
  """A flag combination that cannot work; the message names the flag."""


# Modes that train a classifier on (a fraction of) the labels, starting from --checkpoint.
LABELED_MODES = ('finetune', 'linear_eval')


def validate(cfg, num_replicas):
  """Fails fast, with one line naming the flag, on combinations that would fail later or silently."""
  checks = [
      (cfg.train_batch_size < 1, f'--train_batch_size must be >= 1, got {cfg.train_batch_size}.'),
      (cfg.train_batch_size % num_replicas != 0,
       f'--train_batch_size={cfg.train_batch_size} is not divisible by the {num_replicas} replicas.'),
      (cfg.eval_batch_size % num_replicas != 0,
       f'--eval_batch_size={cfg.eval_batch_size} is not divisible by the {num_replicas} replicas.'),
      (cfg.train_mode == 'pretrain' and cfg.fine_tune_after_block != -1,
       '--fine_tune_after_block freezes layers, which pretraining does not support: set it to -1.'),
      (cfg.mode in ('eval', 'train_then_eval') and cfg.train_mode == 'pretrain' and
       not cfg.lineareval_while_pretraining,
       f'--mode={cfg.mode} has nothing to evaluate: pretraining without --lineareval_while_pretraining has no '
       'classifier. Use --mode=train, or keep the online linear head.'),
      (not 0 < cfg.label_fraction <= 1, f'--label_fraction must be in (0, 1], got {cfg.label_fraction}.'),
      (cfg.label_fraction < 1 and cfg.train_mode not in LABELED_MODES,
       '--label_fraction applies to --train_mode=finetune or linear_eval; pretraining and distillation use '
       'every (unlabeled) train image.'),
      (cfg.train_mode == 'linear_eval' and cfg.fine_tune_after_block not in (-1, 4),
       '--train_mode=linear_eval freezes the whole encoder: leave --fine_tune_after_block at -1 (or 4).'),
      (cfg.train_mode == 'distill' and cfg.mode != 'eval' and not cfg.teacher,
       '--train_mode=distill needs --teacher (a SavedModel, model_dir or checkpoint of a fine-tuned model).'),
      (cfg.teacher and cfg.train_mode != 'distill', '--teacher applies to --train_mode=distill only.'),
      (cfg.distill_temperature <= 0, f'--distill_temperature must be > 0, got {cfg.distill_temperature}.'),
      (cfg.knn_eval_steps < 0 or (cfg.knn_eval_steps and cfg.train_mode != 'pretrain'),
       '--knn_eval_steps monitors pretraining: use it with --train_mode=pretrain, >= 0.'),
      (cfg.knn_k < 1 or cfg.knn_temperature <= 0, '--knn_k must be >= 1 and --knn_temperature > 0.'),
      (cfg.train_steps < 0 or cfg.train_epochs < 0, '--train_steps and --train_epochs must be >= 0.'),
      (cfg.train_steps == 0 and cfg.train_epochs == 0, 'One of --train_steps or --train_epochs must be > 0.'),
      (cfg.temperature <= 0, f'--temperature must be > 0, got {cfg.temperature}.'),
      (cfg.image_size < 8, f'--image_size must be >= 8, got {cfg.image_size}.'),
      (cfg.checkpoint and cfg.random_init, '--checkpoint and --random_init are exclusive.'),
      (cfg.jit_compile and num_replicas > 1 and not cfg.use_tpu,
       f'--jit_compile needs one replica ({num_replicas} here): XLA cannot compile MirroredStrategy\'s '
       'cross-replica BatchNorm and gather. (On TPUs the step is always compiled.)'),
  ]
  for failed, message in checks:
    if failed:
      raise UsageError(message)
  if cfg.train_mode in LABELED_MODES and cfg.mode not in ('eval', 'embed_plot') and not (
      cfg.checkpoint or cfg.random_init or tf.train.latest_checkpoint(cfg.model_dir)):
    raise UsageError(f'--train_mode={cfg.train_mode} needs --checkpoint (a pretrained checkpoint, model_dir or '
                     f'SavedModel), a checkpoint in --model_dir={cfg.model_dir} to resume, or --random_init.')
  if cfg.mode == 'embed_plot' and not (cfg.checkpoint or tf.train.latest_checkpoint(cfg.model_dir)):
    raise UsageError(f'--mode=embed_plot needs a checkpoint in --model_dir={cfg.model_dir} or --checkpoint.')
  if cfg.mode == 'eval' and not tf.train.latest_checkpoint(cfg.model_dir) and cfg.eval_timeout <= 0:
    raise UsageError(f'--mode=eval found no checkpoint in --model_dir={cfg.model_dir} (and --eval_timeout=0).')
  for name in ('checkpoint', 'teacher'):
    path = getattr(cfg, name)
    if path and not tf.io.gfile.exists(path) and not tf.io.gfile.glob(path + '.*'):
      raise UsageError(f'--{name}={path} does not exist.')


# ------------------------------------------------------------------------------------------- strategy


def build_strategy(cfg):
  """TPUStrategy with --use_tpu; MultiWorkerMirroredStrategy when TF_CONFIG names several workers;
  MirroredStrategy over several local GPUs; else the default (one device)."""
  workers = json.loads(os.environ.get('TF_CONFIG', '{}')).get('cluster', {}).get('worker', [])
  if cfg.use_tpu:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=cfg.tpu_name or cfg.master, zone=cfg.tpu_zone, project=cfg.gcp_project)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    strategy, name = tf.distribute.TPUStrategy(resolver), 'TPUStrategy'
  elif len(workers) > 1:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    name = f'MultiWorkerMirroredStrategy over {len(workers)} workers'
  elif len(tf.config.list_logical_devices('GPU')) > 1:
    strategy, name = tf.distribute.MirroredStrategy(), 'MirroredStrategy'
  else:
    strategy, name = tf.distribute.get_strategy(), 'the default strategy'
  logging.info('Running with %s, %d replica(s).', name, strategy.num_replicas_in_sync)
  return strategy


def is_chief(strategy):
  """Only the chief writes checkpoints, summaries, results and exports."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.task_type:
    return True
  return resolver.task_type == 'chief' or (resolver.task_type == 'worker' and resolver.task_id == 0)


# ------------------------------------------------------------------------------------------- model


def build_model(cfg, num_classes, num_replicas=1):
  """The SimCLR model for these flags, with its variables created (a forward pass) so checkpoints can be
  restored into it. Synchronized BatchNorm only when there is something to synchronize: on one replica it
  computes the same thing, slower."""
  views = 2 if cfg.train_mode == 'pretrain' else 1
  with model_lib.dtype_policy(cfg.precision):  # layers built lazily on this first call get it too
    model = model_lib.SimCLRModel(
        num_classes, resnet_depth=cfg.resnet_depth, width_multiplier=cfg.width_multiplier,
        cifar_stem=cfg.image_size <= 32, sk_ratio=cfg.sk_ratio, se_ratio=cfg.se_ratio,
        global_bn=cfg.global_bn and num_replicas > 1, batch_norm_decay=cfg.batch_norm_decay,
        proj_head_mode=cfg.proj_head_mode, proj_out_dim=cfg.proj_out_dim, num_proj_layers=cfg.num_proj_layers,
        ft_proj_selector=cfg.ft_proj_selector, train_mode=cfg.train_mode,
        lineareval_while_pretraining=cfg.lineareval_while_pretraining,
        fine_tune_after_block=cfg.fine_tune_after_block, zero_init_logits_layer=cfg.zero_init_logits_layer,
        linear_eval_endpoint=cfg.linear_eval_endpoint)
    model(tf.zeros([1, cfg.image_size, cfg.image_size, 3 * views]), training=False)
  return model


def build_training(cfg, strategy, num_classes, num_examples):
  """Model, optimizer and learning-rate schedule, with all variables created (call in strategy.scope())."""
  model = build_model(cfg, num_classes, strategy.num_replicas_in_sync)
  schedule = model_lib.WarmUpAndCosineDecay(
      cfg.learning_rate, num_examples, cfg.train_batch_size, cfg.warmup_epochs, cfg.train_epochs,
      cfg.train_steps or None, cfg.learning_rate_scaling)
  optimizer = model_lib.build_optimizer(cfg.optimizer, schedule, cfg.momentum, cfg.weight_decay, cfg.precision)
  optimizer.build(model.trainable_variables)  # before any tf.function traces it (KERAS3_NOTES #2)
  return model, optimizer, schedule


def restore_for_finetuning(model, path):
  """Loads encoder and projection head from a checkpoint prefix, a model_dir or an exported SavedModel;
  neither the optimizer nor the global step (fine-tuning starts at step 0)."""
  if tf.io.gfile.exists(os.path.join(path, 'saved_model.pb')):
    exported = tf.saved_model.load(path)
    with tempfile.TemporaryDirectory(prefix='simclr-') as tmp:  # through an object-based checkpoint
      _restore_encoder(model, tf.train.Checkpoint(model=exported.model).write(os.path.join(tmp, 'exported')))
  else:
    if tf.io.gfile.isdir(path):
      latest = tf.train.latest_checkpoint(path)
      if not latest:
        raise UsageError(f'--checkpoint={path} is a directory with neither checkpoints nor a SavedModel.')
      path = latest
    _restore_encoder(model, path)
  logging.info('Initialised encoder and projection head from %s', path)


def load_teacher(cfg, strategy, source):
  """`teacher(images) -> logits` from --teacher: an exported SavedModel, or a model_dir / checkpoint prefix of
  this project, rebuilt from the flags.json its evaluation wrote."""
  path = cfg.teacher
  if tf.io.gfile.exists(os.path.join(path, 'saved_model.pb')):
    exported = tf.saved_model.load(path)
    if 'logits_sup' not in exported.signatures['serving_default'].structured_outputs:
      raise UsageError(f'--teacher={path} has no classifier (logits_sup): distill from a fine-tuned model.')
    logging.info('Teacher: SavedModel %s', path)
    return lambda images: exported(images, trainable=False)['logits_sup']
  model_dir = path if tf.io.gfile.isdir(path) else os.path.dirname(path)
  flags_path = os.path.join(model_dir, 'flags.json')
  if not tf.io.gfile.exists(flags_path):
    raise UsageError(f'--teacher={path}: no flags.json in {model_dir} to rebuild the teacher from; pass its '
                     'exported SavedModel (model_dir/saved_model/<step>) instead.')
  with tf.io.gfile.GFile(flags_path) as f:
    saved = json.load(f)
  fields = {field.name for field in dataclasses.fields(Config)}
  teacher_cfg = Config.defaults(**{k: v for k, v in saved.items() if k in fields})
  if teacher_cfg.train_mode == 'pretrain' and not teacher_cfg.lineareval_while_pretraining:
    raise UsageError(f'--teacher={path} has no classifier (logits_sup): distill from a fine-tuned model.')
  checkpoint = tf.train.latest_checkpoint(path) if tf.io.gfile.isdir(path) else path
  with strategy.scope():
    teacher = build_model(teacher_cfg, max(source.num_classes, 1), strategy.num_replicas_in_sync)
  tf.train.Checkpoint(model=teacher).read(checkpoint).expect_partial().assert_existing_objects_matched()
  logging.info('Teacher: %s (ResNet-%d x%g)', checkpoint, teacher_cfg.resnet_depth, teacher_cfg.width_multiplier)
  return lambda images: teacher(images, training=False)['logits_sup']


def _restore_encoder(model, path):
  parts = tf.train.Checkpoint(resnet_model=model.resnet_model, _projection_head=model._projection_head)  # pylint: disable=protected-access
  tf.train.Checkpoint(model=parts).read(path).expect_partial().assert_existing_objects_matched()


# ------------------------------------------------------------------------------------------- training


def steps_per_loop(cfg, num_train_examples):
  """Steps between checkpoints (and log lines): --checkpoint_steps, else --checkpoint_epochs epochs."""
  if cfg.checkpoint_steps:
    return cfg.checkpoint_steps
  return max(1, cfg.checkpoint_epochs * num_train_examples // cfg.train_batch_size)


def make_train_step(cfg, model, optimizer, strategy, teacher=None):
  """One SimCLR step on one replica (the paper's Algorithm 1, plus the online linear head), or one
  fine-tuning / linear-evaluation / distillation step (`teacher(images) -> logits` for the latter).

  Returns `train_step(images, one_hot_labels) -> {metric name: value}`, to be run with `strategy.run`.
  With --jit_compile the forward and backward pass are one XLA computation; the update (which synchronizes
  replicas through the optimizer) stays outside it.
  """
  supervised = model.supervised_head is not None

  def forward_backward(images, labels):
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      loss = 0.0
      values = {}
      if cfg.train_mode == 'pretrain':
        # NT-Xent on the projections of both views, negatives from every replica.
        contrast_loss, logits_ab, labels_ab = obj_lib.add_contrastive_loss(
            outputs['proj_head_output'], hidden_norm=cfg.hidden_norm, temperature=cfg.temperature)
        loss += contrast_loss
        values.update({'train/contrast_loss': contrast_loss,
                       'train/contrast_acc': metrics_lib.contrastive_accuracy(logits_ab, labels_ab),
                       'train/contrast_entropy': metrics_lib.contrastive_entropy(logits_ab)})
        labels = tf.concat([labels, labels], 0)  # the linear head sees both views
      supervised_weight = 1.0
      if cfg.train_mode == 'distill':
        # SimCLRv2 eq. 3: cross-entropy to the teacher's temperature-softened predictions.
        teacher_logits = tf.stop_gradient(tf.cast(teacher(images), tf.float32))
        distill_loss = obj_lib.add_distillation_loss(teacher_logits, outputs['logits_sup'],
                                                     cfg.distill_temperature)
        loss += distill_loss
        values.update({'train/distill_loss': distill_loss,
                       'train/teacher_agreement': metrics_lib.top_k_accuracy(
                           tf.one_hot(tf.argmax(teacher_logits, 1), teacher_logits.shape[-1]),
                           outputs['logits_sup'], 1)})
        supervised_weight = cfg.distill_alpha
      if supervised and supervised_weight:
        supervised_loss = obj_lib.add_supervised_loss(labels, outputs['logits_sup'])
        loss += supervised_weight * supervised_loss
        values.update({'train/supervised_loss': supervised_loss,
                       'train/supervised_acc': metrics_lib.top_k_accuracy(labels, outputs['logits_sup'], 1)})
      weight_decay = model_lib.weight_decay_loss(model.trainable_variables, cfg.weight_decay, cfg.optimizer)
      loss += weight_decay
      values.update({'train/total_loss': loss, 'train/weight_decay': weight_decay})
      # Gradients are summed over replicas, so each replica contributes its share of the mean; under
      # mixed_float16 the loss is also scaled up (the optimizer scales the gradients back).
      scaled_loss = optimizer.scale_loss(loss / strategy.num_replicas_in_sync)
    return tape.gradient(scaled_loss, model.trainable_variables), values

  if cfg.jit_compile:
    forward_backward = tf.function(forward_backward, jit_compile=True)

  def train_step(images, labels):
    grads, values = forward_backward(images, labels)
    # Fine-tuning from an early projection layer leaves the later ones without gradient: skip them.
    optimizer.apply_gradients([(g, v) for g, v in zip(grads, model.trainable_variables) if g is not None])
    return values

  return train_step


def training_examples(cfg, source):
  """(number of training examples, ids of the label-fraction subset or None) for these flags."""
  if cfg.train_mode in LABELED_MODES and cfg.label_fraction < 1:
    subset_ids = data_lib.label_fraction_subset(source, cfg.train_split, cfg.label_fraction,
                                                cfg.label_fraction_seed)
    return len(subset_ids), subset_ids
  return source.num_examples(cfg.train_split), None


def final_step(cfg, source):
  return model_lib.get_train_steps(training_examples(cfg, source)[0], cfg.train_batch_size, cfg.train_epochs,
                                   cfg.train_steps)


def train(cfg, strategy, source, chief):
  """The training loop of the authors' code: an inner tf.function runs `steps_per_loop` steps."""
  num_examples, subset_ids = training_examples(cfg, source)
  if subset_ids is not None and chief:
    path = data_lib.write_label_subset(cfg.model_dir, subset_ids, dataset=source.name, split=cfg.train_split,
                                       fraction=cfg.label_fraction, seed=cfg.label_fraction_seed)
    logging.info('Fine-tuning on %d labelled examples (%.3g of %s), ids in %s', num_examples,
                 cfg.label_fraction, cfg.train_split, path)
  train_steps = model_lib.get_train_steps(num_examples, cfg.train_batch_size, cfg.train_epochs,
                                          cfg.train_steps)
  loop_steps = min(steps_per_loop(cfg, num_examples), train_steps, cfg.knn_eval_steps or train_steps)
  warmup_steps = model_lib.get_warmup_steps(cfg.warmup_epochs, num_examples, cfg.train_batch_size)
  if warmup_steps >= train_steps:
    raise UsageError(f'--warmup_epochs={cfg.warmup_epochs} ({warmup_steps} steps) is not shorter than the '
                     f'{train_steps} training steps: lower it or train longer.')
  logging.info('# train examples: %d, # train steps: %d, steps per loop: %d', num_examples, train_steps,
               loop_steps)

  dataset = data_lib.build_distributed_dataset(
      strategy, cfg.train_batch_size, source, cfg.train_split, is_training=True, train_mode=cfg.train_mode,
      image_size=cfg.image_size, color_jitter_strength=cfg.color_jitter_strength, use_blur=cfg.use_blur,
      cache=cfg.cache_dataset, subset_ids=subset_ids)

  with strategy.scope():
    model, optimizer, schedule = build_training(cfg, strategy, max(source.num_classes, 1), num_examples)
    names = ['train/total_loss', 'train/weight_decay']
    if cfg.train_mode == 'pretrain':
      names += ['train/contrast_loss', 'train/contrast_acc', 'train/contrast_entropy']
    if cfg.train_mode == 'distill':
      names += ['train/distill_loss', 'train/teacher_agreement']
    if model.supervised_head is not None and (cfg.train_mode != 'distill' or cfg.distill_alpha):
      names += ['train/supervised_loss', 'train/supervised_acc']
    loop_metrics = {name: keras.metrics.Mean(name) for name in names}

  # Every worker resumes from the chief's checkpoints in model_dir (shared storage when multi-worker); the
  # others must still save (saving can involve collectives), into a local scratch dir deleted at the end.
  output_dir = cfg.model_dir if chief else tempfile.mkdtemp(prefix='simclr-worker-')
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
  manager = tf.train.CheckpointManager(checkpoint, output_dir, max_to_keep=cfg.keep_checkpoint_max,
                                       checkpoint_name='ckpt', step_counter=optimizer.iterations)
  latest = tf.train.latest_checkpoint(cfg.model_dir)
  if latest:
    checkpoint.read(latest).assert_existing_objects_matched()
    logging.info('Restored checkpoint %s (step %d)', latest, optimizer.iterations.numpy())
  elif cfg.train_mode != 'pretrain' and cfg.checkpoint:
    restore_for_finetuning(model, cfg.checkpoint)
    if cfg.zero_init_logits_layer:
      for variable in model.supervised_head.trainable_variables:
        variable.assign(tf.zeros_like(variable))

  teacher = load_teacher(cfg, strategy, source) if cfg.train_mode == 'distill' else None
  train_step = make_train_step(cfg, model, optimizer, strategy, teacher)

  @tf.function
  def train_loop(iterator, steps):
    for _ in tf.range(steps):
      images, labels = next(iterator)
      values = strategy.run(train_step, args=(images, labels))
      for name, value in values.items():
        loop_metrics[name].update_state(strategy.reduce('MEAN', value, axis=None))

  writer = tf.summary.create_file_writer(output_dir)
  iterator = iter(dataset)
  progress = Progress(int(optimizer.iterations.numpy()), train_steps, cfg.train_batch_size)
  _write_augmented_views(writer, iterator, strategy, int(optimizer.iterations.numpy()), chief)
  while (previous := int(optimizer.iterations.numpy())) < train_steps:
    start = time.perf_counter()
    train_loop(iterator, tf.constant(min(loop_steps, train_steps - previous)))  # the last loop may be shorter
    seconds = time.perf_counter() - start
    step = int(optimizer.iterations.numpy())
    with writer.as_default():
      values = metrics_lib.log_and_write_metrics(loop_metrics.values(), step)
      learning_rate = float(schedule(step - 1))
      tf.summary.scalar('train/learning_rate', learning_rate, step=step)
      if cfg.knn_eval_steps and (step // cfg.knn_eval_steps > previous // cfg.knn_eval_steps or
                                 step == train_steps) and source.num_classes > 1:
        knn = knn_monitor(cfg, source, model)
        tf.summary.scalar('knn/top_1_accuracy', knn, step=step)
        logging.info('Step %d: kNN top-1 %.4f', step, knn)
        values['knn/top_1_accuracy'] = knn
    if not all(math.isfinite(v) for v in values.values()):
      raise FloatingPointError(
          f'Training diverged at step {step}: {values}. No checkpoint was written for this state; the last '
          f'good one is {manager.latest_checkpoint}. Try a lower --learning_rate or a larger --warmup_epochs.')
    manager.save(checkpoint_number=step)
    progress.update(step, seconds, values, learning_rate)
    for metric in loop_metrics.values():
      metric.reset_state()
  writer.close()
  if not chief:
    shutil.rmtree(output_dir, ignore_errors=True)
  return model, manager


def _write_augmented_views(writer, iterator, strategy, step, chief):
  """A few augmented training inputs to TensorBoard, once, so a user can see what the model sees."""
  if not chief:
    return
  images, _ = next(iterator)
  local = strategy.experimental_local_results(images)[0][:4]
  views = tf.concat(tf.split(local, local.shape[-1] // 3, axis=-1), axis=2)  # views side by side
  with writer.as_default():
    tf.summary.image('train/augmented_views', views, step=step, max_outputs=4)


class Progress:
  """A progress bar on a terminal; one line per loop otherwise. Shows step, loss, images/s and ETA."""

  def __init__(self, start_step, total_steps, batch_size):
    self.last_step = start_step
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.bar = keras.utils.Progbar(total_steps, stateful_metrics=['loss', 'images/s', 'lr']) \
        if sys.stdout.isatty() else None

  def update(self, step, seconds, values, learning_rate):
    steps_done = max(step - self.last_step, 1)
    self.last_step = step
    images_per_sec = steps_done * self.batch_size / max(seconds, 1e-9)
    loss = values['train/total_loss']
    if self.bar is not None:
      self.bar.update(step, [('loss', loss), ('images/s', images_per_sec), ('lr', learning_rate)])
      return
    eta = (self.total_steps - step) * seconds / steps_done
    extra = ''.join(f' | {label} {values[name]:.3f}' for name, label in
                    (('train/contrast_acc', 'contrast_acc'), ('train/supervised_acc', 'supervised_acc'),
                     ('train/teacher_agreement', 'teacher_agreement'), ('knn/top_1_accuracy', 'knn_top1'))
                    if name in values)
    print(f'step {step}/{self.total_steps} | loss {loss:.4f}{extra} | {images_per_sec:.0f} img/s | '
          f'ETA {_duration(eta)}', flush=True)


def _duration(seconds):
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'


# ------------------------------------------------------------------------------------------- eval


def evaluate(cfg, strategy, source, model, step, chief, extra=None):
  """Top-1 / top-5 of the supervised head on --eval_split, and the regularization loss; writes results."""
  dataset = data_lib.build_distributed_dataset(
      strategy, cfg.eval_batch_size, source, cfg.eval_split, is_training=False, image_size=cfg.image_size,
      cache=cfg.cache_dataset)

  def eval_step(images, labels):
    logits = model(images, training=False)['logits_sup']
    count = tf.reduce_sum(labels)  # one-hot rows; unlabeled rows count as 0
    hits = lambda k: tf.reduce_sum(tf.cast(tf.math.in_top_k(tf.argmax(labels, 1, output_type=tf.int32),
                                                            logits, k), tf.float32) * tf.reduce_sum(labels, 1))
    return tf.stack([hits(1), hits(min(5, logits.shape[-1])), count])

  @tf.function
  def run_eval_step(images, labels):
    return strategy.reduce('SUM', strategy.run(eval_step, args=(images, labels)), axis=None)

  totals = tf.zeros([3])
  for batch_index, (images, labels) in enumerate(dataset):
    if cfg.eval_steps and batch_index >= cfg.eval_steps:
      break
    totals += run_eval_step(images, labels)
  top1, top5, count = (float(t) for t in totals.numpy())
  result = {
      'eval/label_top_1_accuracy': top1 / max(count, 1),
      'eval/label_top_5_accuracy': top5 / max(count, 1),
      'eval/regularization_loss': float(model_lib.weight_decay_loss(model.trainable_variables,
                                                                    cfg.weight_decay)),
      'eval/num_examples': int(count),
      'global_step': step,
      **(extra or {}),
  }
  logging.info('Eval results at step %d: %s', step, result)
  if chief:
    eval_dir = os.path.join(cfg.model_dir, 'eval_' + cfg.eval_name if cfg.eval_name else 'eval')
    with tf.summary.create_file_writer(eval_dir).as_default():
      for key, value in result.items():
        if key.startswith('eval/'):
          tf.summary.scalar(key, value, step=step)
    for name in ('result.json', f'result_{step}.json'):
      with tf.io.gfile.GFile(os.path.join(cfg.model_dir, name), 'w') as f:
        json.dump(result, f, indent=1)
    with tf.io.gfile.GFile(os.path.join(cfg.model_dir, 'flags.json'), 'w') as f:
      json.dump(dataclasses.asdict(cfg), f, indent=1)
    export(model, cfg, step)
  return result


def frozen_features(cfg, source, net, train):
  """(`final_avg_pool` features, labels) through `net` in inference mode, eval preprocessing: of the train split
  (at most --linear_eval_max_examples) when `train`, else of the eval split (--eval_steps batches, or all)."""
  split = cfg.train_split if train else cfg.eval_split
  max_examples = cfg.linear_eval_max_examples if train else cfg.eval_steps * cfg.eval_batch_size or None
  dataset = data_lib.build_dataset(source, split, cfg.eval_batch_size, is_training=False,
                                   image_size=cfg.image_size, cache=cfg.cache_dataset)
  return linear_eval_lib.extract_features(net, dataset, max_examples=max_examples)


def knn_monitor(cfg, source, model):
  """Weighted-kNN top-1 on --eval_split with train features as the bank: a label-free training signal."""
  return linear_eval_lib.knn_eval(
      *frozen_features(cfg, source, model, train=True), *frozen_features(cfg, source, model, train=False),
      num_classes=source.num_classes, k=cfg.knn_k, temperature=cfg.knn_temperature)['top_1_accuracy']


def frozen_linear_eval(cfg, strategy, source, model):
  """Logistic regression on frozen `final_avg_pool` features of the pretrained and of a random encoder."""
  with strategy.scope():
    random_model = build_model(cfg, max(source.num_classes, 1), strategy.num_replicas_in_sync)
  result = {}
  for name, net in (('', model), ('random_init_', random_model)):
    start = time.perf_counter()
    outcome = linear_eval_lib.linear_eval(
        *frozen_features(cfg, source, net, train=True), *frozen_features(cfg, source, net, train=False),
        num_classes=source.num_classes)
    result[f'linear_eval/{name}top_1_accuracy'] = outcome['top_1_accuracy']
    logging.info('Linear evaluation (%s): %s in %.0f s', name.rstrip('_') or 'pretrained', outcome,
                 time.perf_counter() - start)
  return result


def embedding_plot(cfg, strategy, source):
  """--mode=embed_plot: PCA of --eval_split features, a random encoder (left) next to the trained one (right),
  as model_dir/embedding.png. The trained one: the latest checkpoint of model_dir, else --checkpoint."""
  with strategy.scope():
    random_model, trained = (build_model(cfg, max(source.num_classes, 1), strategy.num_replicas_in_sync)
                             for _ in range(2))
  latest = tf.train.latest_checkpoint(cfg.model_dir)
  if latest:
    tf.train.Checkpoint(model=trained).read(latest).expect_partial()
  else:
    restore_for_finetuning(trained, cfg.checkpoint)
  panels = [frozen_features(cfg, source, net, train=False) for net in (random_model, trained)]
  tf.io.gfile.makedirs(cfg.model_dir)
  return embed_plot_lib.save_embedding_plot(os.path.join(cfg.model_dir, 'embedding.png'), panels)


def restore_for_eval(model, path):
  """Restores the model of a training checkpoint `<model_dir>/ckpt-<step>`; returns that global step.

  `train` names every checkpoint by the optimizer's iteration count, so the name is the step whatever the
  optimizer's structure (under mixed_float16 the counter sits inside the loss-scale optimizer).
  """
  tf.train.Checkpoint(model=model).read(path).expect_partial()
  return int(os.path.basename(path).rsplit('-', 1)[1])


def eval_checkpoints(cfg, strategy, source, chief):
  """--mode=eval: evaluates each checkpoint of model_dir as it appears, until --eval_timeout passes idle."""
  with strategy.scope():
    model = build_model(cfg, max(source.num_classes, 1), strategy.num_replicas_in_sync)
  last_step = final_step(cfg, source)
  result = None
  for path in tf.train.checkpoints_iterator(cfg.model_dir, min_interval_secs=1, timeout=cfg.eval_timeout):
    result = evaluate(cfg, strategy, source, model, restore_for_eval(model, path), chief)
    if result['global_step'] >= last_step:
      break
  return result



# ------------------------------------------------------------------------------------------- export


class ExportModule(tf.Module):
  """What a SavedModel export holds: `module(images, trainable)` -> dict of named endpoints.

  The interface of the SimCLR authors' released models (so code written for them works), plus a
  `serving_default` signature so Keras 3's `keras.layers.TFSMLayer(path)` can load it. Images: float [0, 1],
  `[B, H, W, 3]`, any size.
  """

  def __init__(self, model):
    super().__init__()
    self.model = model

  @tf.function
  def __call__(self, images, trainable=False):
    outputs = self.model(images, training=trainable)
    return {key: value for key, value in outputs.items() if value is not None}


def export(model, cfg, step):
  """Writes model_dir/saved_model/<step>/ atomically (temporary dir, then rename) and prunes old exports."""
  root = os.path.join(cfg.model_dir, 'saved_model')
  final = os.path.join(root, str(step))
  tmp = final + '.tmp'
  if tf.io.gfile.exists(tmp):
    tf.io.gfile.rmtree(tmp)
  module = ExportModule(model)
  spec = tf.TensorSpec([None, None, None, 3], tf.float32, name='images')
  module.__call__.get_concrete_function(spec, trainable=True)
  module.__call__.get_concrete_function(spec, trainable=False)
  serving = tf.function(lambda images: module(images, trainable=False), input_signature=[spec])
  tf.saved_model.save(module, tmp, signatures={'serving_default': serving})
  if tf.io.gfile.exists(final):
    tf.io.gfile.rmtree(final)
  tf.io.gfile.rename(tmp, final)
  exports = sorted((int(d.rstrip('/')) for d in tf.io.gfile.listdir(root) if d.rstrip('/').isdigit()))
  for old in exports[:-cfg.keep_hub_module_max] if cfg.keep_hub_module_max > 0 else []:
    tf.io.gfile.rmtree(os.path.join(root, str(old)))
  logging.info('Exported SavedModel to %s', final)
  return final


# ------------------------------------------------------------------------------------------- main


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cfg = Config.from_flags()
  try:
    strategy = build_strategy(cfg)
    validate(cfg, strategy.num_replicas_in_sync)
    source = data_lib.load_source(cfg.dataset, cfg.data_dir, cfg.strict_images)
  except (UsageError, data_lib.DataError) as error:
    sys.exit(f'Error: {error}')
  if cfg.lineareval_while_pretraining and source.num_classes == 0 and cfg.train_mode == 'pretrain':
    logging.warning('%s has no labels: no online linear evaluation.', source.name)
    cfg = dataclasses.replace(cfg, lineareval_while_pretraining=False)
  chief = is_chief(strategy)
  if chief:
    tf.io.gfile.makedirs(cfg.model_dir)

  if cfg.mode == 'eval':
    eval_checkpoints(cfg, strategy, source, chief)
    return
  if cfg.mode == 'embed_plot':
    print(f'Embedding plot (random encoder | trained): {embedding_plot(cfg, strategy, source)}', flush=True)
    return
  try:
    model, manager = train(cfg, strategy, source, chief)
  except UsageError as error:
    sys.exit(f'Error: {error}')
  if cfg.mode == 'train_then_eval':
    extra = {}
    if cfg.train_mode == 'pretrain' and cfg.linear_eval and source.num_classes > 1:
      extra = frozen_linear_eval(cfg, strategy, source, model)
    result = evaluate(cfg, strategy, source, model, int(manager.checkpoint.optimizer.iterations.numpy()),
                      chief, extra)
    head = {'pretrain': 'Online linear head', 'finetune': 'Fine-tuned model', 'linear_eval': 'Linear evaluation',
            'distill': 'Distilled student'}[cfg.train_mode]
    print(f'{head} ({cfg.eval_split}): top-1 {result["eval/label_top_1_accuracy"]:.4f}, '
          f'top-5 {result["eval/label_top_5_accuracy"]:.4f} (step {result["global_step"]})', flush=True)
    if extra:
      print(f'Linear evaluation on frozen features ({cfg.eval_split}): top-1 '
            f'{extra["linear_eval/top_1_accuracy"]:.4f} pretrained vs '
            f'{extra["linear_eval/random_init_top_1_accuracy"]:.4f} random init', flush=True)
    print(f'Results: {os.path.join(cfg.model_dir, "result.json")}', flush=True)


if __name__ == '__main__':
  app.run(main)
