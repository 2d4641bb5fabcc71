"""run.py end to end, as a user runs it (subprocesses, tiny settings), and its flag validation."""

import copy
import dataclasses
import glob
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import model as model_lib
import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--resnet_depth=18', '--width_multiplier=0.25', '--image_size=32', '--train_batch_size=16',
        '--eval_batch_size=64', '--eval_steps=2', '--warmup_epochs=0', '--checkpoint_steps=2',
        '--linear_eval_max_examples=256']


def run_py(*args, check=True):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='')
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'run.py'), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  if check and result.returncode != 0:
    raise AssertionError(f'run.py {args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-4000:]}')
  return result


def scalars(model_dir, tag):
  values = {}
  for path in sorted(glob.glob(os.path.join(model_dir, 'events.out.tfevents.*'))):
    events = event_accumulator.EventAccumulator(path)
    events.Reload()
    if tag in events.Tags()['tensors']:
      values.update({e.step: float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)})
  return values


def tiny_model(train_mode='pretrain'):
  net = model_lib.SimCLRModel(10, resnet_depth=18, width_multiplier=0.25, cifar_stem=True, global_bn=False,
                              train_mode=train_mode)
  net(tf.zeros([1, 32, 32, 6 if train_mode == 'pretrain' else 3]), training=False)
  return net


@pytest.fixture(scope='module')
def pretrained(shapes_data_dir, tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp('pretrain'))
  result = run_py(f'--data_dir={shapes_data_dir}', f'--model_dir={model_dir}', '--train_steps=4',
                  '--knn_eval_steps=2', *TINY)
  return model_dir, result


@pytest.fixture(scope='module')
def finetuned(pretrained, shapes_data_dir, tmp_path_factory):
  """A fine-tuned model (the teacher of the distillation tests), evaluated and exported."""
  model_dir = str(tmp_path_factory.mktemp('finetuned'))
  run_py(f'--data_dir={shapes_data_dir}', f'--model_dir={model_dir}', '--train_mode=finetune',
         f'--checkpoint={pretrained[0]}', '--train_steps=2', '--linear_eval=False', *TINY)
  return model_dir


@pytest.mark.slow
def test_pretrain_writes_checkpoints_results_export_and_summaries(pretrained):
  model_dir, result = pretrained
  assert os.path.exists(os.path.join(model_dir, 'ckpt-4.index'))
  assert os.path.exists(os.path.join(model_dir, 'ckpt-2.index'))
  with open(os.path.join(model_dir, 'result.json')) as f:
    outcome = json.load(f)
  assert set(outcome) >= {'eval/label_top_1_accuracy', 'eval/label_top_5_accuracy', 'eval/regularization_loss',
                          'global_step'}
  assert outcome['global_step'] == 4 and 0 <= outcome['eval/label_top_1_accuracy'] <= 1
  assert outcome['eval/label_top_5_accuracy'] >= outcome['eval/label_top_1_accuracy']
  assert outcome['eval/regularization_loss'] > 0 and outcome['eval/num_examples'] == 128
  assert os.path.exists(os.path.join(model_dir, 'result_4.json'))
  assert json.load(open(os.path.join(model_dir, 'flags.json')))['train_steps'] == 4
  assert os.listdir(os.path.join(model_dir, 'saved_model')) == ['4']
  assert 'step 4/4 | loss' in result.stdout and 'img/s' in result.stdout  # one line per loop (no TTY)
  assert 'Online linear head (test): top-1' in result.stdout
  assert 'Linear evaluation on frozen features (test): top-1' in result.stdout
  assert 0 <= outcome['linear_eval/top_1_accuracy'] <= 1 and 'linear_eval/random_init_top_1_accuracy' in outcome
  assert sorted(scalars(model_dir, 'train/contrast_loss')) == [2, 4]
  knn = scalars(model_dir, 'knn/top_1_accuracy')  # the kNN monitor, every 2 steps
  assert sorted(knn) == [2, 4] and all(0 <= v <= 1 for v in knn.values())
  assert f'knn_top1 {knn[4]:.3f}' in result.stdout


@pytest.mark.slow
def test_linear_eval_mode_trains_a_head_on_the_frozen_encoder(pretrained, shapes_data_dir, tmp_path):
  """--train_mode=linear_eval from an exported SavedModel: every encoder and projection-head variable,
  BatchNorm statistics included, stays what pretraining left; the head learns; results are written."""
  model_dir, _ = pretrained
  eval_dir = str(tmp_path / 'linear_eval')
  result = run_py(f'--data_dir={shapes_data_dir}', f'--model_dir={eval_dir}', '--train_mode=linear_eval',
                  f'--checkpoint={os.path.join(model_dir, "saved_model", "4")}', '--train_steps=4',
                  '--optimizer=momentum', '--learning_rate=0.1', '--weight_decay=1e-3', *TINY)  # decay: frozen is frozen
  assert 'Linear evaluation (test): top-1' in result.stdout
  pretrained_net, evaluated_net = tiny_model(), tiny_model('linear_eval')
  tf.train.Checkpoint(model=pretrained_net).read(os.path.join(model_dir, 'ckpt-4')).expect_partial()
  tf.train.Checkpoint(model=evaluated_net).read(os.path.join(eval_dir, 'ckpt-4')).expect_partial()
  frozen = lambda net: net.resnet_model.variables + net._projection_head.variables  # pylint: disable=protected-access
  assert len(frozen(evaluated_net)) > 100
  for a, b in zip(frozen(pretrained_net), frozen(evaluated_net)):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
  assert np.any(evaluated_net.supervised_head.variables[0].numpy())
  outcome = json.load(open(os.path.join(eval_dir, 'result.json')))
  assert outcome['global_step'] == 4 and 0 <= outcome['eval/label_top_1_accuracy'] <= 1


@pytest.mark.slow
@pytest.mark.parametrize('teacher', ['saved_model', 'model_dir'])
def test_distill_from_a_finetuned_teacher(finetuned, shapes_data_dir, tmp_path, teacher):
  path = os.path.join(finetuned, 'saved_model', '2') if teacher == 'saved_model' else finetuned
  student_dir = str(tmp_path / 'student')
  result = run_py(f'--data_dir={shapes_data_dir}', f'--model_dir={student_dir}', '--train_mode=distill',
                  f'--teacher={path}', '--train_steps=2', *TINY, '--width_multiplier=0.125')  # big -> small
  assert 'Distilled student (test): top-1' in result.stdout and 'teacher_agreement' in result.stdout
  assert sorted(scalars(student_dir, 'train/distill_loss')) == [2]
  assert not scalars(student_dir, 'train/supervised_loss')  # --distill_alpha=0: no label is used
  assert json.load(open(os.path.join(student_dir, 'result.json')))['global_step'] == 2


@pytest.mark.slow
def test_embed_plot_mode(pretrained, shapes_data_dir):
  model_dir, _ = pretrained
  result = run_py(f'--data_dir={shapes_data_dir}', f'--model_dir={model_dir}', '--mode=embed_plot', *TINY)
  path = os.path.join(model_dir, 'embedding.png')
  assert path in result.stdout
  image = tf.io.decode_png(tf.io.read_file(path)).numpy()
  assert image.shape == (400, 804, 3) and len(np.unique(image.reshape(-1, 3), axis=0)) > 5  # dots of colours


@pytest.mark.slow
def test_saved_model_matches_the_checkpoint_and_loads_in_keras(pretrained):
  model_dir, _ = pretrained
  net = tiny_model()
  tf.train.Checkpoint(model=net).read(os.path.join(model_dir, 'ckpt-4')).expect_partial()
  images = tf.random.uniform([3, 40, 36, 3])  # any image size
  expected = net(images, training=False)
  exported = tf.saved_model.load(os.path.join(model_dir, 'saved_model', '4'))
  outputs = exported(images, trainable=False)
  assert set(outputs) == set(model_lib.OUTPUT_KEYS)
  for key in model_lib.OUTPUT_KEYS:
    np.testing.assert_allclose(outputs[key].numpy(), expected[key].numpy(), rtol=1e-4, atol=1e-5)
  layer = keras.layers.TFSMLayer(os.path.join(model_dir, 'saved_model', '4'), call_endpoint='serving_default')
  served = layer(images)
  np.testing.assert_allclose(served['logits_sup'].numpy(), expected['logits_sup'].numpy(), rtol=1e-4,
                             atol=1e-5)
  # trainable=True uses batch statistics: a different function, still the same shapes.
  assert exported(images, trainable=True)['final_avg_pool'].shape == (3, 128)


@pytest.mark.slow
@pytest.mark.parametrize('source', ['model_dir', 'saved_model'])
def test_finetune_starts_from_pretrained_encoder(pretrained, shapes_data_dir, tmp_path, source):
  model_dir, _ = pretrained
  checkpoint = model_dir if source == 'model_dir' else os.path.join(model_dir, 'saved_model', '4')
  finetune_dir = str(tmp_path / 'finetune')
  run_py(f'--data_dir={shapes_data_dir}', f'--model_dir={finetune_dir}', '--train_mode=finetune',
         f'--checkpoint={checkpoint}', '--fine_tune_after_block=4', '--zero_init_logits_layer',
         '--train_steps=2', '--mode=train', *TINY)
  pretrained_net, finetuned_net = tiny_model(), tiny_model('finetune')
  tf.train.Checkpoint(model=pretrained_net).read(os.path.join(model_dir, 'ckpt-4')).expect_partial()
  tf.train.Checkpoint(model=finetuned_net).read(os.path.join(finetune_dir, 'ckpt-2')).expect_partial()
  # The encoder is frozen (linear evaluation), so it is exactly the pretrained one; the head was trained.
  for a, b in zip(pretrained_net.resnet_model.variables, finetuned_net.resnet_model.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert np.any(finetuned_net.supervised_head.variables[0].numpy())
  assert not os.path.exists(os.path.join(finetune_dir, 'result.json'))  # --mode=train does not evaluate

  result = run_py(f'--data_dir={shapes_data_dir}', f'--model_dir={finetune_dir}', '--train_mode=finetune',
                  '--mode=eval', '--train_steps=2', *TINY)
  outcome = json.load(open(os.path.join(finetune_dir, 'result.json')))
  assert outcome['global_step'] == 2 and 'eval/label_top_1_accuracy' in outcome
  assert result.returncode == 0


@pytest.mark.slow
def test_resume_continues_at_the_saved_step_with_the_same_learning_rate(pretrained, shapes_data_dir):
  model_dir, _ = pretrained
  first_lr = scalars(model_dir, 'train/learning_rate')
  # Pretend the run died after its first checkpoint: drop ckpt-4 and point the state file at ckpt-2.
  for path in glob.glob(os.path.join(model_dir, 'ckpt-4.*')):
    os.remove(path)
  with open(os.path.join(model_dir, 'checkpoint'), 'w') as f:
    f.write('model_checkpoint_path: "ckpt-2"\nall_model_checkpoint_paths: "ckpt-2"\n')
  os.makedirs(os.path.join(model_dir, 'first_run'))
  for path in glob.glob(os.path.join(model_dir, 'events.out.tfevents.*')):
    os.rename(path, os.path.join(model_dir, 'first_run', os.path.basename(path)))
  result = run_py(f'--data_dir={shapes_data_dir}', f'--model_dir={model_dir}', '--train_steps=4',
                  '--mode=train', *TINY)
  assert 'Restored checkpoint' in result.stderr and '(step 2)' in result.stderr
  resumed_lr = scalars(model_dir, 'train/learning_rate')
  assert list(resumed_lr) == [4]  # only the remaining loop ran
  assert resumed_lr[4] == pytest.approx(first_lr[4])
  assert os.path.exists(os.path.join(model_dir, 'ckpt-4.index'))


def test_distillation_step_teaches_the_student_the_teachers_rule():
  """A student trained only on a teacher's soft predictions (no labels) learns its rule: here, whether an
  image is brighter than average. Chance agreement is 0.5."""
  cfg = run.Config.defaults(train_mode='distill', width_multiplier=0.125, image_size=16, train_batch_size=32,
                            train_steps=60, warmup_epochs=0, optimizer='momentum', learning_rate=0.5,
                            weight_decay=0.0)
  teacher = lambda images: tf.stack([tf.zeros([tf.shape(images)[0]]),
                                     40.0 * (tf.reduce_mean(images, [1, 2, 3]) - 0.25)], axis=1)

  def batch(seed):
    rng = np.random.default_rng(seed)
    brightness = rng.uniform(0, 1, size=(32, 1, 1, 1))
    return tf.constant(rng.uniform(size=(32, 16, 16, 3)) * brightness, tf.float32)

  strategy = tf.distribute.get_strategy()
  keras.utils.set_random_seed(0)
  student, optimizer, _ = run.build_training(cfg, strategy, num_classes=2, num_examples=1000)
  step = tf.function(run.make_train_step(cfg, student, optimizer, strategy, teacher))
  no_labels = tf.zeros([32, 2])
  losses = [float(step(batch(i), no_labels)['train/distill_loss']) for i in range(cfg.train_steps)]
  test = batch(10_000)
  agreement = np.mean(np.argmax(student(test, training=False)['logits_sup'], 1) == np.argmax(teacher(test), 1))
  assert agreement > 0.85, (agreement, losses[::10])
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(ROOT, 'configs', '*.cfg'))),
                         ids=os.path.basename)
def test_recipes_name_real_flags_with_valid_values(path):
  values = {}
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line and not line.startswith('#'):
        name, _, value = line[2:].partition('=')
        flag = copy.deepcopy(run.FLAGS[name])  # KeyError: a flag that does not exist
        flag.parse(value)
        values[name] = flag.value
  cfg = run.Config.defaults(**values)
  if cfg.train_mode in run.LABELED_MODES:  # their --checkpoint is a run of the user's
    cfg = dataclasses.replace(cfg, checkpoint=None, random_init=True)
  run.validate(cfg, num_replicas=8)


@pytest.mark.parametrize('precision', ['float32', 'mixed_float16'])
def test_restore_for_eval_reads_the_global_step(tmp_path, precision):
  """The step of a checkpoint as train() writes it, also under mixed_float16 where the optimizer's counter
  sits inside the loss-scale optimizer (reading it by variable path gave 0 there)."""
  cfg = config(train_mode='finetune', precision=precision, train_steps=10, warmup_epochs=0, image_size=16)
  model, optimizer, _ = run.build_training(cfg, tf.distribute.get_strategy(), num_classes=3, num_examples=100)
  optimizer.iterations.assign(7)
  model.supervised_head.trainable_variables[0].assign(tf.ones_like(model.supervised_head.trainable_variables[0]))
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=optimizer), str(tmp_path),
                                       max_to_keep=1, checkpoint_name='ckpt', step_counter=optimizer.iterations)
  path = manager.save(checkpoint_number=int(optimizer.iterations.numpy()))  # as train() saves
  restored = run.build_model(cfg, 3)
  assert run.restore_for_eval(restored, path) == 7
  np.testing.assert_array_equal(restored.supervised_head.trainable_variables[0].numpy(), 1.0)


def config(**overrides):
  defaults = {field.name: run.FLAGS[field.name].default for field in dataclasses.fields(run.Config)}
  return run.Config(**{**defaults, **overrides})


@pytest.mark.parametrize('overrides, replicas, message', [
    (dict(train_mode='finetune', model_dir='/nonexistent'), 1, '--train_mode=finetune needs --checkpoint'),
    (dict(lineareval_while_pretraining=False), 1, 'nothing to evaluate'),
    (dict(train_batch_size=16), 3, 'not divisible by the 3 replicas'),
    (dict(fine_tune_after_block=2), 1, '--fine_tune_after_block'),
    (dict(label_fraction=0.1), 1, '--label_fraction applies to --train_mode=finetune'),
    (dict(label_fraction=1.5, train_mode='finetune', random_init=True), 1, 'label_fraction must be in'),
    (dict(mode='eval', model_dir='/nonexistent'), 1, 'found no checkpoint'),
    (dict(train_mode='finetune', checkpoint='/nonexistent/ckpt-1'), 1, 'does not exist'),
    (dict(train_mode='finetune', checkpoint='x', random_init=True), 1, 'exclusive'),
    (dict(temperature=0.0), 1, '--temperature'),
    (dict(jit_compile=True), 2, '--jit_compile needs one replica'),
    (dict(train_mode='linear_eval', model_dir='/nonexistent'), 1, '--train_mode=linear_eval needs --checkpoint'),
    (dict(train_mode='linear_eval', random_init=True, fine_tune_after_block=2), 1, 'freezes the whole encoder'),
    (dict(train_mode='distill'), 1, '--train_mode=distill needs --teacher'),
    (dict(teacher='/tmp'), 1, '--teacher applies to --train_mode=distill only'),
    (dict(train_mode='distill', teacher='/nonexistent'), 1, '--teacher=/nonexistent does not exist'),
    (dict(train_mode='distill', teacher='/tmp', distill_temperature=0), 1, '--distill_temperature'),
    (dict(train_mode='finetune', random_init=True, knn_eval_steps=5), 1, '--knn_eval_steps monitors'),
    (dict(mode='embed_plot', model_dir='/nonexistent'), 1, '--mode=embed_plot needs a checkpoint'),
])
def test_bad_flag_combinations_fail_with_one_line(overrides, replicas, message):
  with pytest.raises(run.UsageError, match=message) as error:
    run.validate(config(**overrides), replicas)
  assert '\n' not in str(error.value)


def test_bad_flags_on_the_command_line(tmp_path):
  result = run_py('--optimizer=rmsprop', check=False)
  assert result.returncode != 0 and 'rmsprop' in result.stderr and 'optimizer' in result.stderr
  result = run_py('--dataset=/no/such/folder', f'--model_dir={tmp_path}', check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      'Error: Image folder /no/such/folder does not exist (--dataset is a path).')
