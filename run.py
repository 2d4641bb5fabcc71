r"""SimCLR: pretrain, fine-tune, evaluate, distill and export, with one command.

  python run.py                      # pretrain on the embedded dataset, then report linear-eval accuracy
  python run.py --flagfile=configs/cifar10_pretrain.cfg --data_dir=...
  python run.py --train_mode=finetune --checkpoint=runs/simclr_shapes --label_fraction=0.1 ...
  python run.py --mode=eval --model_dir=...
  python run.py --mode=export --checkpoint=<the authors' r50_1x_sk0/saved_model> --model_dir=...

Flags keep the names and meanings of the SimCLR authors' run.py, so their recipes work unchanged; they are
defined from config.py's fields, where their defaults and help live. This is the only module that reads flags:
everything else takes a Config (or the group of it that it needs). Here: the flags, the checks of the inputs
before any expensive work, the distribution strategy, and which mode runs.
"""

import json
import os
import sys
import typing

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
  import tensorflow as tf

  import architecture
  import config as config_lib
  import data as data_lib
  import evaluation
  import model as model_lib
  import model_io
  import rundir
  import signals
  import train

FLAGS = flags.FLAGS
# The flag kind of each field type (Optional[...] fields are flags whose default is None).
_FLAG_KINDS = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}


def _define_flags() -> None:
  for _, field in config_lib.fields():
    kind = next(t for t in typing.get_args(field.type) or (field.type,) if t is not type(None))
    if field.metadata['choices']:
      flags.DEFINE_enum(field.name, field.default, list(field.metadata['choices']), field.metadata['help'])
    else:
      _FLAG_KINDS[kind](field.name, field.default, field.metadata['help'])


_define_flags()


def config_from_flags() -> tuple[config_lib.Config, frozenset[str]]:
  """(the Config of the command line, the names of the flags given on it or in a --flagfile)."""
  names = [field.name for _, field in config_lib.fields()]
  return (config_lib.Config.from_flat({name: getattr(FLAGS, name) for name in names}),
          frozenset(name for name in names if FLAGS[name].present))


# ------------------------------------------------------------------------------------------- inputs


def run_flags(cfg: config_lib.Config, explicit: typing.Collection[str]) -> config_lib.Config:
  """--mode=eval / embed_plot / export of model_dir: the run's own settings (model, weight decay, label
  fraction, data...) from its flags.json, except those given here and those of the evaluation itself."""
  if cfg.run.mode not in ('eval', 'embed_plot', 'export') or cfg.run.checkpoint:
    return cfg
  saved = rundir.read_flags(cfg.run.model_dir)
  if saved is None:
    return cfg
  inherited = config_lib.inherited(saved, explicit)
  logging.info('Flags of the run from %s: %s', rundir.flags_path(cfg.run.model_dir), inherited)
  return cfg.replace(**inherited)


def check_own_run(cfg: config_lib.Config) -> None:
  """A training command continues, reports or overwrites only its own run: when model_dir holds a run whose
  flags.json differs in a setting that defines the run, it stops before a model is built or anything is written,
  naming the differences."""
  r = cfg.run
  if r.mode not in ('train', 'train_then_eval'):
    return
  try:
    saved = rundir.read_flags(r.model_dir)
  except ValueError:
    raise config_lib.UsageError(f'{rundir.flags_path(r.model_dir)} is not readable JSON: move it away, or give '
                                'a new --model_dir.') from None
  if saved is not None and not isinstance(saved, dict):
    raise config_lib.UsageError(f'{rundir.flags_path(r.model_dir)} holds no settings: move it away, or give a new '
                                '--model_dir.')
  differences = config_lib.run_differences(saved, cfg) if saved is not None else []
  if differences:
    listed = '; '.join(f'--{name}={theirs} there, {ours} here' for name, theirs, ours in differences[:4])
    more = f' (and {len(differences) - 4} more)' if len(differences) > 4 else ''
    raise config_lib.UsageError(
        f'--model_dir={r.model_dir} holds another run: {listed}{more}. Give a new --model_dir for this one, or '
        'that run\'s own flags to resume it.')


def check_model_dir(cfg: config_lib.Config) -> None:
  """The checkpoint a mode needs is there: --checkpoint, or one in model_dir."""
  r = cfg.run
  has_checkpoint = lambda: bool(rundir.checkpoint_paths(r.model_dir))
  if r.train_mode in config_lib.LABELED_MODES and r.mode in ('train', 'train_then_eval') and not (
      r.checkpoint or r.random_init or has_checkpoint()):
    raise config_lib.UsageError(
        f'--train_mode={r.train_mode} needs --checkpoint (a pretrained checkpoint, model_dir or SavedModel), a '
        f'checkpoint in --model_dir={r.model_dir} to resume, or --random_init.')
  if r.mode in ('embed_plot', 'export') and not (r.checkpoint or has_checkpoint()):
    raise config_lib.UsageError(f'--mode={r.mode} needs a checkpoint in --model_dir={r.model_dir} or --checkpoint.')
  if r.mode == 'eval' and not r.checkpoint and not has_checkpoint() and cfg.eval.eval_timeout <= 0:
    raise config_lib.UsageError(
        f'--mode=eval found no checkpoint in --model_dir={r.model_dir} (and --eval_timeout=0).')


def model_file(cfg: config_lib.Config, flag: str,
               read: typing.Callable[[str], typing.Any] = architecture.inspect) -> typing.Any:
  """`read(path)` of --checkpoint / --teacher (`architecture.inspect`, or `architecture.resolve` to check the
  path without running TensorFlow), None without the flag; a bad path or file is a UsageError naming the flag."""
  path = getattr(cfg.run, flag)
  if not path:
    return None
  try:
    return read(path)
  except architecture.ModelFileError as error:
    raise config_lib.UsageError(
        f'--{flag}={error}' if str(error).startswith(path) else f'--{flag}={path}: {error}') from None


def check_classifiers(cfg: config_lib.Config, files: dict[str, typing.Optional[architecture.ModelFile]],
                      source: data_lib.Source) -> None:
  """The classifier a run uses as it is -- the --teacher's, or --checkpoint's under --mode=eval -- must exist
  and predict the dataset's classes."""
  for flag, used in (('teacher', cfg.run.train_mode == 'distill'), ('checkpoint', cfg.run.mode == 'eval')):
    file = files[flag]
    if file is None or not used:
      continue
    if file.architecture.num_classes is None:
      raise config_lib.UsageError(f'--{flag}={file.path} has no classifier (logits_sup) to use: fine-tune it '
                                  'first.')
    if file.architecture.num_classes != source.num_classes:
      raise config_lib.UsageError(f'--{flag}={file.path} predicts {file.architecture.num_classes} classes; '
                                  f'--dataset={cfg.data.dataset} has {source.num_classes}.')


# ------------------------------------------------------------------------------------------- strategy


def build_strategy(cfg: config_lib.Config) -> tf.distribute.Strategy:
  """TPUStrategy with --use_tpu; MultiWorkerMirroredStrategy when TF_CONFIG names several workers;
  MirroredStrategy over several local GPUs; else the default (one device)."""
  r = cfg.run
  workers = json.loads(os.environ.get('TF_CONFIG', '{}')).get('cluster', {}).get('worker', [])
  if r.use_tpu:
    try:
      resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
          tpu=r.tpu_name or r.master, zone=r.tpu_zone, project=r.gcp_project)
      tf.config.experimental_connect_to_cluster(resolver)
      tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, OSError, tf.errors.OpError) as error:  # OSError: the metadata server
      raise config_lib.UsageError(
          f'--use_tpu: cannot reach TPU {r.tpu_name or r.master!r} ({error.__class__.__name__}: '
          f'{str(error).splitlines()[0][:160]}). On a TPU VM use --tpu_name=local; for a TPU node give its name '
          'and --tpu_zone / --gcp_project.') from None
    strategy, name = tf.distribute.TPUStrategy(resolver), 'TPUStrategy'
  elif len(workers) > 1:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    name = f'MultiWorkerMirroredStrategy over {len(workers)} workers'
  elif len(tf.config.list_logical_devices('GPU')) > 1:
    strategy, name = tf.distribute.MirroredStrategy(), 'MirroredStrategy'
  else:
    strategy, name = tf.distribute.get_strategy(), 'the default strategy'
  if strategy.num_replicas_in_sync > 1 or r.use_tpu:
    progress.status(f'Running with {name}, {strategy.num_replicas_in_sync} replica(s).')
  return strategy


def resolve_precision(cfg: config_lib.Config, explicit: typing.Collection[str]) -> config_lib.Config:
  """--precision=auto as the number format this hardware is fast at (model.resolve_precision), so flags.json
  records what ran; a run resumes in the format it started in (a mixed_float16 optimizer is another object),
  unless --precision is given. Evaluations and exports compute in float32: what the weights mean, measured the
  same way on every machine. -v says which format and why."""
  if cfg.run.mode in ('eval', 'embed_plot', 'export'):
    precision, why = 'float32', f'--mode={cfg.run.mode} computes in float32'
    if 'precision' in explicit and cfg.model.precision not in ('auto', 'float32'):
      logging.warning('--precision=%s is not used: --mode=%s computes in float32.', cfg.model.precision,
                      cfg.run.mode)
  else:
    try:
      saved = rundir.read_flags(cfg.run.model_dir) if 'precision' not in explicit else None
    except ValueError:
      saved = None  # check_own_run names the damaged file
    if isinstance(saved, dict) and saved.get('precision') in config_lib.POLICIES:
      precision, why = saved['precision'], f'the run in {cfg.run.model_dir} started in it'
    else:
      precision, why = model_lib.resolve_precision(cfg.model.precision, cfg.run.use_tpu)
  if DETAIL:
    progress.status(f'Precision: {precision} ({why}).')
  return cfg.replace(precision=precision)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Only the chief writes checkpoints, summaries, results and exports."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.task_type:
    return True
  return resolver.task_type == 'chief' or (resolver.task_type == 'worker' and resolver.task_id == 0)


# ------------------------------------------------------------------------------------------- modes


def export_file(cfg: config_lib.Config, strategy: tf.distribute.Strategy,
                files: dict[str, typing.Optional[architecture.ModelFile]], explicit: typing.Collection[str]) -> None:
  """--mode=export of --checkpoint (or model_dir's latest checkpoint), no training: this project's SavedModel, or
  the PyTorch / ONNX export (torch_export.py, which reads the file's weights without building the TF model)."""
  file = files['checkpoint'] or architecture.inspect(cfg.run.model_dir)
  if cfg.run.export_format == 'saved_model':
    model = model_io.load(cfg, strategy, file)
    path = model_io.export(model, cfg.run.model_dir, file.step, cfg.run.keep_hub_module_max)
  else:
    import torch_export  # pylint: disable=g-import-not-at-top
    if cfg.run.export_format == 'torch':
      path = torch_export.export_torch(file, cfg.run.model_dir, cfg.run.keep_hub_module_max)
    else:
      run_size = files['checkpoint'] is None and rundir.has_flags(cfg.run.model_dir)  # the run's own, inherited
      path = torch_export.export_onnx(file, cfg.run.model_dir, cfg.run.keep_hub_module_max,
                                      cfg.data.image_size if 'image_size' in explicit or run_size else None)
  print(f'Exported {file.describe()} to {path}', flush=True)


def finished_run(cfg: config_lib.Config, num_examples: int) -> typing.Optional[int]:
  """The step of a finished run in model_dir (its final checkpoint, and its results for train_then_eval), or None."""
  paths = rundir.checkpoint_paths(cfg.run.model_dir)
  step = rundir.checkpoint_step(paths[-1]) if paths else None
  last = train.planned_steps(cfg, num_examples)
  if step is None or last is None or step < last or not model_io.readable(paths[-1]):
    return None
  if cfg.run.mode == 'train_then_eval' and rundir.read_result(cfg.run.model_dir, step) is None:
    return None
  return step


def train_and_evaluate(cfg: config_lib.Config, strategy: tf.distribute.Strategy, source: data_lib.Source, chief: bool,
                       num_examples: int, subset_ids: typing.Optional[list[str]],
                       files: dict[str, typing.Optional[architecture.ModelFile]]) -> None:
  """--mode=train: training. --mode=train_then_eval: training, then (pretraining) the linear evaluation on frozen
  features, the evaluation of the classifier, its results and the step's SavedModel export."""
  model, step = train.train(cfg, strategy, source, chief, num_examples, subset_ids, files)
  if cfg.run.mode != 'train_then_eval':
    return
  cfg, model = cfg.replace(precision='float32'), model_lib.in_float32(model, strategy)  # as --mode=eval does
  extra = {}
  if cfg.run.train_mode == 'pretrain' and cfg.eval.linear_eval and source.num_classes > 1:
    extra = evaluation.frozen_linear_eval(cfg, strategy, source, model)
  progress.status(f'Evaluating on {cfg.data.eval_split}...')
  result = {**evaluation.evaluate(cfg, strategy, source, model, step), **extra}
  if chief:
    evaluation.write_evaluation(cfg, result, step)
    evaluation.export_once(model, cfg, step)
  print('\n'.join(evaluation.result_lines(cfg, result)), flush=True)
  print(f'Results: {rundir.result_path(cfg.run.model_dir)}', flush=True)


def main(argv: typing.Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if DETAIL:
    progress.status(runtime.describe_kernels())
  else:
    progress.quiet(ROOT)
    logging.set_verbosity(logging.WARNING)
  cfg, explicit = config_from_flags()
  try:
    if cfg.run.model_dir is None:
      cfg = cfg.replace(model_dir=config_lib.default_model_dir(cfg))
    cfg = run_flags(cfg, explicit)
    config_lib.validate(cfg)
    check_model_dir(cfg)
    for flag in ('checkpoint', 'teacher'):
      model_file(cfg, flag, architecture.resolve)
    strategy = build_strategy(cfg)  # before TensorFlow runs anything (multi-worker and TPU need it first)
    cfg = resolve_precision(cfg, explicit)
    files = {flag: model_file(cfg, flag) for flag in ('checkpoint', 'teacher')}
    if files['checkpoint'] is not None:
      cfg = config_lib.adopt_architecture(cfg, explicit, files['checkpoint'])
    config_lib.validate(cfg, strategy.num_replicas_in_sync)
    if cfg.run.mode == 'export':  # needs no data
      return export_file(cfg, strategy, files, explicit)
    progress.status(f'Preparing data: {cfg.data.dataset}...')
    source = data_lib.load_source(cfg.data.dataset, cfg.data.data_dir, cfg.data.strict_images)
    check_classifiers(cfg, files, source)
    if cfg.model.lineareval_while_pretraining and source.num_classes == 0 and cfg.run.train_mode == 'pretrain':
      logging.warning('%s has no labels: no online linear evaluation.', source.name)
      cfg = cfg.replace(lineareval_while_pretraining=False)
    check_own_run(cfg)  # the run's settings as they will be recorded; before any model is built
    num_examples, subset_ids = train.training_examples(cfg, source)
  except (config_lib.UsageError, data_lib.DataError, architecture.ModelFileError) as error:
    sys.exit(f'Error: {error}')
  progress.status(f'Data: {source.name}, ' + ', '.join(f'{n:,} {split}' for split, n in source.split_sizes.items()) +
                  f' images, {source.num_classes} classes.')
  chief = is_chief(strategy)
  r = cfg.run
  try:
    if r.mode == 'eval' and files['checkpoint'] is not None:
      evaluation.eval_file(cfg, strategy, source, chief, files['checkpoint'])
    elif r.mode == 'eval':
      evaluation.eval_checkpoints(cfg, strategy, source, chief, lambda: train.planned_steps(cfg, num_examples))
    elif r.mode == 'embed_plot':
      path = evaluation.embedding_plot(cfg, strategy, source, files)
      print(f'Embedding plot (random encoder | trained): {path}', flush=True)
    elif (step := finished_run(cfg, num_examples)) is not None:
      where = rundir.result_path(r.model_dir) if r.mode == 'train_then_eval' else r.model_dir
      print(f'Training finished at step {step}; results in {where}', flush=True)
      if r.mode == 'train_then_eval':
        print('\n'.join(evaluation.result_lines(cfg, rundir.read_result(r.model_dir, step))), flush=True)
    else:
      train_and_evaluate(cfg, strategy, source, chief, num_examples, subset_ids, files)
  except (config_lib.UsageError, data_lib.DataError, architecture.ModelFileError, FloatingPointError) as error:
    sys.exit(f'Error: {error}')
  except signals.Stopped as stopped:
    print(f'Stopped by {stopped.signal_name} at step {stopped.step}; checkpoint written to {r.model_dir}. Run the '
          'same command to resume.', flush=True)
    sys.exit(130 if stopped.signal_name == 'SIGINT' else 143)


if __name__ == '__main__':
  app.run(main)
