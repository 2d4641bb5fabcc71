"""Evaluation: a classifier on the eval split, the linear evaluation after pretraining (against a random encoder),
the kNN monitor of pretraining, the embedding picture, and evaluating checkpoints as they appear.

A part of a split -- the linear evaluation's training features, the kNN bank, an --eval_steps evaluation -- is
a stratified, seeded sample of it (`data.sample_ids`), never its first examples: an image folder reads sorted by
class. The frozen-feature classifiers themselves are linear_eval.py's.
"""

import time
import typing

from absl import logging
import keras
import tensorflow as tf

import architecture
import config as config_lib
import data as data_lib
import embed_plot as embed_plot_lib
import linear_eval as linear_eval_lib
import model as model_lib
import model_io
import optimization
import progress
import rundir


def evaluate_classifier(model: keras.Model, dataset: tf.distribute.DistributedDataset, strategy: tf.distribute.Strategy,
                        num_classes: int, max_batches: int = 0) -> dict:
  """Top-1 accuracy of the model's `logits_sup` on a distributed dataset of (images, one-hot labels), and
  top-5 when there are more than 5 classes (else it is 1 by construction); unlabeled rows do not count.
  Returns {'eval/label_top_k_accuracy': ..., 'eval/num_examples': n}; `max_batches` > 0 stops early."""
  ks = [1] + ([5] if num_classes > 5 else [])

  def replica_step(images, labels):
    logits = model(images, training=False)['logits_sup']
    weights = tf.reduce_sum(labels, 1)
    true = tf.argmax(labels, 1, output_type=tf.int32)
    hits = [tf.reduce_sum(tf.cast(tf.math.in_top_k(true, logits, k), tf.float32) * weights) for k in ks]
    return tf.stack(hits + [tf.reduce_sum(weights)])

  @tf.function
  def step(images, labels):
    return strategy.reduce('SUM', strategy.run(replica_step, args=(images, labels)), axis=None)

  totals = tf.zeros([len(ks) + 1])
  for index, (images, labels) in enumerate(dataset):
    if max_batches and index >= max_batches:
      break
    totals += step(images, labels)
  *hits, count = (float(t) for t in totals.numpy())
  result = {f'eval/label_top_{k}_accuracy': h / max(count, 1) for k, h in zip(ks, hits)}
  return {**result, 'eval/num_examples': int(count)}


def evaluate(cfg: config_lib.Config, strategy: tf.distribute.Strategy, source: data_lib.Source,
             model: keras.Model, step: int) -> dict:
  """The supervised head on --eval_split (`evaluate_classifier`; --eval_steps batches of a stratified sample, or
  all of it) and the regularization loss (optimization's rule, as train/weight_decay), at `step`."""
  d, e = cfg.data, cfg.eval
  subset = data_lib.sample_ids(source, d.eval_split, e.eval_examples)
  dataset = data_lib.build_distributed_dataset(strategy, e.eval_batch_size, source, d.eval_split, settings=d,
                                               is_training=False, subset_ids=subset)
  result = evaluate_classifier(model, dataset, strategy, source.num_classes, e.eval_steps)
  regularization = optimization.weight_decay_loss(model.trainable_variables, cfg.optim.weight_decay,
                                                  cfg.optim.optimizer)
  result.update({'eval/regularization_loss': float(regularization), 'global_step': step})
  logging.info('Eval results at step %d: %s', step, result)
  return result


def write_evaluation(cfg: config_lib.Config, result: dict, step: int) -> None:
  """`result` to model_dir's result.json, result_<step>.json and eval summaries (merged into an earlier
  evaluation of the step), and the settings to flags.json where no run wrote one (the evaluation of a file)."""
  r = cfg.run
  changed = rundir.write_results(r.model_dir, result, step, cfg.eval.eval_name)
  if changed:
    progress.status(f'Replaced the earlier evaluation of step {step} in {r.model_dir}: it differed in {changed}.')
  if not rundir.has_flags(r.model_dir):
    rundir.write_flags(r.model_dir, cfg.flat())


def export_once(model: keras.Model, cfg: config_lib.Config, step: int) -> None:
  """model_dir's SavedModel of `step`, unless there is one (the authors' evaluator exports every step it
  evaluates too)."""
  if not rundir.has_export(cfg.run.model_dir, step):
    model_io.export(model, cfg.run.model_dir, step, cfg.run.keep_hub_module_max)


def result_lines(cfg: config_lib.Config, result: dict) -> list[str]:
  """What a run says of its result on stdout."""
  head = config_lib.TRAIN_MODE[cfg.run.train_mode].result
  split = cfg.data.eval_split
  top5 = result.get('eval/label_top_5_accuracy')
  lines = [f'{head} ({split}): top-1 {result["eval/label_top_1_accuracy"]:.4f}' +
           (f', top-5 {top5:.4f}' if top5 is not None else '') + f' (step {result["global_step"]})']
  if 'linear_eval/top_1_accuracy' in result:
    lines.append(f'Linear evaluation on frozen features ({split}): top-1 '
                 f'{result["linear_eval/top_1_accuracy"]:.4f} pretrained vs '
                 f'{result["linear_eval/random_init_top_1_accuracy"]:.4f} random init')
  return lines


# ------------------------------------------------------------------------------------------- frozen features


def frozen_features(cfg: config_lib.Config, source: data_lib.Source, net: keras.Model, train: bool,
                    max_examples: typing.Optional[int] = None) -> tuple:
  """(`final_avg_pool` features, labels) through `net` in inference mode, eval preprocessing: of the train split
  when `train`, else of the eval split; at most `max_examples` of it (default: --linear_eval_max_examples of the
  train split, --eval_steps batches or all of the eval split). A part of a split is a stratified sample of it
  (`data.sample_ids`), never the first examples read."""
  d, e = cfg.data, cfg.eval
  split = d.train_split if train else d.eval_split
  if max_examples is None:
    max_examples = e.linear_eval_max_examples if train else e.eval_examples
  dataset = data_lib.build_dataset(source, split, e.eval_batch_size, d, is_training=False,
                                   subset_ids=data_lib.sample_ids(source, split, max_examples))
  return linear_eval_lib.extract_features(net, dataset)


def knn_monitor(cfg: config_lib.Config, source: data_lib.Source, model: keras.Model) -> float:
  """Weighted-kNN top-1 on --eval_split with train features (at most --knn_max_examples) as the bank: a
  label-free training signal."""
  bank = frozen_features(cfg, source, model, train=True, max_examples=cfg.eval.knn_max_examples)
  return linear_eval_lib.knn_eval(
      *bank, *frozen_features(cfg, source, model, train=False),
      num_classes=source.num_classes, k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature)['top_1_accuracy']


def random_encoder(cfg: config_lib.Config, strategy: tf.distribute.Strategy, num_classes: int,
                   seed: int = 0) -> model_lib.SimCLRModel:
  """The baseline a representation must beat: this architecture, randomly initialised -- the same weights in
  every run (seeded)."""
  keras.utils.set_random_seed(seed)
  with strategy.scope():
    return model_lib.build(cfg, num_classes, strategy.num_replicas_in_sync)


def frozen_linear_eval(cfg: config_lib.Config, strategy: tf.distribute.Strategy, source: data_lib.Source,
                       model: keras.Model) -> dict:
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


def embedding_plot(cfg: config_lib.Config, strategy: tf.distribute.Strategy, source: data_lib.Source,
                   files: dict[str, typing.Optional[architecture.ModelFile]]) -> str:
  """--mode=embed_plot: PCA of --eval_split features, a random encoder (left) next to the trained one (right),
  as model_dir/embedding.png. The trained one: --checkpoint, else model_dir's latest checkpoint."""
  file = files['checkpoint'] or architecture.inspect(cfg.run.model_dir)
  trained = model_io.load(cfg, strategy, file)
  random_model = random_encoder(model_io.as_file_config(cfg, file), strategy, file.architecture.num_classes or 1)
  panels = [frozen_features(cfg, source, net, train=False) for net in (random_model, trained)]
  tf.io.gfile.makedirs(cfg.run.model_dir)
  return embed_plot_lib.save_embedding_plot(rundir.embedding_path(cfg.run.model_dir), panels)


# ------------------------------------------------------------------------------------------- --mode=eval


def eval_checkpoints(cfg: config_lib.Config, strategy: tf.distribute.Strategy, source: data_lib.Source, chief: bool,
                     last_step: typing.Callable[[], typing.Optional[int]]) -> None:
  """--mode=eval of model_dir: evaluates its latest checkpoint, then each newer one as it appears, until the
  run's last step (`last_step()`, asked again after each evaluation: a time budget fixes and refits it; None
  while unknown) or --eval_timeout seconds without a new one. Unreadable checkpoints are skipped (warning)."""
  model_dir = cfg.run.model_dir
  with strategy.scope():
    model = model_lib.build(cfg, max(source.num_classes, 1), strategy.num_replicas_in_sync)
  results, evaluated, idle_since = [], set(), time.monotonic()
  while True:
    paths = [p for p in rundir.checkpoint_paths(model_dir) if p not in evaluated]
    if paths:
      path = paths[-1]  # the newest, as the authors' evaluator does
      evaluated.add(path)
      step = model_io.read_training_checkpoint(model, path)
      if step is not None:
        result = evaluate(cfg, strategy, source, model, step)
        if chief:
          write_evaluation(cfg, result, step)
          export_once(model, cfg, step)
        results.append(result)
        print(result_lines(cfg, result)[0], flush=True)
        last = last_step()
        if last is not None and step >= last:
          break
      idle_since = time.monotonic()
    elif time.monotonic() - idle_since >= cfg.eval.eval_timeout:
      break
    else:
      time.sleep(1)
  if not results:
    raise config_lib.UsageError(f'--mode=eval: no readable checkpoint in --model_dir={model_dir}.')
  latest = results[-1]
  print(f'Evaluated {len(results)} checkpoint(s); latest step {latest["global_step"]}: top-1 '
        f'{latest["eval/label_top_1_accuracy"]:.4f}. Results: {rundir.result_path(model_dir)}', flush=True)


def eval_file(cfg: config_lib.Config, strategy: tf.distribute.Strategy, source: data_lib.Source, chief: bool,
              file: architecture.ModelFile) -> None:
  """--mode=eval --checkpoint=FILE: the file's own classifier (logits_sup) on --eval_split, no training."""
  model = model_io.load(cfg, strategy, file)
  file_cfg = model_io.as_file_config(cfg, file)
  result = evaluate(file_cfg, strategy, source, model, file.step)
  if chief:
    write_evaluation(file_cfg, result, file.step)
  print(result_lines(file_cfg, result)[0], flush=True)
  print(f'Results: {rundir.result_path(cfg.run.model_dir)}', flush=True)
