"""Every setting of a run, typed and grouped as the code uses them, with the checks that need no files.

`Config` holds five groups -- `model` (the network), `data` (where images come from and how they are
augmented), `optim` (the step and its schedule), `eval` (evaluation and monitors) and `run` (what to do, where
to write, where to run). Each field's name is its run.py flag (the names and meanings of the SimCLR authors'
run.py, so their recipes work unchanged) and its metadata the flag's help; run.py defines its flags from these
fields, so a default lives here only. Scripts and notebooks build one without absl:

    cfg = config.Config.defaults(dataset='/data/cifar10', train_epochs=100)   # flat flag names
    cfg.model.resnet_depth, cfg.optim.temperature                             # grouped reads

A run's `flags.json` is `cfg.flat()`; `Config.from_flat` builds one from such a dict (unknown names are an
error: an evaluation takes a saved run's settings through `inherited`, which leaves them out).
"""

import dataclasses
import os
import re
import typing

import resnet_shapes

MODES = ('train', 'eval', 'train_then_eval', 'embed_plot', 'export')


@dataclasses.dataclass(frozen=True)
class TrainMode:
  """What a --train_mode is, for every module that depends on it (declared here only: TRAIN_MODE)."""
  name: str
  help: str
  views: int  # views of each image in a training batch (2: NT-Xent's pairs)
  labeled: bool  # trains a classifier on (a fraction of) the labels, starting from --checkpoint
  frozen_encoder: bool  # encoder and projection head frozen, BatchNorm on its moving statistics
  head_trains_encoder: bool  # the supervised head's gradient reaches the encoder
  teacher: bool  # learns the predictions of --teacher
  result: str  # what its classifier is called where a run prints its evaluation


TRAIN_MODE = {mode.name: mode for mode in (
    TrainMode('pretrain', 'contrastive learning (+ the online linear head on stop-gradient features)', views=2,
              labeled=False, frozen_encoder=False, head_trains_encoder=False, teacher=False,
              result='Online linear head'),
    TrainMode('finetune', 'supervised, from --checkpoint', views=1, labeled=True, frozen_encoder=False,
              head_trains_encoder=True, teacher=False, result='Fine-tuned model'),
    TrainMode('linear_eval', 'a linear head on the frozen encoder of --checkpoint (the paper\'s protocol)', views=1,
              labeled=True, frozen_encoder=True, head_trains_encoder=False, teacher=False, result='Linear evaluation'),
    TrainMode('distill', 'learn the predictions of --teacher on the (unlabeled) train images (SimCLRv2 section '
              '2.3)', views=1, labeled=False, frozen_encoder=False, head_trains_encoder=True, teacher=True,
              result='Distilled student'),
)}
TRAIN_MODES = tuple(TRAIN_MODE)
LABELED_MODES = tuple(name for name, mode in TRAIN_MODE.items() if mode.labeled)
PROJ_HEAD_MODES = ('none', 'linear', 'nonlinear')
OPTIMIZERS = ('lars', 'momentum', 'adam')
LR_SCALINGS = ('linear', 'sqrt')
LR_DECAYS = ('cosine', 'linear')
# Keras dtype policies. Mixed ones compute in 16 bits and keep float32 variables; BatchNorm statistics, NT-Xent
# and softmax are float32, and every model output is float32. 'auto': runtime.choose_precision.
PRECISIONS = ('auto', 'float32', 'mixed_bfloat16', 'mixed_float16')
EXPORT_FORMATS = ('saved_model', 'torch', 'onnx')
EMBEDDED_DATASET = 'simclr_shapes'  # shapes_dataset.py


class UsageError(ValueError):
  """A flag combination that cannot work; the message names the flag."""


def _option(default: typing.Any, help_text: str, choices: typing.Optional[typing.Sequence[str]] = None) -> typing.Any:
  return dataclasses.field(default=default, metadata={'help': help_text, 'choices': choices})


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The network: encoder, heads, and the number format it computes in."""
  resnet_depth: int = _option(18, 'ResNet depth: 18, 34, 50, 101, 152 or 200.')
  width_multiplier: float = _option(0.25, 'ResNet width multiplier (1, 2, 3, 4, or a fraction).')
  sk_ratio: float = _option(0.0, 'Selective kernel ratio (SimCLRv2: 0.0625); 0 disables.')
  se_ratio: float = _option(0.0, 'Squeeze-excitation ratio; 0 disables.')
  cifar_stem: typing.Optional[bool] = _option(
      None, '3x3 stride-1 stem without max-pool; default: when --image_size <= 32.')
  global_bn: bool = _option(True, 'Aggregate BatchNorm statistics across replicas.')
  batch_norm_decay: float = _option(0.9, 'BatchNorm moving-average decay.')
  precision: str = _option(
      'auto', 'Keras dtype policy. auto: mixed_bfloat16 where the hardware computes in bfloat16 (TPUs, CPUs with '
      'AMX or AVX-512 BF16, GPUs of compute capability 8.0+), mixed_float16 (dynamic loss scaling) on GPUs of '
      'compute capability 7.x, float32 elsewhere. Variables, BatchNorm statistics, NT-Xent and softmax stay '
      'float32.', PRECISIONS)
  proj_head_mode: str = _option('nonlinear', 'Projection head.', PROJ_HEAD_MODES)
  proj_out_dim: int = _option(128, 'Projection output dimension.')
  num_proj_layers: int = _option(3, 'Layers of the nonlinear projection head.')
  ft_proj_selector: int = _option(0, 'Projection-head layer to fine-tune from (0 = its input, -1 = its last).')
  lineareval_while_pretraining: bool = _option(True, 'Train a linear head on stop-gradient features.')
  zero_init_logits_layer: bool = _option(False, 'Start the supervised head at zero.')
  fine_tune_after_block: int = _option(
      -1, 'Freeze the encoder up to block group k (0 = the stem, 4 = all: linear evaluation).')
  linear_eval_endpoint: str = _option(
      'final_avg_pool', '--train_mode=linear_eval: the encoder endpoint the linear head reads (spatial ones '
      'pooled).', resnet_shapes.ENDPOINTS)

  def uses_cifar_stem(self, image_size: int) -> bool:
    return image_size <= 32 if self.cifar_stem is None else self.cifar_stem

  @property
  def projection_layers(self) -> int:
    """Layers of the projection head, whatever its mode."""
    return {'none': 0, 'linear': 1}.get(self.proj_head_mode, self.num_proj_layers)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where images come from, which of them, and how training augments them."""
  dataset: str = _option(
      EMBEDDED_DATASET, 'A TFDS name, an image folder <root>/<split>/<class>/<image>, or the embedded '
      f'{EMBEDDED_DATASET}.')
  data_dir: typing.Optional[str] = _option(None, 'TFDS data directory (default: ~/tensorflow_datasets).')
  train_split: str = _option('train', 'Split to train on.')
  eval_split: str = _option('test', 'Split to evaluate on.')
  cache_dataset: bool = _option(False, 'Cache decoded examples in memory (small datasets).')
  label_fraction: float = _option(1.0, 'Fine-tune on this class-balanced fraction of the train labels.')
  label_fraction_seed: int = _option(0, 'Seed of the label-fraction subset.')
  strict_images: bool = _option(False, 'Fail on a corrupt image file instead of skipping it.')
  image_size: int = _option(32, 'Input image size.')
  color_jitter_strength: float = _option(0.5, 'Colour distortion strength s.')
  crop_min_area: float = _option(
      0.08, 'Smallest random training crop, as a fraction of the image area (the paper: 0.08).')
  use_blur: bool = _option(False, 'Gaussian blur in pretraining (the paper uses it for ImageNet).')


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """The training step -- its losses, optimizer, learning-rate schedule -- and how long it runs."""
  train_batch_size: int = _option(128, 'Global training batch size.')
  train_epochs: int = _option(10, 'Training epochs (ignored when train_steps > 0 or train_time is given).')
  train_steps: int = _option(0, 'Training steps; 0 = from train_epochs.')
  train_time: str = _option(
      '', 'A wall-clock budget for training, e.g. 90s, 60m, 1.5h: once the step has compiled and its speed is '
      'measured, the number of steps is fixed to end within it (model_dir/schedule.json keeps it for a resume), '
      'the kNN monitors and checkpoints accounted for; the schedule is laid over those steps. Excludes '
      'train_steps.')
  warmup_epochs: float = _option(1.0, 'Linear warmup epochs.')
  learning_rate: float = _option(2.0, 'Base learning rate (scaled by learning_rate_scaling).')
  learning_rate_scaling: str = _option(
      'linear', 'linear: lr * B / 256; sqrt: lr * sqrt(B).', LR_SCALINGS)
  learning_rate_decay: str = _option(
      'cosine', 'Decay to 0 after the warmup: cosine (the paper) or linear.', LR_DECAYS)
  weight_decay: float = _option(1e-4, 'L2 weight decay.')
  optimizer: str = _option('lars', 'Optimizer.', OPTIMIZERS)
  momentum: float = _option(0.9, 'Momentum.')
  temperature: float = _option(0.5, 'NT-Xent temperature.')
  hidden_norm: bool = _option(True, 'L2-normalise projections before NT-Xent (cosine similarity).')
  distill_temperature: float = _option(1.0, 'Softmax temperature of teacher and student in distillation.')
  distill_alpha: float = _option(
      0.0, 'Weight of the labeled cross-entropy added to the distillation loss (0: unlabeled only).')
  jit_compile: bool = _option(False, 'Compile the train step with XLA (off by default: slower on CPU).')

  @property
  def train_seconds(self) -> float:
    """--train_time in seconds, 0 without a budget."""
    return parse_duration(self.train_time)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Evaluation of a trained model, and the monitors of pretraining."""
  eval_batch_size: int = _option(256, 'Global evaluation batch size.')
  eval_steps: int = _option(0, 'Evaluation steps; 0 = the whole eval split.')
  eval_name: typing.Optional[str] = _option(None, 'Name of the evaluation (subdirectory of its summaries).')
  eval_timeout: int = _option(0, '--mode=eval waits this many seconds for new checkpoints, then ends.')
  linear_eval: bool = _option(
      True, 'After pretraining (train_then_eval), fit a logistic regression on frozen features of the '
      'pretrained and of a randomly initialised encoder, and report both.')
  linear_eval_max_examples: int = _option(20000, 'Training examples the linear evaluation uses, at most.')
  knn_eval_steps: int = _option(
      0, 'Pretraining: every this many steps, weighted-kNN top-1 of frozen features on --eval_split (the train '
      'split as memory bank); 0 = off.')
  knn_max_examples: int = _option(
      10000, 'Training examples in the kNN monitor\'s memory bank (a stratified sample), at most: it runs every '
      '--knn_eval_steps, so it is kept smaller than the linear evaluation\'s.')
  knn_k: int = _option(200, 'Neighbours of the kNN monitor.')
  knn_temperature: float = _option(0.1, 'Temperature of the kNN monitor\'s vote weights exp(sim / t).')

  @property
  def eval_examples(self) -> typing.Optional[int]:
    """Examples of the eval split an evaluation reads: --eval_steps batches, or None for all."""
    return self.eval_steps * self.eval_batch_size or None


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What to do, from which model, where results go, and where it runs."""
  mode: str = _option(
      'train_then_eval', 'What to do. eval: the checkpoints of model_dir as they appear, or the model of '
      '--checkpoint once. embed_plot: a PNG of 2-D PCA projections of the eval split\'s features, for the model '
      'in model_dir (or --checkpoint) and a random encoder. export: model_dir/saved_model/<step>/ from '
      '--checkpoint (or model_dir\'s latest checkpoint), no training.', MODES)
  train_mode: str = _option(
      'pretrain', '; '.join(f'{mode.name}: {mode.help}' for mode in TRAIN_MODE.values()) + '.', TRAIN_MODES)
  model_dir: typing.Optional[str] = _option(
      None, 'Checkpoints, summaries, results and exports go here; default: runs/<dataset> for pretraining, '
      'runs/<dataset>-<train_mode> for the other train modes, runs/<model name>-<mode> for --mode=eval, '
      'embed_plot or export of a --checkpoint. A run directory holds one run: a command whose settings differ '
      'from those of the run already there stops.')
  export_format: str = _option(
      'saved_model', '--mode=export: saved_model (TF Hub Reusable SavedModel, Keras 3 TFSMLayer; in float32), '
      'torch (model_dir/torch/<step>/: model.safetensors, config.json and simclr_torch.py, the PyTorch module '
      'that computes what the TF model does; also torchvision\'s key names for a plain ResNet-50/101/152) or '
      'onnx (model_dir/onnx/<step>/model.onnx, dynamic batch; needs torch and onnx).', EXPORT_FORMATS)
  checkpoint: typing.Optional[str] = _option(
      None, 'The model to start from (fine-tune, linear_eval, pretrain) or to use (eval, embed_plot, export): '
      'a SavedModel or training checkpoint (prefix or folder) of this project or of the SimCLR authors\' tf2 '
      'code, e.g. gs://simclr-checkpoints-tf2/simclrv2/pretrained/r50_1x_sk0. The network comes from the file; '
      'model flags given explicitly must agree with it.')
  random_init: bool = _option(False, 'Fine-tune from a random initialisation (baselines) instead.')
  teacher: typing.Optional[str] = _option(
      None, '--train_mode=distill: the teacher, any model --checkpoint accepts, with a supervised head (its '
      'network comes from the file; the model flags describe the student).')
  checkpoint_epochs: int = _option(1, 'Checkpoint (and log) every this many epochs.')
  checkpoint_steps: int = _option(0, 'Checkpoint every this many steps; overrides checkpoint_epochs.')
  train_summary_steps: int = _option(
      0, 'Progress line and TensorBoard training scalars every this many steps; 0 = about every 30 s (and at '
      'every checkpoint).')
  keep_checkpoint_max: int = _option(5, 'Checkpoints to keep.')
  keep_hub_module_max: int = _option(1, 'SavedModel exports to keep.')
  use_tpu: bool = _option(False, 'Run on a Cloud TPU.')
  tpu_name: typing.Optional[str] = _option(None, 'Cloud TPU name (or grpc:// address).')
  tpu_zone: typing.Optional[str] = _option(None, 'Cloud TPU zone.')
  gcp_project: typing.Optional[str] = _option(None, 'GCP project of the TPU.')
  master: typing.Optional[str] = _option(None, 'TPU master address, for the TPU cluster resolver.')


GROUPS = {'model': ModelConfig, 'data': DataConfig, 'optim': OptimConfig, 'eval': EvalConfig, 'run': RunConfig}
# Flag name -> its group.
GROUP_OF = {field.name: group for group, cls in GROUPS.items() for field in dataclasses.fields(cls)}
# Settings of --mode=eval / embed_plot that describe this evaluation, not the run it evaluates (taken from the
# run's flags.json otherwise).
SESSION_FLAGS = frozenset({
    'mode', 'export_format', 'model_dir', 'eval_split', 'eval_batch_size', 'eval_steps', 'eval_name',
    'eval_timeout', 'checkpoint', 'teacher', 'random_init', 'use_tpu', 'tpu_name', 'tpu_zone', 'gcp_project', 'master',
    'keep_checkpoint_max', 'keep_hub_module_max', 'strict_images', 'cache_dataset', 'jit_compile', 'precision',
    'linear_eval', 'linear_eval_max_examples', 'knn_max_examples'})


# Settings of how and where a command runs, not of the run it makes: a run in model_dir continues (or reports
# its results) under other values of these; every other setting must be what its flags.json says.
OPERATIONAL_FLAGS = frozenset({
    'mode', 'export_format', 'model_dir', 'data_dir', 'cache_dataset', 'strict_images', 'precision', 'jit_compile',
    'use_tpu', 'tpu_name', 'tpu_zone', 'gcp_project', 'master', 'keep_checkpoint_max', 'keep_hub_module_max',
    'checkpoint_epochs', 'checkpoint_steps', 'train_summary_steps', 'eval_batch_size', 'eval_timeout', 'eval_name'})


def parse_duration(text: str) -> float:
  """Seconds of a duration `<number><s|m|h>` (e.g. 90s, 60m, 1.5h); 0 for ''. A bad one is a UsageError."""
  if not text:
    return 0.0
  match = re.fullmatch(r'\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh])\s*', text)
  if not match or float(match.group(1)) <= 0:
    raise UsageError(f'--train_time must be a positive duration such as 90s, 60m or 1.5h, got {text!r}.')
  return float(match.group(1)) * {'s': 1, 'm': 60, 'h': 3600}[match.group(2)]


def fields() -> list[tuple[str, dataclasses.Field]]:
  """(group, dataclasses.Field) of every setting, in flag-definition order."""
  return [(group, field) for group, cls in GROUPS.items() for field in dataclasses.fields(cls)]


@dataclasses.dataclass(frozen=True)
class Config:
  """All settings of a run, in groups."""
  model: ModelConfig = ModelConfig()
  data: DataConfig = DataConfig()
  optim: OptimConfig = OptimConfig()
  eval: EvalConfig = EvalConfig()
  run: RunConfig = RunConfig()

  @classmethod
  def from_flat(cls, values: dict[str, typing.Any]) -> 'Config':
    """A Config from {flag name: value}; names it does not know are an error (a typo must not be ignored)."""
    unknown = sorted(set(values) - set(GROUP_OF))
    if unknown:
      raise UsageError(f'Unknown setting(s): {", ".join(unknown)}.')
    return cls(**{group: group_cls(**{k: v for k, v in values.items() if GROUP_OF[k] == group})
                  for group, group_cls in GROUPS.items()})

  @classmethod
  def defaults(cls, **overrides) -> 'Config':
    """The defaults with `overrides` (flat flag names), for scripts, notebooks and tests."""
    return cls.from_flat(overrides)

  def flat(self) -> dict[str, typing.Any]:
    """{flag name: value}: what a run's flags.json holds."""
    return {name: value for group in GROUPS for name, value in dataclasses.asdict(getattr(self, group)).items()}

  def replace(self, **changes) -> 'Config':
    """A copy with some settings changed, by flag name."""
    return Config.from_flat({**self.flat(), **changes})

  @property
  def use_cifar_stem(self) -> bool:
    return self.model.uses_cifar_stem(self.data.image_size)


def check_model(m: ModelConfig, train_mode: str) -> None:
  """Fails, with one line naming the flag, on model settings (a ModelConfig) that build no network in
  `train_mode`; SimCLRModel checks its settings with this too."""
  depth = m.projection_layers
  checks = [
      (train_mode not in TRAIN_MODES, f'--train_mode must be one of {", ".join(TRAIN_MODES)}, got {train_mode!r}.'),
      (m.proj_head_mode not in PROJ_HEAD_MODES,
       f'--proj_head_mode must be one of {", ".join(PROJ_HEAD_MODES)}, got {m.proj_head_mode!r}.'),
      (m.linear_eval_endpoint not in resnet_shapes.ENDPOINTS,
       f'--linear_eval_endpoint must be one of {", ".join(resnet_shapes.ENDPOINTS)}, got {m.linear_eval_endpoint!r}.'),
      (m.resnet_depth not in resnet_shapes.SUPPORTED_DEPTHS,
       f'--resnet_depth must be one of {", ".join(map(str, resnet_shapes.SUPPORTED_DEPTHS))}, got {m.resnet_depth}.'),
      (not m.width_multiplier > 0 or resnet_shapes.channels(64, m.width_multiplier) < 2,
       f'--width_multiplier must be > 0 and leave at least 2 stem channels (>= 1/32), got {m.width_multiplier}.'),
      (m.sk_ratio > 0 and m.width_multiplier > 0 and m.resnet_depth in resnet_shapes.SUPPORTED_DEPTHS and
       not resnet_shapes.selective_kernels_fit(m.resnet_depth, m.width_multiplier),
       f'--width_multiplier={m.width_multiplier} with --sk_ratio: selective kernels need even widths, and '
       f'{resnet_shapes.selective_kernel_widths(m.width_multiplier)} are not all even.'),
      (not 0 <= m.sk_ratio < 1, f'--sk_ratio must be in [0, 1) (SimCLRv2: 0.0625), got {m.sk_ratio}.'),
      (not 0 <= m.se_ratio <= 1, f'--se_ratio must be in [0, 1], got {m.se_ratio}.'),
      (m.proj_out_dim < 1, f'--proj_out_dim must be >= 1, got {m.proj_out_dim}.'),
      (m.proj_head_mode == 'nonlinear' and m.num_proj_layers < 1,
       f'--num_proj_layers must be >= 1 for --proj_head_mode=nonlinear, got {m.num_proj_layers}.'),
      (not -depth - 1 <= m.ft_proj_selector <= depth,
       f'--ft_proj_selector must be in 0..{depth} (or -1 for the last) for a {m.proj_head_mode} head of {depth} '
       f'layer(s), got {m.ft_proj_selector}.'),
      (m.fine_tune_after_block not in range(-1, 5), f'--fine_tune_after_block must be in -1..4, got '
                                                     f'{m.fine_tune_after_block}.'),
      (not 0 < m.batch_norm_decay < 1, f'--batch_norm_decay must be in (0, 1), got {m.batch_norm_decay}.'),
      (train_mode == 'pretrain' and m.fine_tune_after_block != -1,
       '--fine_tune_after_block freezes layers, which pretraining does not support: set it to -1.'),
      (train_mode in TRAIN_MODE and TRAIN_MODE[train_mode].frozen_encoder and m.fine_tune_after_block not in (-1, 4),
       '--train_mode=linear_eval freezes the whole encoder: leave --fine_tune_after_block at -1 (or 4).'),
  ]
  for failed, message in checks:
    if failed:
      raise UsageError(message)


def validate(cfg: Config, num_replicas: int = 1) -> None:
  """Fails fast, with one line naming the flag, on combinations that would fail later or silently. Reads no
  file (run.py checks model_dir's checkpoints where a mode needs them)."""
  m, d, o, e, r = cfg.model, cfg.data, cfg.optim, cfg.eval, cfg.run
  check_model(m, r.train_mode)
  budget = o.train_seconds  # a bad --train_time raises here
  checks = [
      (o.train_batch_size < 1, f'--train_batch_size must be >= 1, got {o.train_batch_size}.'),
      (e.eval_batch_size < 1, f'--eval_batch_size must be >= 1, got {e.eval_batch_size}.'),
      (o.train_batch_size % num_replicas != 0,
       f'--train_batch_size={o.train_batch_size} is not divisible by the {num_replicas} replicas.'),
      (e.eval_batch_size % num_replicas != 0,
       f'--eval_batch_size={e.eval_batch_size} is not divisible by the {num_replicas} replicas.'),
      (r.mode in ('eval', 'train_then_eval') and r.train_mode == 'pretrain' and
       not m.lineareval_while_pretraining and not (r.mode == 'eval' and r.checkpoint),
       f'--mode={r.mode} has nothing to evaluate: pretraining without --lineareval_while_pretraining has no '
       'classifier. Use --mode=train, or keep the online linear head.'),
      (not 0 < d.label_fraction <= 1, f'--label_fraction must be in (0, 1], got {d.label_fraction}.'),
      (d.label_fraction < 1 and not TRAIN_MODE[r.train_mode].labeled,
       '--label_fraction applies to --train_mode=finetune or linear_eval; pretraining and distillation use '
       'every (unlabeled) train image.'),
      (TRAIN_MODE[r.train_mode].teacher and r.mode in ('train', 'train_then_eval') and not r.teacher,
       '--train_mode=distill needs --teacher (a SavedModel, model_dir or checkpoint of a fine-tuned model).'),
      (r.teacher and not TRAIN_MODE[r.train_mode].teacher, '--teacher applies to --train_mode=distill only.'),
      (o.distill_temperature <= 0, f'--distill_temperature must be > 0, got {o.distill_temperature}.'),
      (e.knn_eval_steps < 0 or (e.knn_eval_steps and r.train_mode != 'pretrain'),
       '--knn_eval_steps monitors pretraining: use it with --train_mode=pretrain, >= 0.'),
      (e.knn_k < 1 or e.knn_temperature <= 0 or e.knn_max_examples < 1,
       '--knn_k and --knn_max_examples must be >= 1 and --knn_temperature > 0.'),
      (o.train_steps < 0 or o.train_epochs < 0, '--train_steps and --train_epochs must be >= 0.'),
      (o.train_steps == 0 and o.train_epochs == 0 and not budget,
       'One of --train_steps, --train_epochs or --train_time must be > 0.'),
      (budget and o.train_steps, f'--train_time={o.train_time} and --train_steps={o.train_steps} both say how long '
                                 'to train: give one.'),
      (o.warmup_epochs < 0, f'--warmup_epochs must be >= 0, got {o.warmup_epochs}.'),
      (r.checkpoint_epochs < 1 and not r.checkpoint_steps,
       f'--checkpoint_epochs must be >= 1 (or set --checkpoint_steps), got {r.checkpoint_epochs}.'),
      (r.checkpoint_steps < 0 or r.train_summary_steps < 0,
       '--checkpoint_steps and --train_summary_steps must be >= 0.'),
      (o.temperature <= 0, f'--temperature must be > 0, got {o.temperature}.'),
      (d.image_size < 8, f'--image_size must be >= 8, got {d.image_size}.'),
      (not 0 < d.crop_min_area <= 1, f'--crop_min_area must be in (0, 1], got {d.crop_min_area}.'),
      (r.checkpoint and r.random_init, '--checkpoint and --random_init are exclusive.'),
      (r.use_tpu and not (r.tpu_name or r.master),
       '--use_tpu needs --tpu_name: the TPU node\'s name, or --tpu_name=local on a TPU VM.'),
      (o.jit_compile and num_replicas > 1 and not r.use_tpu,
       f'--jit_compile needs one replica ({num_replicas} here): XLA cannot compile MirroredStrategy\'s '
       'cross-replica BatchNorm and gather. (On TPUs the step is always compiled.)'),
  ]
  for failed, message in checks:
    if failed:
      raise UsageError(message)


def inherited(saved: dict[str, typing.Any], explicit: typing.Collection[str]) -> dict[str, typing.Any]:
  """The settings an evaluation takes from the run it evaluates (`saved`, its flags.json): every one not given
  explicitly and not describing this evaluation itself (`SESSION_FLAGS`); names this version does not know are
  left out."""
  return {name: value for name, value in saved.items()
          if name in GROUP_OF and name not in explicit and name not in SESSION_FLAGS}


def default_model_dir(cfg: Config) -> str:
  """Where a command writes when --model_dir is not given: a directory named after what it works on, so that
  a run on another dataset, in another train mode or of another model file never lands in an earlier run's."""
  r = cfg.run
  if r.checkpoint and r.mode in ('eval', 'embed_plot', 'export'):
    return os.path.join('runs', f'{_name(model_name(r.checkpoint))}-{r.mode}')
  name = _name(os.path.basename(os.path.abspath(os.path.expanduser(cfg.data.dataset)))
               if os.path.isdir(os.path.expanduser(cfg.data.dataset)) else cfg.data.dataset)
  return os.path.join('runs', name if r.train_mode == 'pretrain' else f'{name}-{r.train_mode}')


def model_name(path: str) -> str:
  """The name of a model file: the folder it is in, past `saved_model`, `ckpt` and step folders
  (`.../r50_1x_sk0/saved_model` -> r50_1x_sk0, `runs/x/ckpt-100` -> x)."""
  parts = [p for p in path.replace('\\', '/').split('/') if p]
  while len(parts) > 1 and (parts[-1] in ('saved_model', 'ckpt', 'variables') or parts[-1].isdigit() or
                            re.fullmatch(r'ckpt-\d+(\.index)?', parts[-1])):
    parts.pop()
  return parts[-1] if parts else 'model'


def _name(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', text).strip('_.') or 'run'


def run_differences(saved: dict[str, typing.Any], cfg: Config) -> list[tuple[str, typing.Any, typing.Any]]:
  """[(flag, value in the saved run, value here)] of the settings that define a run (all but
  `OPERATIONAL_FLAGS`) in which `cfg` differs from a run's flags.json `saved`. A setting the saved run predates
  had its default there; names this version does not know are left out."""
  defaults = Config().flat()
  return [(name, saved.get(name, defaults[name]), value) for name, value in cfg.flat().items()
          if name not in OPERATIONAL_FLAGS and saved.get(name, defaults[name]) != value]


def adopt_architecture(cfg: Config, explicit: typing.Collection[str], file: 'architecture.ModelFile',
                       flag: str = 'checkpoint') -> Config:
  """`cfg` with the network of a model file (architecture.ModelFile): its model settings replace those left at
  their defaults; one given explicitly that would build another network stops the run. For fine-tuning, the
  file's supervised head position is kept unless --ft_proj_selector is given."""
  arch = file.architecture
  flat = cfg.flat()
  conflicts = arch.contradictions({name: flat[name] for name in explicit})
  if conflicts:
    name, value, theirs = conflicts[0]
    raise UsageError(f'--{name}={value} contradicts --{flag}={file.path}, whose network has {name}={theirs} '
                     f'({arch.describe()}): drop --{name}, the network comes from the file.')
  changes = {name: value for name, value in arch.model_flags().items() if name not in explicit}
  if arch.num_classes is not None and arch.linear_eval_endpoint is None and 'ft_proj_selector' not in explicit:
    changes['ft_proj_selector'] = arch.ft_proj_selector
  return cfg.replace(**changes)
