"""The files of a run directory (`--model_dir`): this project names, reads and writes them here only (the event
files are TensorFlow's summary writers', the `checkpoint` state file TensorFlow's CheckpointManager's).

    flags.json              the run's settings (Config.flat()); the authors' run.py writes one too
    label_subset.json       the example ids of a label fraction, and how they were chosen
    ckpt-<step>.*           training checkpoints (model and optimizer), named by their global step
    events.out.tfevents.*   training summaries; eval/ (or eval_<name>/) the evaluation's
    result.json             the latest evaluation; result_<step>.json each step's, merged as evaluations add keys
    saved_model/<step>/     SavedModel exports (TF Hub Reusable, the authors' interface)
    embedding.png           --mode=embed_plot's picture

Every path goes through `tf.io.gfile`, so `gs://` works like a local path.
"""

import json
import os

import tensorflow as tf

FLAGS_FILE = 'flags.json'
LABEL_SUBSET_FILE = 'label_subset.json'
RESULT_FILE = 'result.json'
CHECKPOINT_NAME = 'ckpt'
EXPORT_DIR = 'saved_model'
EMBEDDING_FILE = 'embedding.png'


# ------------------------------------------------------------------------------------------- settings


def flags_path(model_dir):
  return os.path.join(model_dir, FLAGS_FILE)


def write_flags(model_dir, flat):
  tf.io.gfile.makedirs(model_dir)
  with tf.io.gfile.GFile(flags_path(model_dir), 'w') as f:
    json.dump(flat, f, indent=1)


def read_flags(folder):
  """The settings in `folder`'s flags.json (this project's or the authors'), or None when there is none; a file
  that is not JSON raises ValueError."""
  path = flags_path(folder)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def has_flags(model_dir):
  return tf.io.gfile.exists(flags_path(model_dir))


def write_label_subset(model_dir, ids, **details):
  """Writes the ids (and how they were chosen) to `label_subset.json`; returns the path."""
  tf.io.gfile.makedirs(model_dir)
  path = os.path.join(model_dir, LABEL_SUBSET_FILE)
  with tf.io.gfile.GFile(path, 'w') as f:
    json.dump(dict(details, num_examples=len(ids), ids=list(ids)), f, indent=1)
  return path


# ------------------------------------------------------------------------------------------- checkpoints


def checkpoint_step(path):
  """The step of a `ckpt-<step>` prefix (training names every checkpoint by its step), or None."""
  number = os.path.basename(path).rsplit('-', 1)[-1]
  return int(number) if number.isdigit() else None


def checkpoint_paths(model_dir):
  """The `ckpt-<step>` prefixes in model_dir that have an index file, oldest first (the `checkpoint` state file
  is not trusted: it may be stale or damaged too)."""
  if not model_dir or not tf.io.gfile.isdir(model_dir):
    return []
  paths = [p[:-len('.index')] for p in tf.io.gfile.glob(os.path.join(model_dir, f'{CHECKPOINT_NAME}-*.index'))]
  return sorted((p for p in paths if checkpoint_step(p) is not None), key=checkpoint_step)


def checkpoint_manager(checkpoint, model_dir, max_to_keep, step_counter):
  """The manager that writes `ckpt-<step>` checkpoints into model_dir."""
  return tf.train.CheckpointManager(checkpoint, model_dir, max_to_keep=max_to_keep, checkpoint_name=CHECKPOINT_NAME,
                                    step_counter=step_counter)


# ------------------------------------------------------------------------------------------- results


def result_path(model_dir, step=None):
  """result.json (the latest evaluation), or result_<step>.json."""
  return os.path.join(model_dir, RESULT_FILE if step is None else f'result_{step}.json')


def read_result(model_dir, step):
  """The evaluation of `step`, or None if there is none."""
  path = result_path(model_dir, step)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def eval_summary_dir(model_dir, eval_name=None):
  return os.path.join(model_dir, f'eval_{eval_name}' if eval_name else 'eval')


def write_results(model_dir, result, step, eval_name=None):
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
    with tf.io.gfile.GFile(path, 'w') as f:
      json.dump({**previous, **result}, f, indent=1)
  return changed


# ------------------------------------------------------------------------------------------- exports and pictures


def export_root(model_dir):
  return os.path.join(model_dir, EXPORT_DIR)


def export_path(model_dir, step):
  return os.path.join(export_root(model_dir), str(step))


def has_export(model_dir, step):
  return tf.io.gfile.exists(os.path.join(export_path(model_dir, step), 'saved_model.pb'))


def exported_steps(model_dir):
  """The steps of model_dir's exports, oldest first."""
  root = export_root(model_dir)
  if not tf.io.gfile.isdir(root):
    return []
  return sorted(int(d.rstrip('/')) for d in tf.io.gfile.listdir(root) if d.rstrip('/').isdigit())


def embedding_path(model_dir):
  return os.path.join(model_dir, EMBEDDING_FILE)
