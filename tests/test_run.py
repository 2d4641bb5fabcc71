"""run.py end to end, as a user runs it (subprocesses, tiny settings), and its flag validation."""

import copy
import glob
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import architecture
import config as config_lib
import data
import evaluation
import image_files
import model as model_lib
import model_io
import run
import rundir
import runtime
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTHORS = os.path.join(ROOT, '..', 'shared', 'fixtures', 'authors_tf2')  # written by the authors' own tf2 code
TINY = ['--resnet_depth=18', '--width_multiplier=0.25', '--image_size=32', '--train_batch_size=16',
        '--eval_batch_size=64', '--eval_steps=2', '--warmup_epochs=0', '--checkpoint_steps=2',
        '--linear_eval_max_examples=256']


# What the test session sets that a user's shell does not.
USER_UNSET = ('TF_CPP_MIN_LOG_LEVEL', 'CUDA_VISIBLE_DEVICES', 'TF_ENABLE_ONEDNN_OPTS')


def run_py(*args, check=True, cwd=ROOT):
  """run.py as a user runs it: a subprocess in a plain environment (TensorFlow's own defaults, run.py's choice
  of CPU kernels)."""
  env = {k: v for k, v in os.environ.items() if k not in USER_UNSET}
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'run.py'), *args], cwd=cwd, env=env,
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
  net = model_lib.SimCLRModel(10, config_lib.ModelConfig(
      resnet_depth=18, width_multiplier=0.25, cifar_stem=True, global_bn=False), train_mode=train_mode)
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
  assert outcome['global_step'] == 4 and outcome['eval/num_examples'] == 128
  hits = lambda accuracy, n: accuracy * n == round(accuracy * n)  # a fraction of n images, not any number
  assert hits(outcome['eval/label_top_1_accuracy'], 128) and hits(outcome['eval/label_top_5_accuracy'], 128)
  assert outcome['eval/label_top_5_accuracy'] >= outcome['eval/label_top_1_accuracy']
  assert outcome['eval/regularization_loss'] > 0
  assert os.path.exists(os.path.join(model_dir, 'result_4.json'))
  assert json.load(open(os.path.join(model_dir, 'flags.json')))['train_steps'] == 4
  assert os.listdir(os.path.join(model_dir, 'saved_model')) == ['4']
  assert 'step 4/4 | contrast_loss' in result.stdout and 'img/s' in result.stdout  # one line per loop (no TTY)
  assert '| head_acc ' in result.stdout  # the online linear head's accuracy, a column of its own
  assert 'Online linear head (test): top-1' in result.stdout
  assert 'Linear evaluation on frozen features (test): top-1' in result.stdout
  for key in ('linear_eval/top_1_accuracy', 'linear_eval/random_init_top_1_accuracy'):  # of --eval_steps' 128
    assert hits(outcome[key], 128), (key, outcome[key])
  assert (f'Linear evaluation on frozen features (test): top-1 {outcome["linear_eval/top_1_accuracy"]:.4f} '
          f'pretrained vs {outcome["linear_eval/random_init_top_1_accuracy"]:.4f} random init') in result.stdout
  assert sorted(scalars(model_dir, 'train/contrast_loss')) == [2, 4]
  knn = scalars(model_dir, 'knn/top_1_accuracy')  # the kNN monitor, every 2 steps
  assert sorted(knn) == [2, 4] and all(hits(v, 128) for v in knn.values())
  assert f'knn_top1 {knn[4]:.3f}' in result.stdout


@pytest.mark.slow
def test_linear_eval_mode_trains_a_head_on_the_frozen_encoder(pretrained, shapes_data_dir, tmp_path):
  """--train_mode=linear_eval from an exported SavedModel: every encoder and projection-head variable,
  BatchNorm statistics included, stays what pretraining left; the head learns; results are written."""
  model_dir, _ = pretrained
  eval_dir = str(tmp_path / 'linear_eval')
  result = run_py(f'--data_dir={shapes_data_dir}', f'--model_dir={eval_dir}', '--train_mode=linear_eval',
                  f'--checkpoint={os.path.join(model_dir, "saved_model", "4")}', '--train_steps=4',
                  '--optimizer=momentum', '--learning_rate=0.1', '--weight_decay=1e-3',  # decay: frozen is frozen
                  *TINY)
  assert 'Linear evaluation (test): top-1' in result.stdout
  assert 'Model: ResNet-18 x0.25 (0.7M encoder parameters, 0.0M trained)' in result.stdout  # 700,464, frozen
  pretrained_net, evaluated_net = tiny_model(), tiny_model('linear_eval')
  tf.train.Checkpoint(model=pretrained_net).read(os.path.join(model_dir, 'ckpt-4')).expect_partial()
  tf.train.Checkpoint(model=evaluated_net).read(os.path.join(eval_dir, 'ckpt-4')).expect_partial()
  frozen = lambda net: net.resnet_model.variables + net._projection_head.variables  # pylint: disable=protected-access
  assert len(frozen(evaluated_net)) > 100
  for a, b in zip(frozen(pretrained_net), frozen(evaluated_net)):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
  # The head started from the pretrained run's online head (same classes, same input) and trained from there.
  assert 'Initialised from' in result.stdout and 'Supervised head: new' not in result.stdout
  start, end = pretrained_net.supervised_head.variables[0].numpy(), evaluated_net.supervised_head.variables[0].numpy()
  assert np.abs(end - start).max() > 1e-4 * np.abs(start).max()
  outcome = json.load(open(os.path.join(eval_dir, 'result.json')))
  assert outcome['global_step'] == 4
  assert f'Linear evaluation (test): top-1 {outcome["eval/label_top_1_accuracy"]:.4f}' in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize('teacher', ['saved_model', 'model_dir', 'authors'])
def test_distill_from_a_finetuned_teacher(finetuned, shapes_data_dir, tmp_path, teacher):
  """From this project's export or run, and from the authors' fine-tuned SavedModel (ResNet-50, 10 classes):
  the teacher's network comes from its file, the model flags describe the student."""
  path = {'saved_model': os.path.join(finetuned, 'saved_model', '2'), 'model_dir': finetuned,
          'authors': os.path.join(AUTHORS, 'r50_sk0_finetune', 'saved_model')}[teacher]
  student_dir = str(tmp_path / 'student')
  result = run_py(f'--data_dir={shapes_data_dir}', f'--model_dir={student_dir}', '--train_mode=distill',
                  f'--teacher={path}', '--train_steps=2', *TINY, '--width_multiplier=0.125')  # big -> small
  assert 'Distilled student (test): top-1' in result.stdout and 'teacher_agreement' in result.stdout
  assert ('Teacher: the authors\' SavedModel' in result.stdout) == (teacher == 'authors')
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
         '--train_steps=2', '--mode=train', '--weight_decay=0', *TINY)
  pretrained_net, finetuned_net = tiny_model(), tiny_model('finetune')
  tf.train.Checkpoint(model=pretrained_net).read(os.path.join(model_dir, 'ckpt-4')).expect_partial()
  tf.train.Checkpoint(model=finetuned_net).read(os.path.join(finetune_dir, 'ckpt-2')).expect_partial()
  # The encoder is frozen (linear evaluation), so it is exactly the pretrained one; the head was trained.
  for a, b in zip(pretrained_net.resnet_model.variables, finetuned_net.resnet_model.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert np.any(finetuned_net.supervised_head.variables[0].numpy())
  assert not os.path.exists(os.path.join(finetune_dir, 'result.json'))  # --mode=train does not evaluate

  # --mode=eval with only the run's model_dir: the run's flags (train_mode, weight decay 0, ...) from its flags.json.
  result = run_py(f'--data_dir={shapes_data_dir}', f'--model_dir={finetune_dir}', '--mode=eval', '--eval_steps=2',
                  '--eval_batch_size=64')
  outcome = json.load(open(os.path.join(finetune_dir, 'result.json')))
  assert outcome['global_step'] == 2 and outcome['eval/regularization_loss'] == 0.0
  lines = result.stdout.strip().splitlines()
  assert lines[-2] == (f'Fine-tuned model (test): top-1 {outcome["eval/label_top_1_accuracy"]:.4f}, top-5 '
                       f'{outcome["eval/label_top_5_accuracy"]:.4f} (step 2)')
  assert lines[-1].startswith(f'Evaluated 1 checkpoint(s); latest step 2: top-1 '
                              f'{outcome["eval/label_top_1_accuracy"]:.4f}.')
  assert 'Timed-out' not in result.stderr and not result.stderr.strip()
  assert os.listdir(os.path.join(finetune_dir, 'saved_model')) == ['2']


@pytest.mark.slow
def test_resume_skips_a_truncated_latest_checkpoint_and_keeps_the_schedule(pretrained, shapes_data_dir, tmp_path):
  """A damaged latest checkpoint (its data file cut short, as after a full disk) is skipped with a warning naming
  it; training resumes from the newest readable one with the same learning rate."""
  model_dir = str(tmp_path / 'run')
  shutil.copytree(pretrained[0], model_dir)  # the module's run stays whole for the other tests
  first_lr = scalars(model_dir, 'train/learning_rate')
  data_file = glob.glob(os.path.join(model_dir, 'ckpt-4.data-*'))[0]
  with open(data_file, 'r+b') as f:
    f.truncate(os.path.getsize(data_file) // 3)
  os.makedirs(os.path.join(model_dir, 'first_run'))
  for path in glob.glob(os.path.join(model_dir, 'events.out.tfevents.*')):
    os.rename(path, os.path.join(model_dir, 'first_run', os.path.basename(path)))
  result = run_py(f'--data_dir={shapes_data_dir}', f'--model_dir={model_dir}', '--train_steps=4',
                  '--knn_eval_steps=2', '--mode=train', *TINY)  # the run's own flags
  assert 'WARNING: Skipping checkpoint' in result.stderr and 'ckpt-4' in result.stderr
  assert 'Resuming from' in result.stdout and '(step 2)' in result.stdout
  resumed_lr = scalars(model_dir, 'train/learning_rate')
  assert list(resumed_lr) == [4]  # only the remaining loop ran
  assert resumed_lr[4] == pytest.approx(first_lr[4])
  assert model_io.readable(os.path.join(model_dir, 'ckpt-4'))  # written again, whole


@pytest.mark.parametrize('precision', ['float32', 'mixed_bfloat16'])
def test_distillation_step_teaches_the_student_the_teachers_rule(precision):
  """A student trained only on a teacher's soft predictions (no labels) learns its rule: here, whether an
  image is brighter than average. Chance agreement is 0.5. In both number formats --precision=auto picks."""
  cfg = config_lib.Config.defaults(train_mode='distill', width_multiplier=0.125, image_size=16, train_batch_size=32,
                                   train_steps=60, warmup_epochs=0, optimizer='momentum', learning_rate=0.5,
                                   weight_decay=0.0, precision=precision)
  teacher = lambda images: tf.stack([tf.zeros([tf.shape(images)[0]]),
                                     40.0 * (tf.reduce_mean(images, [1, 2, 3]) - 0.25)], axis=1)

  def batch(seed):
    rng = np.random.default_rng(seed)
    brightness = rng.uniform(0, 1, size=(32, 1, 1, 1))
    return tf.constant(rng.uniform(size=(32, 16, 16, 3)) * brightness, tf.float32)

  strategy = tf.distribute.get_strategy()
  keras.utils.set_random_seed(0)
  student, optimizer, _ = train.build_training(cfg, strategy, num_classes=2, num_examples=1000)
  step = tf.function(train.make_train_step(cfg.optim, 'distill', student, optimizer, strategy, teacher))
  no_labels = tf.zeros([32, 2])
  losses = [float(step(batch(i), no_labels)['train/distill_loss']) for i in range(cfg.optim.train_steps)]
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
  cfg = config_lib.Config.defaults(**values)
  if cfg.run.train_mode in config_lib.LABELED_MODES:  # their --checkpoint is a run of the user's
    cfg = cfg.replace(checkpoint=None, random_init=True)
  config_lib.validate(cfg, num_replicas=8)


def config(**overrides):
  return config_lib.Config.defaults(**overrides)


@pytest.mark.parametrize('overrides, message', [
    (dict(train_mode='finetune', model_dir='/nonexistent'), '--train_mode=finetune needs --checkpoint'),
    (dict(mode='eval', model_dir='/nonexistent'), 'found no checkpoint'),
    (dict(train_mode='linear_eval', model_dir='/nonexistent'), '--train_mode=linear_eval needs --checkpoint'),
    (dict(mode='embed_plot', model_dir='/nonexistent'), '--mode=embed_plot needs a checkpoint'),
    (dict(mode='export', model_dir='/nonexistent'), '--mode=export needs a checkpoint'),
])
def test_a_mode_without_the_checkpoint_it_needs_fails_with_one_line(overrides, message):
  with pytest.raises(config_lib.UsageError, match=message) as error:
    run.check_model_dir(config(**overrides))
  assert '\n' not in str(error.value)


@pytest.mark.parametrize('flag', ['checkpoint', 'teacher'])
def test_model_paths_that_do_not_exist_name_the_flag(flag):
  with pytest.raises(config_lib.UsageError) as error:
    run.model_file(config(**{flag: '/nonexistent/ckpt-1'}), flag, architecture.resolve)
  assert str(error.value) == f'--{flag}=/nonexistent/ckpt-1 does not exist.'


def test_bad_flags_on_the_command_line(tmp_path):
  """What the process boundary adds to config.validate (whose unit tests cover each check): absl's own refusal
  of an unknown value, and one `Error:` line with exit code 1, no traceback, nothing created."""
  result = run_py('--optimizer=rmsprop', check=False)
  assert result.returncode != 0 and 'rmsprop' in result.stderr and 'optimizer' in result.stderr
  result = run_py('--resnet_depth=19', f'--model_dir={tmp_path / "x"}', check=False)
  assert result.returncode == 1 and result.stderr == 'Error: --resnet_depth must be one of 18, 34, 50, 101, 152, 200, got 19.\n'
  assert not (tmp_path / 'x').exists()


# ------------------------------------------------------------------------------------------- the authors' models


def write_image_folder(root, classes=3, per_class=(6, 3), size=32):
  """<root>/{train,test}/<class>/<i>.png: a colour per class, noise on top."""
  rng = np.random.default_rng(0)
  for split, count in zip(('train', 'test'), per_class):
    for c in range(classes):
      os.makedirs(os.path.join(root, split, f'class{c}'))
      for i in range(count):
        pixels = np.clip(rng.normal(60 + 70 * c, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
        tf.io.write_file(os.path.join(root, split, f'class{c}', f'{i}.png'), tf.io.encode_png(pixels))
  return str(root)


@pytest.mark.slow
def test_finetune_the_authors_checkpoint_on_an_image_folder_with_no_model_flags(tmp_path):
  """The authors' fine-tuned ResNet-50 (SK 0, width 1/8, 10 classes on projection layer 1) from their training
  checkpoint, on a 3-class folder: the network comes from the file, the head is new, the frozen encoder keeps
  exactly their weights, top-5 is not reported for 3 classes; a contradicting model flag stops at once."""
  folder = write_image_folder(tmp_path / 'images')
  checkpoint = os.path.join(AUTHORS, 'r50_sk0_finetune', 'ckpt')
  model_dir = str(tmp_path / 'ft')
  args = [f'--dataset={folder}', f'--model_dir={model_dir}', '--train_mode=finetune', f'--checkpoint={checkpoint}',
          '--train_steps=2', '--train_batch_size=6', '--eval_batch_size=9', '--warmup_epochs=0',
          '--fine_tune_after_block=4', '--zero_init_logits_layer']
  result = run_py(*args)
  assert "Initialised from the authors' training checkpoint" in result.stdout
  assert 'ResNet-50 x0.125' in result.stdout and 'supervised head 10 classes on projection layer 1' in result.stdout
  assert 'Supervised head: new, 3 classes' in result.stdout
  outcome = json.load(open(os.path.join(model_dir, 'result.json')))
  assert 'eval/label_top_1_accuracy' in outcome and 'eval/label_top_5_accuracy' not in outcome
  assert 'top-5' not in result.stdout
  ours, theirs = architecture.inspect(model_dir), architecture.inspect(checkpoint)
  assert ours.architecture.num_classes == 3 and ours.architecture.ft_proj_selector == 1
  ours_reader, theirs_reader = tf.train.load_checkpoint(ours.prefix), tf.train.load_checkpoint(theirs.prefix)
  encoder = [key for key in theirs.tensors if key.startswith('resnet_model/')]
  assert len(encoder) > 200
  for key in encoder:  # frozen (fine_tune_after_block=4): BatchNorm statistics included
    np.testing.assert_array_equal(ours_reader.get_tensor(ours.tensors[key][0]),
                                  theirs_reader.get_tensor(theirs.tensors[key][0]), err_msg=key)

  start = time.monotonic()
  result = run_py(*args, f'--model_dir={tmp_path / "other"}', '--resnet_depth=18', check=False)
  assert result.returncode == 1 and time.monotonic() - start < 60
  assert result.stderr.strip().splitlines()[-1].startswith(
      f'Error: --resnet_depth=18 contradicts --checkpoint={checkpoint}, whose network has resnet_depth=50')
  assert not (tmp_path / 'other').exists()


@pytest.mark.slow
def test_export_and_evaluate_the_authors_savedmodel_without_training(shapes_data_dir, tmp_path):
  """--mode=export converts the authors' SavedModel into this project's (Keras 3 loads it, same endpoints);
  --mode=eval --checkpoint evaluates their classifier as it is (a class-count mismatch: check_classifiers)."""
  folder = os.path.join(AUTHORS, 'r50_sk0_finetune')
  converted = tmp_path / 'converted'
  result = run_py('--mode=export', f'--checkpoint={folder}/saved_model', f'--model_dir={converted}',
                  f'--data_dir={tmp_path / "data"}')
  assert f'to {converted}/saved_model/0' in result.stdout
  assert 'Preparing data' not in result.stdout and not (tmp_path / 'data').exists()  # an export reads no data
  inputs, expected = np.load(os.path.join(folder, 'inputs.npy')), np.load(os.path.join(folder, 'expected.npz'))
  loaded = tf.saved_model.load(str(converted / 'saved_model' / '0'))
  served = keras.layers.TFSMLayer(str(converted / 'saved_model' / '0'), call_endpoint='serving_default')(inputs)
  for outputs in (loaded(inputs, trainable=False), served):
    for key in expected:
      assert np.abs(outputs[key].numpy() - expected[key]).max() < 1e-4 * np.abs(expected[key]).max(), key

  eval_dir = tmp_path / 'eval'
  result = run_py('--mode=eval', f'--checkpoint={folder}/ckpt', f'--data_dir={shapes_data_dir}',
                  f'--model_dir={eval_dir}', '--eval_steps=1', '--eval_batch_size=32', '--image_size=64')
  outcome = json.load(open(eval_dir / 'result.json'))
  assert outcome['global_step'] == 0 and outcome['eval/num_examples'] == 32
  assert f'Fine-tuned model (test): top-1 {outcome["eval/label_top_1_accuracy"]:.4f}, top-5' in result.stdout
  assert not glob.glob(str(eval_dir / 'ckpt-*'))  # nothing was trained


def test_export_for_pytorch_from_the_command_line_and_a_format_that_does_not_exist(tmp_path):
  """--export_format=torch of the authors' SavedModel: a loadable folder under model_dir/torch/<step>/, nothing
  else written; an unknown format is refused by the flag itself."""
  checkpoint = os.path.join(AUTHORS, 'r18_cifar_pretrain', 'saved_model')
  model_dir = tmp_path / 'run'
  result = run_py('--mode=export', '--export_format=torch', f'--checkpoint={checkpoint}', f'--model_dir={model_dir}')
  assert result.stdout.strip().splitlines()[-1] == (
      f"Exported the authors' SavedModel {checkpoint} (step 0): ResNet-18 x0.25, CIFAR stem, projection head "
      f"3 layer(s) -> 128, supervised head 10 classes on projection layer 0 to {model_dir}/torch/0")
  assert sorted(os.listdir(model_dir)) == ['torch'] and sorted(os.listdir(model_dir / 'torch' / '0')) == [
      'config.json', 'model.safetensors', 'simclr_torch.py']
  result = run_py('--mode=export', '--export_format=pickle', f'--checkpoint={checkpoint}',
                  f'--model_dir={tmp_path / "x"}', check=False)
  assert result.returncode != 0 and '--export_format' in result.stderr and 'pickle' in result.stderr
  assert not (tmp_path / 'x').exists()


# ------------------------------------------------------------------------------------------- long runs, output


@pytest.mark.slow
def test_sigterm_checkpoints_the_step_in_flight_and_the_same_command_resumes(shapes_data_dir, tmp_path):
  model_dir = str(tmp_path / 'run')
  args = [f'--data_dir={shapes_data_dir}', f'--model_dir={model_dir}', '--mode=train', *TINY, '--train_steps=60',
          '--checkpoint_steps=50']
  env = {k: v for k, v in os.environ.items() if k not in USER_UNSET}
  process = subprocess.Popen([sys.executable, os.path.join(ROOT, 'run.py'), *args], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    for line in process.stdout:
      if line.startswith('step 10/60'):  # two short loops have run; the third runs to step 50
        break
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
  finally:
    process.kill()
  assert process.returncode == 143, err
  stopped = int(re.search(r'Stopped by SIGTERM at step (\d+); checkpoint written', out).group(1))
  assert 10 <= stopped < 50, stopped  # mid-interval: not a multiple of --checkpoint_steps
  assert os.path.exists(os.path.join(model_dir, f'ckpt-{stopped}.index'))
  result = run_py(*args)
  assert f'Resuming from {model_dir}/ckpt-{stopped} (step {stopped}).' in result.stdout
  assert result.stdout.strip().splitlines()[-1].startswith('step 60/60')
  assert [rundir.checkpoint_step(p) for p in rundir.checkpoint_paths(model_dir)] == [stopped, 50, 60]


@pytest.mark.slow
def test_quiet_output_progress_between_checkpoints_and_a_rerun_that_changes_nothing(shapes_data_dir, tmp_path):
  """No library noise on stderr, only this project's warning (a warmup longer than the run); progress and
  TensorBoard scalars every --train_summary_steps though the checkpoint interval is longer than the run; a
  second run says it is finished and writes nothing."""
  model_dir = tmp_path / 'run'
  args = [f'--data_dir={shapes_data_dir}', f'--model_dir={model_dir}', '--train_steps=6', *TINY,
          '--checkpoint_steps=0', '--train_summary_steps=2', '--warmup_epochs=1']
  first = run_py(*args)
  assert first.stderr.strip().splitlines() == [
      'WARNING: --warmup_epochs=1 is 312 steps, not shorter than the 6 training steps: the learning rate rises all '
      'run and never reaches its peak (as in the authors\' schedule).']
  out = first.stdout.strip().splitlines()
  assert out[0] == 'Preparing data: simclr_shapes...'
  assert [line.split(' |')[0] for line in out if line.startswith('step ')] == ['step 2/6', 'step 4/6', 'step 6/6']
  assert sorted(scalars(str(model_dir), 'train/contrast_loss')) == [2, 4, 6]
  assert [os.path.basename(p) for p in rundir.checkpoint_paths(str(model_dir))] == ['ckpt-6']
  files = {p: os.path.getmtime(p) for p in glob.glob(str(model_dir / '**'), recursive=True) if os.path.isfile(p)}

  second = run_py(*args)
  lines = second.stdout.strip().splitlines()
  assert lines[-3] == f'Training finished at step 6; results in {model_dir}/result.json'
  assert lines[-2:] == [line for line in out if line.startswith(('Online linear head', 'Linear evaluation on'))]
  assert not second.stderr.strip()
  if platform.machine().lower() in runtime.X86_MACHINES:  # -v says which CPU kernels run, and why
    verbose = run_py(*args, '--verbosity=1').stdout.splitlines()
    assert verbose[0].startswith('CPU kernels: oneDNN (TF_ENABLE_ONEDNN_OPTS=1 set by this project'), verbose[0]
  assert files == {p: os.path.getmtime(p) for p in glob.glob(str(model_dir / '**'), recursive=True)
                   if os.path.isfile(p)}


@pytest.mark.slow
def test_a_run_directory_answers_only_for_its_own_run(shapes_data_dir, tmp_path):
  """The main job, then a folder with nothing else given: the folder trains in its own default directory
  (not reported as the main job's result); pointed at the main job's directory, a 10-class folder (the
  classes the main job has: nothing else would stop it) or a longer schedule stops before any work, naming
  the differing flags with both values; the same command still reports the finished run, and an unlabeled
  folder's run (pretrained without the online head) resumes as itself."""
  main_job = [f'--data_dir={shapes_data_dir}', '--train_steps=2', *TINY]
  first = run_py(*main_job, cwd=tmp_path)
  assert (tmp_path / 'runs' / 'simclr_shapes' / 'ckpt-2.index').exists()
  three = write_image_folder(tmp_path / 'three_classes', classes=3)
  result = run_py(f'--dataset={three}', '--train_steps=2', *TINY, '--eval_batch_size=9', cwd=tmp_path)
  assert 'Training finished' not in result.stdout and 'Data: ' in result.stdout
  outcome = json.load(open(tmp_path / 'runs' / 'three_classes' / 'result.json'))
  assert outcome['eval/num_examples'] == 9  # 3 classes x 3 test images: the folder's, not the shapes' 128
  assert json.load(open(tmp_path / 'runs' / 'three_classes' / 'flags.json'))['dataset'] == three

  main_dir = tmp_path / 'runs' / 'simclr_shapes'
  files = {p: os.path.getmtime(p) for p in glob.glob(str(main_dir / '**'), recursive=True) if os.path.isfile(p)}
  ten = write_image_folder(tmp_path / 'ten_classes', classes=10)
  for extra, differs in (([f'--dataset={ten}'], f'--dataset=simclr_shapes there, {ten} here'),
                         (['--train_steps=500'], '--train_steps=2 there, 500 here')):
    start = time.monotonic()
    result = run_py(*main_job, '--model_dir=runs/simclr_shapes', *extra, check=False, cwd=tmp_path)
    assert result.returncode == 1 and time.monotonic() - start < 60
    assert result.stderr.strip().splitlines() == [
        f'Error: --model_dir=runs/simclr_shapes holds another run: {differs}. Give a new --model_dir for this one, '
        'or that run\'s own flags to resume it.']
    assert 'Model:' not in result.stdout  # stopped before a model was built
  assert files == {p: os.path.getmtime(p) for p in glob.glob(str(main_dir / '**'), recursive=True)
                   if os.path.isfile(p)}
  again = run_py(*main_job, cwd=tmp_path)
  assert 'Training finished at step 2; results in runs/simclr_shapes/result.json' in again.stdout
  assert again.stdout.strip().splitlines()[-2:] == first.stdout.strip().splitlines()[-3:-1]

  unlabeled = tmp_path / 'unlabeled'
  for i in range(8):
    image_files.write_image(str(unlabeled / 'train' / f'{i}.png'), np.full((24, 24, 3), 30 * i, np.uint8))
  for _ in range(2):
    result = run_py(f'--dataset={unlabeled}', '--mode=train', '--train_steps=2', *TINY, '--train_batch_size=4',
                    cwd=tmp_path)
  assert 'Training finished at step 2' in result.stdout


def test_the_default_model_dir_follows_the_dataset_the_train_mode_and_the_model_file(tmp_path):
  folder = tmp_path / 'my photos'
  folder.mkdir()
  assert config_lib.default_model_dir(config()) == 'runs/simclr_shapes'
  assert config_lib.default_model_dir(config(dataset=str(folder) + '/')) == 'runs/my_photos'
  assert config_lib.default_model_dir(config(dataset='imagenet2012_subset/10pct', train_mode='finetune',
                                             checkpoint='x')) == 'runs/imagenet2012_subset_10pct-finetune'
  assert config_lib.default_model_dir(config(dataset='gs://bucket/data/pets/', train_mode='finetune', checkpoint='x',
                                             label_fraction=0.01)) == 'runs/pets-finetune-1pct'
  assert config_lib.default_model_dir(config(mode='export', checkpoint='gs://b/r50_1x_sk0/saved_model/')) == \
      'runs/r50_1x_sk0-export'
  assert config_lib.default_model_dir(config(mode='eval', checkpoint='runs/x/ckpt-100')) == 'runs/x-eval'
  assert config_lib.default_model_dir(config(mode='eval', checkpoint='runs/y/ckpt-9.data-00000-of-00001')) == \
      'runs/y-eval'
  assert config_lib.default_model_dir(config(mode='eval')) == 'runs/simclr_shapes'  # a run's own directory


def test_run_differences_name_what_defines_a_run_and_nothing_else():
  saved = config(train_steps=4).flat()
  assert config_lib.run_differences(saved, config(train_steps=4, precision='mixed_bfloat16', mode='train',
                                                  keep_checkpoint_max=1, eval_batch_size=8)) == []
  assert config_lib.run_differences(saved, config(train_steps=8, temperature=0.2)) == [
      ('train_steps', 4, 8), ('temperature', 0.5, 0.2)]
  older = {k: v for k, v in saved.items() if k != 'crop_min_area'}  # a flags.json from before the flag
  assert config_lib.run_differences(older, config(train_steps=4)) == []
  assert config_lib.run_differences(older, config(train_steps=4, crop_min_area=0.2)) == [('crop_min_area', 0.08, 0.2)]


def test_bad_paths_fail_before_any_data_is_loaded_and_leave_no_folder(tmp_path):
  model_dir, data_dir = tmp_path / 'new', tmp_path / 'tfds'
  result = run_py('--train_mode=finetune', '--checkpoint=/nonexistent/run', f'--model_dir={model_dir}',
                  f'--data_dir={data_dir}', check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == ['Error: --checkpoint=/nonexistent/run does not exist.']
  assert not model_dir.exists() and not data_dir.exists()  # checked before the dataset was prepared


def test_the_random_encoder_baseline_is_the_same_in_every_run():
  cfg = config(width_multiplier=0.125, image_size=16)
  strategy = tf.distribute.get_strategy()
  first, second = (evaluation.random_encoder(cfg, strategy, 10) for _ in range(2))
  assert len(first.variables) > 50
  for a, b in zip(first.variables, second.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_frozen_features_of_a_class_sorted_folder_represent_every_class(tmp_path, monkeypatch):
  """A folder reads its splits sorted by class: the linear evaluation's (and kNN bank's) train features and an
  --eval_steps part of the eval split are stratified samples, not the first images read (which would be the
  first classes only)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
  rng = np.random.default_rng(0)
  for split, counts in (('train', (12, 8, 6, 4)), ('test', (4, 4, 4, 4))):
    for c, count in enumerate(counts):
      os.makedirs(tmp_path / 'sorted' / split / f'class_{c}')
      for i in range(count):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            tmp_path / 'sorted' / split / f'class_{c}' / f'{i:02d}.png')
  source = data.load_source(str(tmp_path / 'sorted'))
  cfg = config(dataset=str(tmp_path / 'sorted'), width_multiplier=0.125, image_size=8, eval_batch_size=8,
               linear_eval_max_examples=15, eval_steps=1)
  net = evaluation.random_encoder(cfg, tf.distribute.get_strategy(), 4)
  features, labels = evaluation.frozen_features(cfg, source, net, train=True)
  assert features.shape == (15, 64) and np.bincount(labels).tolist() == [6, 4, 3, 2]  # first 15: [12, 3, 0, 0]
  _, labels = evaluation.frozen_features(cfg, source, net, train=False)
  assert np.bincount(labels).tolist() == [2, 2, 2, 2]  # first batch of 8: [4, 4, 0, 0]


def test_the_knn_monitors_bank_is_a_stratified_sample_of_knn_max_examples(tmp_path, monkeypatch):
  rng = np.random.default_rng(1)
  for split, count in (('train', 9), ('test', 2)):
    for c in range(3):
      for i in range(count):
        image_files.write_image(str(tmp_path / 'f' / split / f'c{c}' / f'{i}.png'),
                                rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
  source = data.load_source(str(tmp_path / 'f'))
  cfg = config(dataset=str(tmp_path / 'f'), width_multiplier=0.125, image_size=8, eval_batch_size=4,
               knn_max_examples=6, linear_eval_max_examples=20)
  seen = {}
  monkeypatch.setattr(evaluation.linear_eval_lib, 'knn_eval', lambda bank, labels, queries, query_labels, **kw: (
      seen.update(bank=np.bincount(labels).tolist(), queries=len(queries), k=kw['k'])) or {'top_1_accuracy': 0.5})
  assert evaluation.knn_monitor(cfg, source, evaluation.random_encoder(cfg, tf.distribute.get_strategy(), 3)) == 0.5
  assert seen == {'bank': [2, 2, 2], 'queries': 6, 'k': 200}


def test_a_classifier_used_as_it_is_must_exist_and_fit_the_dataset():
  file = lambda classes: types.SimpleNamespace(path='T', architecture=types.SimpleNamespace(num_classes=classes))
  source = types.SimpleNamespace(num_classes=10)
  distill = config(train_mode='distill', teacher='T')
  run.check_classifiers(distill, {'teacher': file(10), 'checkpoint': None}, source)
  with pytest.raises(config_lib.UsageError, match=r'^--teacher=T has no classifier \(logits_sup\) to use'):
    run.check_classifiers(distill, {'teacher': file(None), 'checkpoint': None}, source)
  mismatch = r'^--checkpoint=T predicts 1000 classes; --dataset=simclr_shapes has 10\.$'
  with pytest.raises(config_lib.UsageError, match=mismatch):
    run.check_classifiers(config(mode='eval', checkpoint='T'), {'teacher': None, 'checkpoint': file(1000)}, source)
  run.check_classifiers(config(train_mode='finetune', checkpoint='T'), {'teacher': None, 'checkpoint': file(1000)},
                        source)  # fine-tuning: a new head


@pytest.mark.slow
def test_divergence_stops_with_one_line_and_no_checkpoint_of_it(shapes_data_dir, tmp_path):
  model_dir = tmp_path / 'run'
  result = run_py(f'--data_dir={shapes_data_dir}', f'--model_dir={model_dir}', '--mode=train', *TINY,
                  '--train_steps=4', '--optimizer=momentum', '--learning_rate=1e30', check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith('Error: Training diverged at step 2: ')
  assert not rundir.checkpoint_paths(str(model_dir))


def test_command_line_strings_become_typed_settings():
  """Each kind of flag parses its text into the field's type: an Optional[bool] that stays None unless given,
  enums, floats, durations kept as text for config.parse_duration."""
  flags = copy.deepcopy(run.FLAGS)
  flags(['run.py', '--width_multiplier=0.5', '--train_time=90m', '--precision=mixed_bfloat16', '--noglobal_bn',
         '--train_steps=0', '--model_dir=runs/x'])
  cfg = config_lib.Config.from_flat({field.name: flags[field.name].value for _, field in config_lib.fields()})
  assert (cfg.model.width_multiplier, cfg.optim.train_seconds, cfg.model.precision, cfg.model.global_bn,
          cfg.model.cifar_stem, cfg.run.model_dir) == (0.5, 5400.0, 'mixed_bfloat16', False, None, 'runs/x')
  flags(['run.py', '--cifar_stem=false'])
  assert flags['cifar_stem'].value is False
