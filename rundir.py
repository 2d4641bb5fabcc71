"""The files of a run directory (`--model_dir`): this project names, reads and writes them here only (the event
files are TensorFlow's summary writers', the `checkpoint` state file TensorFlow's CheckpointManager's).

    flags.json              the run's settings (Config.flat()); the authors' run.py writes one too
    label_subset.json       the example ids of a label fraction, and how they were chosen
    ckpt-<step>.*           training checkpoints (model and optimizer), named by their global step
    events.out.tfevents.*   training summaries; eval/ (or eval_<name>/) the evaluation's
    schedule.json           the steps a time budget (--train_time) fixed, and the timings they were fixed from
    result.json             the latest evaluation; result_<step>.json each step's, merged as evaluations add keys
    saved_model/<step>/     SavedModel exports (TF Hub Reusable, the authors' interface)
    torch/<step>/           PyTorch exports (model.safetensors, config.json, simclr_torch.py; torch_export.py)
    onnx/<step>/            ONNX exports (model.onnx, config.json)
    embedding.png           --mode=embed_plot's picture

Every path goes through `tf.io.gfile`, so `gs://` works like a local path.
"""

import json
import os
import typing

import tensorflow as tf

FLAGS_FILE = 'flags.json'
LABEL_SUBSET_FILE = 'label_subset.json'
SCHEDULE_FILE = 'schedule.json'
RESULT_FILE = 'result.json'
CHECKPOINT_NAME = 'ckpt'
EXPORT_DIRS = {'saved_model': 'saved_model', 'torch': 'torch', 'onnx': 'onnx'}
EMBEDDING_FILE = 'embedding.png'


# ------------------------------------------------------------------------------------------- settings


def flags_path(model_dir: str) -> str:
  return os.path.join(model_dir, FLAGS_FILE)


def write_flags(model_dir: str, flat: dict) -> None:
  _write_json(flags_path(model_dir), flat)


def read_flags(folder: str) -> typing.Optional[dict]:
  """The settings in `folder`'s flags.json (this project's or the authors'), or None when there is none; a file
  that is not JSON raises ValueError."""
  return _read_json(flags_path(folder))


def has_flags(model_dir: str) -> bool:
  return tf.io.gfile.exists(flags_path(model_dir))


def write_label_subset(model_dir: str, ids: typing.Sequence[str], **details) -> str:
  """Writes the ids (and how they were chosen) to `label_subset.json`; returns the path."""
  path = os.path.join(model_dir, LABEL_SUBSET_FILE)
  _write_json(path, dict(details, num_examples=len(ids), ids=list(ids)))
  return path


def write_schedule(model_dir: str, **schedule) -> None:
  """The steps a time budget fixed (`train_steps`) and what they were fixed from, to schedule.json."""
  _write_json(os.path.join(model_dir, SCHEDULE_FILE), schedule)


def read_schedule(model_dir: typing.Optional[str]) -> typing.Optional[dict]:
  """schedule.json's contents, or None when the run has not fixed its steps."""
  return _read_json(os.path.join(model_dir, SCHEDULE_FILE)) if model_dir else None


def _write_json(path: str, value: dict) -> None:
  """Writes under a temporary name, then renames: a reader never sees half a file."""
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.gfile.GFile(path + '.tmp', 'w') as f:
    json.dump(value, f, indent=1)
  tf.io.gfile.rename(path + '.tmp', path, overwrite=True)


def _read_json(path: str) -> typing.Optional[dict]:
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


# ------------------------------------------------------------------------------------------- checkpoints


def checkpoint_step(path: str) -> typing.Optional[int]:
  """The step of a `ckpt-<step>` prefix (training names every checkpoint by its step), or None."""
  number = os.path.basename(path).rsplit('-', 1)[-1]
  return int(number) if number.isdigit() else None


def checkpoint_paths(model_dir: typing.Optional[str]) -> list[str]:
  """The `ckpt-<step>` prefixes in model_dir that have an index file, oldest first (the `checkpoint` state file
  is not trusted: it may be stale or damaged too)."""
  if not model_dir or not tf.io.gfile.isdir(model_dir):
    return []
  paths = [p[:-len('.index')] for p in tf.io.gfile.glob(os.path.join(model_dir, f'{CHECKPOINT_NAME}-*.index'))]
  return sorted((p for p in paths if checkpoint_step(p) is not None), key=checkpoint_step)


def checkpoint_manager(checkpoint: tf.train.Checkpoint, model_dir: str, max_to_keep: int,
                       step_counter: tf.Variable) -> tf.train.CheckpointManager:
  """The manager that writes `ckpt-<step>` checkpoints into model_dir."""
  return tf.train.CheckpointManager(checkpoint, model_dir, max_to_keep=max_to_keep, checkpoint_name=CHECKPOINT_NAME,
                                    step_counter=step_counter)


# ------------------------------------------------------------------------------------------- results


def result_path(model_dir: str, step: typing.Optional[int] = None) -> str:
  """result.json (the latest evaluation), or result_<step>.json."""
  return os.path.join(model_dir, RESULT_FILE if step is None else f'result_{step}.json')


def read_result(model_dir: str, step: int) -> typing.Optional[dict]:
  """The evaluation of `step`, or None if there is none."""
  return _read_json(result_path(model_dir, step))


def eval_summary_dir(model_dir: str, eval_name: typing.Optional[str] = None) -> str:
  return os.path.join(model_dir, f'eval_{eval_name}' if eval_name else 'eval')


def write_results(model_dir: str, result: dict, step: int, eval_name: typing.Optional[str] = None) -> list[str]:
  """`result` to result.json and result_<step>.json and its `eval/` values to TensorBoard in the evaluation's
  summary folder, merged into an earlier result of the same step (whose other keys, e.g. the linear evaluation
  after pretraining, stay). Returns the keys whose values changed; nothing is written when none did."""
  previous = read_result(model_dir, step) or {}
  changed = sorted(k for k in set(previous) & set(result) if previous[k] != result[k])
  if previous and not changed and set(result) <= set(previous):
    return []
  tf.io.gfile.makedirs(model_dir)
  with tf.summary.create_file_writer(eval_summary_dir(model_dir, eval_name)).as_default():
    for name, value in result.items():
      if name.startswith('eval/'):
        tf.summary.scalar(name, value, step=step)
  for path in (result_path(model_dir), result_path(model_dir, step)):
    _write_json(path, {**previous, **result})
  return changed


# ------------------------------------------------------------------------------------------- exports and pictures


def export_root(model_dir: str, export_format: str = 'saved_model') -> str:
  """Where model_dir's exports of a format go: saved_model/, torch/ or onnx/."""
  return os.path.join(model_dir, EXPORT_DIRS[export_format])


def export_path(model_dir: str, step: int, export_format: str = 'saved_model') -> str:
  return os.path.join(export_root(model_dir, export_format), str(step))


def has_export(model_dir: str, step: int) -> bool:
  return tf.io.gfile.exists(os.path.join(export_path(model_dir, step), 'saved_model.pb'))


def exported_steps(model_dir: str, export_format: str = 'saved_model') -> list[int]:
  """The steps of model_dir's exports of a format, oldest first."""
  root = export_root(model_dir, export_format)
  if not tf.io.gfile.isdir(root):
    return []
  return sorted(int(d.rstrip('/')) for d in tf.io.gfile.listdir(root) if d.rstrip('/').isdigit())


def replace_export(final: str, write: typing.Callable[[str], typing.Any]) -> str:
  """`write(folder)` into a temporary folder, then renamed to `final` (an export already there is replaced): a
  kill or a full disk never leaves a half-written export under the final name."""
  tmp = final + '.tmp'
  if tf.io.gfile.exists(tmp):
    tf.io.gfile.rmtree(tmp)
  tf.io.gfile.makedirs(tmp)
  write(tmp)
  if tf.io.gfile.exists(final):
    tf.io.gfile.rmtree(final)
  tf.io.gfile.rename(tmp, final)
  return final


def keep_newest_exports(model_dir: str, keep: int, export_format: str = 'saved_model') -> None:
  """Deletes all but the newest `keep` exports of a format (keep <= 0: keeps all)."""
  for old in exported_steps(model_dir, export_format)[:-keep] if keep > 0 else []:
    tf.io.gfile.rmtree(export_path(model_dir, old, export_format))


def embedding_path(model_dir: str) -> str:
  return os.path.join(model_dir, EMBEDDING_FILE)
