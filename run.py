r"""SimCLR: pretrain, fine-tune, evaluate, distill and export, with one command.

  python run.py                      # pretrain on the embedded dataset, then report linear-eval accuracy
  python run.py --flagfile=configs/cifar10_pretrain.cfg --data_dir=...
  python run.py --train_mode=finetune --checkpoint=runs/simclr_shapes --label_fraction=0.1 ...
  python run.py --mode=eval --model_dir=...
  python run.py --mode=export --checkpoint=<the authors' r50_1x_sk0/saved_model> --model_dir=...

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

import progress  # imports no TensorFlow: decides how much TensorFlow may print while it loads
import runtime  # imports no TensorFlow: which CPU kernels it loads

runtime.use_onednn()

ROOT = os.path.dirname(os.path.abspath(__file__))
DETAIL = progress.wants_detail(sys.argv)
if not DETAIL:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # C++ info, warnings and CUDA probing errors

with progress.native_stderr_silenced(not DETAIL):  # what TensorFlow's C++ prints while loading, before any level
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags
  from absl import logging
  import keras
  import tensorflow as tf

  import data as data_lib
  import embed_plot as embed_plot_lib
  import linear_eval as linear_eval_lib
  import loop as loop_lib
  import metrics as metrics_lib
  import model as model_lib
  import model_io
  import objective as obj_lib
  import resnet

FLAG_NAMES = []


def _define(kind, name, default, *args, **kwargs):
  getattr(flags, f'DEFINE_{kind}')(name, default, *args, **kwargs)
  FLAG_NAMES.append(name)


FLAGS = flags.FLAGS

# Defaults are the CPU recipe for the embedded dataset (`python run.py` in about 2 minutes on 2 fast cores, so
# under 10 on the slowest machines): the authors' CIFAR-10 choices (LARS, temperature 0.5, colour strength 0.5, no
# blur) at batch 128 for 10 epochs.
# configs/ holds the paper's recipes.

# --- what to run
_define('enum', 'mode', 'train_then_eval', ['train', 'eval', 'train_then_eval', 'embed_plot', 'export'],
        'What to do. eval: the checkpoints of model_dir as they appear, or the model of --checkpoint once. '
        'embed_plot: a PNG of 2-D PCA projections of the eval split\'s features, for the model in '
        'model_dir (or --checkpoint) and a random encoder. export: model_dir/saved_model/<step>/ from '
        '--checkpoint (or model_dir\'s latest checkpoint), no training.')
_define('enum', 'train_mode', 'pretrain', list(model_lib.TRAIN_MODES),
        'pretrain: contrastive learning (+ online linear eval); finetune: supervised from --checkpoint; '
        'linear_eval: a linear head on the frozen encoder of --checkpoint; distill: learn the '
        'predictions of --teacher on the (unlabeled) train images.')
_define('string', 'model_dir', 'runs/simclr_shapes', 'Checkpoints, summaries, results and exports go here.')
# --- data
_define('string', 'dataset', data_lib.EMBEDDED_DATASET,
        'A TFDS name, an image folder <root>/<split>/<class>/<image>, or the embedded '
        f'{data_lib.EMBEDDED_DATASET}.')
_define('string', 'data_dir', None, 'TFDS data directory (default: ~/tensorflow_datasets).')
_define('string', 'train_split', 'train', 'Split to train on.')
_define('string', 'eval_split', 'test', 'Split to evaluate on.')
_define('bool', 'cache_dataset', False, 'Cache decoded examples in memory (small datasets).')
_define('float', 'label_fraction', 1.0, 'Fine-tune on this class-balanced fraction of the train labels.')
_define('integer', 'label_fraction_seed', 0, 'Seed of the label-fraction subset.')
_define('bool', 'strict_images', False, 'Fail on a corrupt image file instead of skipping it.')
_define('integer', 'image_size', 32, 'Input image size.')
_define('float', 'color_jitter_strength', 0.5, 'Colour distortion strength s.')
_define('float', 'crop_min_area', 0.08, 'Smallest random training crop, as a fraction of the image area '
        '(the paper: 0.08).')
_define('bool', 'use_blur', False, 'Gaussian blur in pretraining (the paper uses it for ImageNet).')
# --- schedule and optimisation
_define('integer', 'train_batch_size', 128, 'Global training batch size.')
_define('integer', 'train_epochs', 10, 'Training epochs (ignored when train_steps > 0).')
_define('integer', 'train_steps', 0, 'Training steps; 0 = from train_epochs.')
_define('float', 'warmup_epochs', 1, 'Linear warmup epochs.')
_define('float', 'learning_rate', 2.0, 'Base learning rate (scaled by learning_rate_scaling).')
_define('enum', 'learning_rate_scaling', 'linear', list(model_lib.LR_SCALINGS),
        'linear: lr * B / 256; sqrt: lr * sqrt(B).')
_define('float', 'weight_decay', 1e-4, 'L2 weight decay.')
_define('enum', 'optimizer', 'lars', list(model_lib.OPTIMIZERS), 'Optimizer.')
_define('float', 'momentum', 0.9, 'Momentum.')
_define('integer', 'checkpoint_epochs', 1, 'Checkpoint (and log) every this many epochs.')
_define('integer', 'checkpoint_steps', 0, 'Checkpoint every this many steps; overrides checkpoint_epochs.')
_define('integer', 'train_summary_steps', 0,
        'Progress line and TensorBoard training scalars every this many steps; 0 = about every 30 s '
        '(and at every checkpoint).')
_define('integer', 'keep_checkpoint_max', 5, 'Checkpoints to keep.')
_define('integer', 'keep_hub_module_max', 1, 'SavedModel exports to keep.')
# --- evaluation
_define('integer', 'eval_batch_size', 256, 'Global evaluation batch size.')
_define('integer', 'eval_steps', 0, 'Evaluation steps; 0 = the whole eval split.')
_define('string', 'eval_name', None, 'Name of the evaluation (subdirectory of its summaries).')
_define('integer', 'eval_timeout', 0, '--mode=eval waits this many seconds for new checkpoints, then ends.')
_define('bool', 'linear_eval', True,
        'After pretraining (train_then_eval), fit a logistic regression on frozen features of the '
        'pretrained and of a randomly initialised encoder, and report both.')
_define('integer', 'linear_eval_max_examples', 20000, 'Training examples the linear evaluation uses, at most.')
_define('enum', 'linear_eval_endpoint', 'final_avg_pool', list(model_lib.resnet.ENDPOINTS),
        '--train_mode=linear_eval: the encoder endpoint the linear head reads (spatial ones pooled).')
_define('integer', 'knn_eval_steps', 0,
        'Pretraining: every this many steps, weighted-kNN top-1 of frozen features on --eval_split '
        '(the train split as memory bank); 0 = off.')
_define('integer', 'knn_k', 200, 'Neighbours of the kNN monitor.')
_define('float', 'knn_temperature', 0.1, 'Temperature of the kNN monitor\'s vote weights exp(sim / t).')
# --- model
_define('integer', 'resnet_depth', 18, 'ResNet depth: 18, 34, 50, 101, 152 or 200.')
_define('float', 'width_multiplier', 0.25, 'ResNet width multiplier (1, 2, 3, 4, or a fraction).')
_define('float', 'sk_ratio', 0.0, 'Selective kernel ratio (SimCLRv2: 0.0625); 0 disables.')
_define('float', 'se_ratio', 0.0, 'Squeeze-excitation ratio; 0 disables.')
_define('bool', 'cifar_stem', None, '3x3 stride-1 stem without max-pool; default: when --image_size <= 32.')
_define('bool', 'global_bn', True, 'Aggregate BatchNorm statistics across replicas.')
_define('float', 'batch_norm_decay', 0.9, 'BatchNorm moving-average decay.')
_define('enum', 'precision', 'float32', list(model_lib.PRECISIONS),
        'Keras dtype policy. mixed_bfloat16 for TPUs and CPUs with AMX/AVX512-BF16, mixed_float16 '
        '(with dynamic loss scaling) for GPUs. BatchNorm statistics, NT-Xent and softmax stay float32.')
_define('bool', 'jit_compile', False, 'Compile the train step with XLA (off by default: slower on CPU).')
_define('enum', 'proj_head_mode', 'nonlinear', list(model_lib.PROJ_HEAD_MODES), 'Projection head.')
_define('integer', 'proj_out_dim', 128, 'Projection output dimension.')
_define('integer', 'num_proj_layers', 3, 'Layers of the nonlinear projection head.')
_define('integer', 'ft_proj_selector', 0, 'Projection-head layer to fine-tune from (0 = its input, -1 = its last).')
_define('bool', 'lineareval_while_pretraining', True, 'Train a linear head on stop-gradient features.')
_define('float', 'temperature', 0.5, 'NT-Xent temperature.')
_define('bool', 'hidden_norm', True, 'L2-normalise projections before NT-Xent (cosine similarity).')
# --- fine-tuning
_define('string', 'checkpoint', None,
        'The model to start from (fine-tune, linear_eval, pretrain) or to use (eval, embed_plot, '
        'export): a SavedModel or training checkpoint (prefix or folder) of this project or of the '
        'SimCLR authors\' tf2 code, e.g. gs://simclr-checkpoints-tf2/simclrv2/pretrained/r50_1x_sk0. '
        'The network comes from the file; model flags given explicitly must agree with it.')
_define('bool', 'random_init', False, 'Fine-tune from a random initialisation (baselines) instead.')
_define('bool', 'zero_init_logits_layer', False, 'Start the supervised head at zero.')
_define('string', 'teacher', None,
        '--train_mode=distill: the teacher, any model --checkpoint accepts, with a supervised head '
        '(its network comes from the file; the model flags describe the student).')
_define('float', 'distill_temperature', 1.0, 'Softmax temperature of teacher and student in distillation.')
_define('float', 'distill_alpha', 0.0,
        'Weight of the labeled cross-entropy added to the distillation loss (0: unlabeled only).')
_define('integer', 'fine_tune_after_block', -1,
        'Freeze the encoder up to block group k (0 = the stem, 4 = all: linear evaluation).')
# --- where to run
_define('bool', 'use_tpu', False, 'Run on a Cloud TPU.')
_define('string', 'tpu_name', None, 'Cloud TPU name (or grpc:// address).')
_define('string', 'tpu_zone', None, 'Cloud TPU zone.')
_define('string', 'gcp_project', None, 'GCP project of the TPU.')
_define('string', 'master', None, 'TPU master address, for the TPU cluster resolver.')




class _ConfigMethods:
  """Methods of `Config`: every flag value of run.py, read once; the rest of the program takes it, not FLAGS."""

  @classmethod
  def from_flags(cls):
    return cls(**{name: getattr(FLAGS, name) for name in FLAG_NAMES})

  @classmethod
  def defaults(cls, **overrides):
    """The flags' default values with `overrides` (for scripts, notebooks and tests)."""
    return cls(**{**{name: FLAGS[name].default for name in FLAG_NAMES}, **overrides})

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)

  @property
  def use_cifar_stem(self):
    return self.image_size <= 32 if self.cifar_stem is None else self.cifar_stem


Config = dataclasses.make_dataclass('Config', FLAG_NAMES, bases=(_ConfigMethods,), frozen=True)


def explicit_flags():
  """Names of the flags given on the command line (or in a --flagfile), not left at their defaults."""
  return frozenset(name for name in FLAG_NAMES if FLAGS[name].present)


class UsageError(ValueError):
  """A flag combination that cannot work; the message names the flag."""


# Modes that train a classifier on (a fraction of) the labels, starting from --checkpoint.
LABELED_MODES = ('finetune', 'linear_eval')
# Flags of --mode=eval / embed_plot that describe this evaluation, not the run it evaluates (taken from the
# run's flags.json otherwise).
SESSION_FLAGS = frozenset({
    'mode', 'model_dir', 'eval_split', 'eval_batch_size', 'eval_steps', 'eval_name', 'eval_timeout', 'checkpoint',
    'teacher', 'random_init', 'use_tpu', 'tpu_name', 'tpu_zone', 'gcp_project', 'master', 'keep_checkpoint_max',
    'keep_hub_module_max', 'strict_images', 'cache_dataset', 'jit_compile', 'linear_eval', 'linear_eval_max_examples'})


def validate(cfg, num_replicas=1):
  """Fails fast, with one line naming the flag, on combinations that would fail later or silently."""
  depth = {'none': 0, 'linear': 1}.get(cfg.proj_head_mode, cfg.num_proj_layers)
  checks = [
      (cfg.train_batch_size < 1, f'--train_batch_size must be >= 1, got {cfg.train_batch_size}.'),
      (cfg.eval_batch_size < 1, f'--eval_batch_size must be >= 1, got {cfg.eval_batch_size}.'),
      (cfg.train_batch_size % num_replicas != 0,
       f'--train_batch_size={cfg.train_batch_size} is not divisible by the {num_replicas} replicas.'),
      (cfg.eval_batch_size % num_replicas != 0,
       f'--eval_batch_size={cfg.eval_batch_size} is not divisible by the {num_replicas} replicas.'),
      (cfg.resnet_depth not in resnet.SUPPORTED_DEPTHS,
       f'--resnet_depth must be one of {", ".join(map(str, resnet.SUPPORTED_DEPTHS))}, got {cfg.resnet_depth}.'),
      (not cfg.width_multiplier > 0 or resnet.channels(64, cfg.width_multiplier) < 2,
       f'--width_multiplier must be > 0 and leave at least 2 stem channels (>= 1/32), got {cfg.width_multiplier}.'),
      (cfg.sk_ratio > 0 and cfg.width_multiplier > 0 and cfg.resnet_depth in resnet.SUPPORTED_DEPTHS and
       not resnet.selective_kernels_fit(cfg.resnet_depth, cfg.width_multiplier),
       f'--width_multiplier={cfg.width_multiplier} with --sk_ratio: selective kernels need even widths, and '
       f'{resnet.selective_kernel_widths(cfg.width_multiplier)} are not all even.'),
      (not 0 <= cfg.sk_ratio < 1, f'--sk_ratio must be in [0, 1) (SimCLRv2: 0.0625), got {cfg.sk_ratio}.'),
      (not 0 <= cfg.se_ratio <= 1, f'--se_ratio must be in [0, 1], got {cfg.se_ratio}.'),
      (cfg.proj_out_dim < 1, f'--proj_out_dim must be >= 1, got {cfg.proj_out_dim}.'),
      (cfg.proj_head_mode == 'nonlinear' and cfg.num_proj_layers < 1,
       f'--num_proj_layers must be >= 1 for --proj_head_mode=nonlinear, got {cfg.num_proj_layers}.'),
      (not -depth - 1 <= cfg.ft_proj_selector <= depth,
       f'--ft_proj_selector must be in 0..{depth} (or -1 for the last) for a {cfg.proj_head_mode} head of {depth} '
       f'layer(s), got {cfg.ft_proj_selector}.'),
      (cfg.fine_tune_after_block not in range(-1, 5), f'--fine_tune_after_block must be in -1..4, got '
                                                       f'{cfg.fine_tune_after_block}.'),
      (not 0 < cfg.batch_norm_decay < 1, f'--batch_norm_decay must be in (0, 1), got {cfg.batch_norm_decay}.'),
      (cfg.train_mode == 'pretrain' and cfg.fine_tune_after_block != -1,
       '--fine_tune_after_block freezes layers, which pretraining does not support: set it to -1.'),
      (cfg.mode in ('eval', 'train_then_eval') and cfg.train_mode == 'pretrain' and
       not cfg.lineareval_while_pretraining and not (cfg.mode == 'eval' and cfg.checkpoint),
       f'--mode={cfg.mode} has nothing to evaluate: pretraining without --lineareval_while_pretraining has no '
       'classifier. Use --mode=train, or keep the online linear head.'),
      (not 0 < cfg.label_fraction <= 1, f'--label_fraction must be in (0, 1], got {cfg.label_fraction}.'),
      (cfg.label_fraction < 1 and cfg.train_mode not in LABELED_MODES,
       '--label_fraction applies to --train_mode=finetune or linear_eval; pretraining and distillation use '
       'every (unlabeled) train image.'),
      (cfg.train_mode == 'linear_eval' and cfg.fine_tune_after_block not in (-1, 4),
       '--train_mode=linear_eval freezes the whole encoder: leave --fine_tune_after_block at -1 (or 4).'),
      (cfg.train_mode == 'distill' and cfg.mode in ('train', 'train_then_eval') and not cfg.teacher,
       '--train_mode=distill needs --teacher (a SavedModel, model_dir or checkpoint of a fine-tuned model).'),
      (cfg.teacher and cfg.train_mode != 'distill', '--teacher applies to --train_mode=distill only.'),
      (cfg.distill_temperature <= 0, f'--distill_temperature must be > 0, got {cfg.distill_temperature}.'),
      (cfg.knn_eval_steps < 0 or (cfg.knn_eval_steps and cfg.train_mode != 'pretrain'),
       '--knn_eval_steps monitors pretraining: use it with --train_mode=pretrain, >= 0.'),
      (cfg.knn_k < 1 or cfg.knn_temperature <= 0, '--knn_k must be >= 1 and --knn_temperature > 0.'),
      (cfg.train_steps < 0 or cfg.train_epochs < 0, '--train_steps and --train_epochs must be >= 0.'),
      (cfg.train_steps == 0 and cfg.train_epochs == 0, 'One of --train_steps or --train_epochs must be > 0.'),
      (cfg.warmup_epochs < 0, f'--warmup_epochs must be >= 0, got {cfg.warmup_epochs}.'),
      (cfg.checkpoint_epochs < 1 and not cfg.checkpoint_steps,
       f'--checkpoint_epochs must be >= 1 (or set --checkpoint_steps), got {cfg.checkpoint_epochs}.'),
      (cfg.checkpoint_steps < 0 or cfg.train_summary_steps < 0,
       '--checkpoint_steps and --train_summary_steps must be >= 0.'),
      (cfg.temperature <= 0, f'--temperature must be > 0, got {cfg.temperature}.'),
      (cfg.image_size < 8, f'--image_size must be >= 8, got {cfg.image_size}.'),
      (not 0 < cfg.crop_min_area <= 1, f'--crop_min_area must be in (0, 1], got {cfg.crop_min_area}.'),
      (cfg.checkpoint and cfg.random_init, '--checkpoint and --random_init are exclusive.'),
      (cfg.use_tpu and not (cfg.tpu_name or cfg.master),
       '--use_tpu needs --tpu_name: the TPU node\'s name, or --tpu_name=local on a TPU VM.'),
      (cfg.jit_compile and num_replicas > 1 and not cfg.use_tpu,
       f'--jit_compile needs one replica ({num_replicas} here): XLA cannot compile MirroredStrategy\'s '
       'cross-replica BatchNorm and gather. (On TPUs the step is always compiled.)'),
  ]
  for failed, message in checks:
    if failed:
      raise UsageError(message)
  has_checkpoint = lambda: bool(model_io.checkpoint_paths(cfg.model_dir))
  if cfg.train_mode in LABELED_MODES and cfg.mode in ('train', 'train_then_eval') and not (
      cfg.checkpoint or cfg.random_init or has_checkpoint()):
    raise UsageError(f'--train_mode={cfg.train_mode} needs --checkpoint (a pretrained checkpoint, model_dir or '
                     f'SavedModel), a checkpoint in --model_dir={cfg.model_dir} to resume, or --random_init.')
  if cfg.mode in ('embed_plot', 'export') and not (cfg.checkpoint or has_checkpoint()):
    raise UsageError(f'--mode={cfg.mode} needs a checkpoint in --model_dir={cfg.model_dir} or --checkpoint.')
  if cfg.mode == 'eval' and not cfg.checkpoint and not has_checkpoint() and cfg.eval_timeout <= 0:
    raise UsageError(f'--mode=eval found no checkpoint in --model_dir={cfg.model_dir} (and --eval_timeout=0).')


# ------------------------------------------------------------------------------------------- configuration


def run_flags(cfg, explicit):
  """--mode=eval / embed_plot of model_dir: the run's own flags (model, weight decay, label fraction, data...)
  from its flags.json, except those given here and those of the evaluation itself (`SESSION_FLAGS`)."""
  path = os.path.join(cfg.model_dir, model_io.FLAGS_FILE)
  if cfg.mode not in ('eval', 'embed_plot', 'export') or cfg.checkpoint or not tf.io.gfile.exists(path):
    return cfg
  with tf.io.gfile.GFile(path) as f:
    saved = json.load(f)
  inherited = {name: value for name, value in saved.items()
               if name in FLAG_NAMES and name not in explicit and name not in SESSION_FLAGS}
  logging.info('Flags of the run from %s: %s', path, inherited)
  return cfg.replace(**inherited)


def adopt_architecture(cfg, explicit, file, flag='checkpoint'):
  """`cfg` with the network of a model file: its model flags replace those left at their defaults; one given
  explicitly that would build another network stops the run. For fine-tuning, the file's supervised head
  position is kept unless --ft_proj_selector is given."""
  arch = file.architecture
  given = {name: getattr(cfg, name) for name in explicit}
  conflicts = arch.contradictions(given)
  if conflicts:
    name, value, theirs = conflicts[0]
    raise UsageError(f'--{name}={value} contradicts --{flag}={file.path}, whose network has {name}={theirs} '
                     f'({arch.describe()}): drop --{name}, the network comes from the file.')
  changes = {name: value for name, value in arch.model_flags().items() if name not in explicit}
  if arch.num_classes is not None and arch.linear_eval_endpoint is None and 'ft_proj_selector' not in explicit:
    changes['ft_proj_selector'] = arch.ft_proj_selector
  return cfg.replace(**changes)


def as_file_model(cfg, file):
  """`cfg` that builds the file's network with its heads as they are (eval, export, embedding plot, teacher)."""
  return cfg.replace(**file.architecture.as_is_flags())


def model_file(cfg, flag, read=model_io.inspect):
  """`read(path)` of --checkpoint / --teacher (`model_io.inspect`, or `model_io.resolve` to check the path
  without running TensorFlow), None without the flag; a bad path or file is a UsageError naming the flag."""
  path = getattr(cfg, flag)
  if not path:
    return None
  try:
    return read(path)
  except model_io.ModelFileError as error:
    raise UsageError(f'--{flag}={error}' if str(error).startswith(path) else f'--{flag}={path}: {error}') from None


# ------------------------------------------------------------------------------------------- strategy


def build_strategy(cfg):
  """TPUStrategy with --use_tpu; MultiWorkerMirroredStrategy when TF_CONFIG names several workers;
  MirroredStrategy over several local GPUs; else the default (one device)."""
  workers = json.loads(os.environ.get('TF_CONFIG', '{}')).get('cluster', {}).get('worker', [])
  if cfg.use_tpu:
    try:
      resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
          tpu=cfg.tpu_name or cfg.master, zone=cfg.tpu_zone, project=cfg.gcp_project)
      tf.config.experimental_connect_to_cluster(resolver)
      tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, OSError, tf.errors.OpError) as error:  # OSError: the metadata server
      raise UsageError(f'--use_tpu: cannot reach TPU {cfg.tpu_name or cfg.master!r} '
                       f'({error.__class__.__name__}: {str(error).splitlines()[0][:160]}). On a TPU VM use '
                       '--tpu_name=local; for a TPU node give its name and --tpu_zone / --gcp_project.') from None
    strategy, name = tf.distribute.TPUStrategy(resolver), 'TPUStrategy'
  elif len(workers) > 1:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    name = f'MultiWorkerMirroredStrategy over {len(workers)} workers'
  elif len(tf.config.list_logical_devices('GPU')) > 1:
    strategy, name = tf.distribute.MirroredStrategy(), 'MirroredStrategy'
  else:
    strategy, name = tf.distribute.get_strategy(), 'the default strategy'
  if strategy.num_replicas_in_sync > 1 or cfg.use_tpu:
    progress.status(f'Running with {name}, {strategy.num_replicas_in_sync} replica(s).')
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
        cifar_stem=cfg.use_cifar_stem, sk_ratio=cfg.sk_ratio, se_ratio=cfg.se_ratio,
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


def load_file_model(cfg, strategy, file, role='Loaded'):
  """The model of a file with all its weights (heads included), for using it as it is; says what it loaded."""
  with strategy.scope():
    model = build_model(as_file_model(cfg, file), file.architecture.num_classes or 1, strategy.num_replicas_in_sync)
  count = model_io.restore(model, file, supervised_head=file.architecture.num_classes is not None)
  progress.status(f'{role} {file.describe()} ({count} variables).')
  return model


def initialise_from(cfg, model, file, num_classes):
  """Fine-tuning, linear evaluation or pretraining from a model file: encoder and projection head, and the
  supervised head where it fits (same classes, same input); else the head is new (logged)."""
  keep = model.supervised_head is not None and file.architecture.head_fits(
      num_classes, cfg.train_mode, cfg.ft_proj_selector, cfg.linear_eval_endpoint)
  count = model_io.restore(model, file, supervised_head=keep)
  progress.status(f'Initialised from {file.describe()} ({count} variables).')
  if model.supervised_head is not None and not keep:
    theirs = f' (the file\'s: {file.architecture.describe().split(", ")[-1]})' if file.architecture.num_classes else ''
    progress.status(f'Supervised head: new, {num_classes} classes{theirs}' +
                    (', zero-initialised.' if cfg.zero_init_logits_layer else '.'))
  if cfg.zero_init_logits_layer and model.supervised_head is not None:
    for variable in model.supervised_head.trainable_variables:
      variable.assign(tf.zeros_like(variable))


def check_classifiers(cfg, files, source):
  """The classifier a run uses as it is -- the --teacher's, or --checkpoint's under --mode=eval -- must exist
  and predict the dataset's classes."""
  for flag, used in (('teacher', cfg.train_mode == 'distill'), ('checkpoint', cfg.mode == 'eval')):
    file = files[flag]
    if file is None or not used:
      continue
    if file.architecture.num_classes is None:
      raise UsageError(f'--{flag}={file.path} has no classifier (logits_sup) to use: fine-tune it first.')
    if file.architecture.num_classes != source.num_classes:
      raise UsageError(f'--{flag}={file.path} predicts {file.architecture.num_classes} classes; '
                       f'--dataset={cfg.dataset} has {source.num_classes}.')


def load_teacher(cfg, strategy, file):
  """`teacher(images) -> logits` from the --teacher file (its own network; the model flags are the student's)."""
  teacher = load_file_model(cfg, strategy, file, role='Teacher:')
  return lambda images: teacher(images, training=False)['logits_sup']


# ------------------------------------------------------------------------------------------- training


def training_examples(cfg, source):
  """(number of training examples, ids of the label-fraction subset or None) for these flags."""
  if cfg.train_mode in LABELED_MODES and cfg.label_fraction < 1:
    subset_ids = data_lib.label_fraction_subset(source, cfg.train_split, cfg.label_fraction,
                                                cfg.label_fraction_seed)
    return len(subset_ids), subset_ids
  return source.num_examples(cfg.train_split), None


def final_step(cfg, num_examples):
  return model_lib.get_train_steps(num_examples, cfg.train_batch_size, cfg.train_epochs, cfg.train_steps)


def checkpoint_interval(cfg, num_examples):
  """Steps between checkpoints: --checkpoint_steps, else --checkpoint_epochs epochs."""
  if cfg.checkpoint_steps:
    return cfg.checkpoint_steps
  return max(1, cfg.checkpoint_epochs * num_examples // cfg.train_batch_size)


def metric_names(cfg, model):
  names = ['train/total_loss', 'train/weight_decay']
  if cfg.train_mode == 'pretrain':
    names += ['train/contrast_loss', 'train/contrast_acc', 'train/contrast_entropy']
  if cfg.train_mode == 'distill':
    names += ['train/distill_loss', 'train/teacher_agreement']
  if model.supervised_head is not None and (cfg.train_mode != 'distill' or cfg.distill_alpha):
    names += ['train/supervised_loss', 'train/supervised_acc']
  return names


def train(cfg, strategy, source, chief, num_examples, subset_ids, files):
  """The training loop of the authors' code -- compiled inner loops of steps, checkpoints between them --
  with progress about every 30 s (loop.py), and a checkpoint of the step in flight on SIGTERM / SIGINT."""
  train_steps = final_step(cfg, num_examples)
  warmup_steps = model_lib.get_warmup_steps(cfg.warmup_epochs, num_examples, cfg.train_batch_size)
  if warmup_steps >= train_steps:
    logging.warning('--warmup_epochs=%g is %d steps, not shorter than the %d training steps: the learning rate '
                    'rises all run and never reaches its peak (as in the authors\' schedule).', cfg.warmup_epochs,
                    warmup_steps, train_steps)
  output_dir = cfg.model_dir if chief else tempfile.mkdtemp(prefix='simclr-worker-')
  if chief:
    tf.io.gfile.makedirs(cfg.model_dir)
    with tf.io.gfile.GFile(os.path.join(cfg.model_dir, model_io.FLAGS_FILE), 'w') as f:
      json.dump(dataclasses.asdict(cfg), f, indent=1)
    if subset_ids is not None:
      path = data_lib.write_label_subset(cfg.model_dir, subset_ids, dataset=source.name, split=cfg.train_split,
                                         fraction=cfg.label_fraction, seed=cfg.label_fraction_seed)
      logging.info('Fine-tuning on %d labelled examples (%.3g of %s), ids in %s', num_examples,
                   cfg.label_fraction, cfg.train_split, path)

  dataset = data_lib.build_distributed_dataset(
      strategy, cfg.train_batch_size, source, cfg.train_split, is_training=True, train_mode=cfg.train_mode,
      image_size=cfg.image_size, color_jitter_strength=cfg.color_jitter_strength, use_blur=cfg.use_blur,
      crop_min_area=cfg.crop_min_area, cache=cfg.cache_dataset, subset_ids=subset_ids)
  with strategy.scope():
    model, optimizer, schedule = build_training(cfg, strategy, max(source.num_classes, 1), num_examples)
    loop_metrics = {name: keras.metrics.Mean(name) for name in metric_names(cfg, model)}
  count = lambda variables: sum(int(tf.size(v)) for v in variables
                                if not v.path.endswith(('moving_mean', 'moving_variance'))) / 1e6
  parameters, trained = count(model.resnet_model.weights), count(model.resnet_model.trainable_weights)
  progress.status(f'Model: ResNet-{cfg.resnet_depth} x{cfg.width_multiplier:g} ({parameters:.1f}M encoder parameters' +
                  (f', {trained:.1f}M trained' if trained != parameters else '') +
                  f'); {train_steps} steps of {cfg.train_batch_size} images.')

  # Every worker resumes from the chief's checkpoints in model_dir (shared storage when multi-worker); the
  # others must still save (saving can involve collectives), into a local scratch dir deleted at the end.
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
  manager = tf.train.CheckpointManager(checkpoint, output_dir, max_to_keep=cfg.keep_checkpoint_max,
                                       checkpoint_name='ckpt', step_counter=optimizer.iterations)
  restored = model_io.restore_latest(checkpoint, cfg.model_dir)
  if restored:
    progress.status(f'Resuming from {restored} (step {optimizer.iterations.numpy()}).')
  elif files['checkpoint'] is not None:
    initialise_from(cfg, model, files['checkpoint'], max(source.num_classes, 1))
  teacher = load_teacher(cfg, strategy, files['teacher']) if cfg.train_mode == 'distill' else None
  train_step = obj_lib.make_train_step(cfg, model, optimizer, strategy, teacher)
  stop = loop_lib.StopSignals()

  @tf.function
  def train_loop(iterator, steps):
    stopped = tf.constant(False)
    for _ in tf.range(steps):
      if loop_lib.should_stop(stop.flag, strategy):
        stopped = tf.constant(True)
        break
      images, labels = next(iterator)
      values = strategy.run(train_step, args=(images, labels))
      for name, value in values.items():
        loop_metrics[name].update_state(strategy.reduce('MEAN', value, axis=None))
    return stopped

  writer = tf.summary.create_file_writer(output_dir)
  iterator = iter(dataset)
  step = int(optimizer.iterations.numpy())
  bar = progress.Progress(step, train_steps, cfg.train_batch_size, pretrain=cfg.train_mode == 'pretrain')
  if step < train_steps:
    _write_augmented_views(writer, iterator, strategy, step, chief)
    progress.status(f'Training from step {step}; the first steps include compiling the training step.')

  def after_loop(previous, step, seconds):
    with writer.as_default():
      values = metrics_lib.log_and_write_metrics(loop_metrics.values(), step)
      learning_rate = float(schedule(step - 1))
      tf.summary.scalar('train/learning_rate', learning_rate, step=step)
      if cfg.knn_eval_steps and (step // cfg.knn_eval_steps > previous // cfg.knn_eval_steps or
                                 step == train_steps) and source.num_classes > 1:
        values['knn/top_1_accuracy'] = knn_monitor(cfg, source, model)
        tf.summary.scalar('knn/top_1_accuracy', values['knn/top_1_accuracy'], step=step)
    writer.flush()
    if not all(math.isfinite(v) for v in values.values()):
      raise FloatingPointError(
          f'Training diverged at step {step}: {values}. No checkpoint was written for this state; the last '
          f'good one is {manager.latest_checkpoint}. Try a lower --learning_rate or a larger --warmup_epochs.')
    bar.update(step, seconds, values, learning_rate)
    for metric in loop_metrics.values():
      metric.reset_state()

  try:
    with stop:
      loop_lib.run(lambda steps: train_loop(iterator, tf.constant(steps)),
                   lambda: int(optimizer.iterations.numpy()), train_steps,
                   checkpoint_interval(cfg, num_examples), (cfg.knn_eval_steps, cfg.train_summary_steps),
                   after_loop, lambda step: manager.save(checkpoint_number=step), stop)
  finally:
    writer.close()
    if not chief:
      shutil.rmtree(output_dir, ignore_errors=True)
  return model, int(optimizer.iterations.numpy())


def _write_augmented_views(writer, iterator, strategy, step, chief):
  """A few augmented training inputs to TensorBoard, once, so a user can see what the model sees."""
  if not chief:
    return
  images, _ = next(iterator)
  local = strategy.experimental_local_results(images)[0][:4]
  views = tf.concat(tf.split(local, local.shape[-1] // 3, axis=-1), axis=2)  # views side by side
  with writer.as_default():
    tf.summary.image('train/augmented_views', views, step=step, max_outputs=4)


# ------------------------------------------------------------------------------------------- eval


def evaluate(cfg, strategy, source, model, step, chief, extra=None, export=True):
  """The supervised head on --eval_split (metrics.evaluate_classifier) and the regularization loss; writes
  result.json, result_<step>.json, eval summaries and (unless there is one) the export of `step`."""
  subset = data_lib.sample_ids(source, cfg.eval_split, cfg.eval_steps * cfg.eval_batch_size or None)
  dataset = data_lib.build_distributed_dataset(
      strategy, cfg.eval_batch_size, source, cfg.eval_split, is_training=False, image_size=cfg.image_size,
      cache=cfg.cache_dataset, subset_ids=subset)
  result = metrics_lib.evaluate_classifier(model, dataset, strategy, source.num_classes, cfg.eval_steps)
  result.update({
      'eval/regularization_loss': float(model_lib.weight_decay_loss(model.trainable_variables, cfg.weight_decay)),
      'global_step': step, **(extra or {})})
  logging.info('Eval results at step %d: %s', step, result)
  if not chief:
    return result
  tf.io.gfile.makedirs(cfg.model_dir)
  changed = metrics_lib.write_results(cfg.model_dir, result, step,
                                      os.path.join(cfg.model_dir, f'eval_{cfg.eval_name}' if cfg.eval_name else 'eval'))
  if changed:
    progress.status(f'Replaced the earlier evaluation of step {step} in {cfg.model_dir}: it differed in {changed}.')
  flags_path = os.path.join(cfg.model_dir, model_io.FLAGS_FILE)
  if not tf.io.gfile.exists(flags_path):  # training writes its own; an evaluation of a file records its flags
    with tf.io.gfile.GFile(flags_path, 'w') as f:
      json.dump(dataclasses.asdict(cfg), f, indent=1)
  export_root = os.path.join(cfg.model_dir, 'saved_model')
  if export and not tf.io.gfile.exists(os.path.join(export_root, str(step), 'saved_model.pb')):
    model_io.export(model, export_root, step, cfg.keep_hub_module_max)
  return result


def result_lines(cfg, result):
  """What a run says of its result on stdout."""
  head = {'pretrain': 'Online linear head', 'finetune': 'Fine-tuned model', 'linear_eval': 'Linear evaluation',
          'distill': 'Distilled student'}[cfg.train_mode]
  top5 = result.get('eval/label_top_5_accuracy')
  lines = [f'{head} ({cfg.eval_split}): top-1 {result["eval/label_top_1_accuracy"]:.4f}' +
           (f', top-5 {top5:.4f}' if top5 is not None else '') + f' (step {result["global_step"]})']
  if 'linear_eval/top_1_accuracy' in result:
    lines.append(f'Linear evaluation on frozen features ({cfg.eval_split}): top-1 '
                 f'{result["linear_eval/top_1_accuracy"]:.4f} pretrained vs '
                 f'{result["linear_eval/random_init_top_1_accuracy"]:.4f} random init')
  return lines


def frozen_features(cfg, source, net, train):
  """(`final_avg_pool` features, labels) through `net` in inference mode, eval preprocessing: of the train split
  (at most --linear_eval_max_examples) when `train`, else of the eval split (--eval_steps batches, or all). A
  part of a split is a stratified sample of it (`data.sample_ids`), never the first examples read."""
  split = cfg.train_split if train else cfg.eval_split
  max_examples = cfg.linear_eval_max_examples if train else cfg.eval_steps * cfg.eval_batch_size or None
  dataset = data_lib.build_dataset(source, split, cfg.eval_batch_size, is_training=False,
                                   image_size=cfg.image_size, cache=cfg.cache_dataset,
                                   subset_ids=data_lib.sample_ids(source, split, max_examples))
  return linear_eval_lib.extract_features(net, dataset)


def knn_monitor(cfg, source, model):
  """Weighted-kNN top-1 on --eval_split with train features as the bank: a label-free training signal."""
  return linear_eval_lib.knn_eval(
      *frozen_features(cfg, source, model, train=True), *frozen_features(cfg, source, model, train=False),
      num_classes=source.num_classes, k=cfg.knn_k, temperature=cfg.knn_temperature)['top_1_accuracy']


def random_encoder(cfg, strategy, num_classes, seed=0):
  """The baseline a representation must beat: this architecture, randomly initialised -- the same weights in
  every run (seeded)."""
  keras.utils.set_random_seed(seed)
  with strategy.scope():
    return build_model(cfg, num_classes, strategy.num_replicas_in_sync)


def frozen_linear_eval(cfg, strategy, source, model):
  """Logistic regression on frozen `final_avg_pool` features of the pretrained and of a random encoder."""
  progress.status('Fitting logistic regressions on frozen features of the pretrained and a random encoder...')
  result = {}
  for name, net in (('', model), ('random_init_', random_encoder(cfg, strategy, max(source.num_classes, 1)))):
    start = time.perf_counter()
    outcome = linear_eval_lib.linear_eval(
        *frozen_features(cfg, source, net, train=True), *frozen_features(cfg, source, net, train=False),
        num_classes=source.num_classes)
    result[f'linear_eval/{name}top_1_accuracy'] = outcome['top_1_accuracy']
    logging.info('Linear evaluation (%s): %s in %.0f s', name.rstrip('_') or 'pretrained', outcome,
                 time.perf_counter() - start)
  return result


def embedding_plot(cfg, strategy, source, files):
  """--mode=embed_plot: PCA of --eval_split features, a random encoder (left) next to the trained one (right),
  as model_dir/embedding.png. The trained one: --checkpoint, else model_dir's latest checkpoint."""
  file = files['checkpoint'] or model_io.inspect(cfg.model_dir)
  trained = load_file_model(cfg, strategy, file)
  random_model = random_encoder(as_file_model(cfg, file), strategy, file.architecture.num_classes or 1)
  panels = [frozen_features(cfg, source, net, train=False) for net in (random_model, trained)]
  tf.io.gfile.makedirs(cfg.model_dir)
  return embed_plot_lib.save_embedding_plot(os.path.join(cfg.model_dir, 'embedding.png'), panels)


def eval_checkpoints(cfg, strategy, source, chief):
  """--mode=eval of model_dir: evaluates its latest checkpoint, then each newer one as it appears, until the
  final step or --eval_timeout seconds without a new one. Unreadable checkpoints are skipped (warning)."""
  with strategy.scope():
    model = build_model(cfg, max(source.num_classes, 1), strategy.num_replicas_in_sync)
  last_step = final_step(cfg, training_examples(cfg, source)[0])
  results, evaluated, idle_since = [], set(), time.monotonic()
  while True:
    paths = [p for p in model_io.checkpoint_paths(cfg.model_dir) if p not in evaluated]
    if paths:
      path = paths[-1]  # the newest, as the authors' evaluator does
      evaluated.add(path)
      step = model_io.read_training_checkpoint(model, path)
      if step is not None:
        result = evaluate(cfg, strategy, source, model, step, chief)
        results.append(result)
        print(result_lines(cfg, result)[0], flush=True)
        if step >= last_step:
          break
      idle_since = time.monotonic()
    elif time.monotonic() - idle_since >= cfg.eval_timeout:
      break
    else:
      time.sleep(1)
  if not results:
    raise UsageError(f'--mode=eval: no readable checkpoint in --model_dir={cfg.model_dir}.')
  latest = results[-1]
  print(f'Evaluated {len(results)} checkpoint(s); latest step {latest["global_step"]}: top-1 '
        f'{latest["eval/label_top_1_accuracy"]:.4f}. Results: {os.path.join(cfg.model_dir, "result.json")}',
        flush=True)


def eval_file(cfg, strategy, source, chief, file):
  """--mode=eval --checkpoint=FILE: the file's own classifier (logits_sup) on --eval_split, no training."""
  model = load_file_model(cfg, strategy, file)
  result = evaluate(as_file_model(cfg, file), strategy, source, model, file.step, chief, export=False)
  print(result_lines(as_file_model(cfg, file), result)[0], flush=True)
  print(f'Results: {os.path.join(cfg.model_dir, "result.json")}', flush=True)


def export_file(cfg, strategy, files):
  """--mode=export: this project's SavedModel of --checkpoint (or model_dir's latest checkpoint), no training."""
  file = files['checkpoint'] or model_io.inspect(cfg.model_dir)
  model = load_file_model(cfg, strategy, file)
  path = model_io.export(model, os.path.join(cfg.model_dir, 'saved_model'), file.step, cfg.keep_hub_module_max)
  print(f'Exported {file.describe()} to {path}', flush=True)


def finished_run(cfg, num_examples):
  """The step of a finished run in model_dir (its final checkpoint, and its results for train_then_eval), or None."""
  paths = model_io.checkpoint_paths(cfg.model_dir)
  step = model_io.checkpoint_step(paths[-1]) if paths else None
  if step is None or step < final_step(cfg, num_examples) or not model_io.readable(paths[-1]):
    return None
  if cfg.mode == 'train_then_eval' and not tf.io.gfile.exists(os.path.join(cfg.model_dir, f'result_{step}.json')):
    return None
  return step


# ------------------------------------------------------------------------------------------- main


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if DETAIL:
    progress.status(runtime.describe_kernels())
  else:
    progress.quiet(ROOT)
    logging.set_verbosity(logging.WARNING)
  explicit = explicit_flags()
  cfg = Config.from_flags()
  try:
    cfg = run_flags(cfg, explicit)
    validate(cfg)
    for flag in ('checkpoint', 'teacher'):
      model_file(cfg, flag, model_io.resolve)
    strategy = build_strategy(cfg)  # before TensorFlow runs anything (multi-worker and TPU need it first)
    files = {flag: model_file(cfg, flag) for flag in ('checkpoint', 'teacher')}
    if files['checkpoint'] is not None:
      cfg = adopt_architecture(cfg, explicit, files['checkpoint'])
    validate(cfg, strategy.num_replicas_in_sync)
    if cfg.mode == 'export':  # needs no data
      return export_file(cfg, strategy, files)
    progress.status(f'Preparing data: {cfg.dataset}...')
    source = data_lib.load_source(cfg.dataset, cfg.data_dir, cfg.strict_images)
    check_classifiers(cfg, files, source)
    num_examples, subset_ids = training_examples(cfg, source)
  except (UsageError, data_lib.DataError, model_io.ModelFileError) as error:
    sys.exit(f'Error: {error}')
  progress.status(f'Data: {source.name}, ' + ', '.join(f'{n:,} {split}' for split, n in source.split_sizes.items()) +
                  f' images, {source.num_classes} classes.')
  if cfg.lineareval_while_pretraining and source.num_classes == 0 and cfg.train_mode == 'pretrain':
    logging.warning('%s has no labels: no online linear evaluation.', source.name)
    cfg = cfg.replace(lineareval_while_pretraining=False)
  chief = is_chief(strategy)
  try:
    if cfg.mode == 'eval' and files['checkpoint'] is not None:
      eval_file(cfg, strategy, source, chief, files['checkpoint'])
    elif cfg.mode == 'eval':
      eval_checkpoints(cfg, strategy, source, chief)
    elif cfg.mode == 'embed_plot':
      print(f'Embedding plot (random encoder | trained): {embedding_plot(cfg, strategy, source, files)}', flush=True)
    elif (step := finished_run(cfg, num_examples)) is not None:
      where = os.path.join(cfg.model_dir, 'result.json') if cfg.mode == 'train_then_eval' else cfg.model_dir
      print(f'Training finished at step {step}; results in {where}', flush=True)
      if cfg.mode == 'train_then_eval':
        with tf.io.gfile.GFile(os.path.join(cfg.model_dir, f'result_{step}.json')) as f:
          print('\n'.join(result_lines(cfg, json.load(f))), flush=True)
    else:
      model, step = train(cfg, strategy, source, chief, num_examples, subset_ids, files)
      if cfg.mode == 'train_then_eval':
        extra = {}
        if cfg.train_mode == 'pretrain' and cfg.linear_eval and source.num_classes > 1:
          extra = frozen_linear_eval(cfg, strategy, source, model)
        progress.status(f'Evaluating on {cfg.eval_split}...')
        result = evaluate(cfg, strategy, source, model, step, chief, extra)
        print('\n'.join(result_lines(cfg, result)), flush=True)
        print(f'Results: {os.path.join(cfg.model_dir, "result.json")}', flush=True)
  except (UsageError, data_lib.DataError, model_io.ModelFileError, FloatingPointError) as error:
    sys.exit(f'Error: {error}')
  except loop_lib.Stopped as stopped:
    print(f'Stopped by {stopped.signal_name} at step {stopped.step}; checkpoint written to {cfg.model_dir}. Run the '
          'same command to resume.', flush=True)
    sys.exit(130 if stopped.signal_name == 'SIGINT' else 143)


if __name__ == '__main__':
  app.run(main)
