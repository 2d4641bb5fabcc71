"""config.py: typed settings, flat flag names in and out, and the checks that need no files."""

import dataclasses
import os
import subprocess
import sys

import pytest

import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('overrides, replicas, message', [
    (dict(lineareval_while_pretraining=False), 1, 'nothing to evaluate'),
    (dict(train_batch_size=16), 3, 'not divisible by the 3 replicas'),
    (dict(fine_tune_after_block=2), 1, '--fine_tune_after_block'),
    (dict(label_fraction=0.1), 1, '--label_fraction applies to --train_mode=finetune'),
    (dict(train_time='60'), 1, "--train_time must be a positive duration such as 90s, 60m or 1.5h, got '60'"),
    (dict(train_time='0m'), 1, '--train_time must be a positive duration'),
    (dict(train_time='10m', train_steps=5), 1, '--train_time=10m and --train_steps=5 both say how long'),
    (dict(label_fraction=1.5, train_mode='finetune', random_init=True), 1, 'label_fraction must be in'),
    (dict(train_mode='finetune', checkpoint='x', random_init=True), 1, 'exclusive'),
    (dict(temperature=0.0), 1, '--temperature'),
    (dict(jit_compile=True), 2, '--jit_compile needs one replica'),
    (dict(train_mode='linear_eval', random_init=True, fine_tune_after_block=2), 1, 'freezes the whole encoder'),
    (dict(train_mode='distill'), 1, '--train_mode=distill needs --teacher'),
    (dict(teacher='/tmp'), 1, '--teacher applies to --train_mode=distill only'),
    (dict(train_mode='distill', teacher='/tmp', distill_temperature=0), 1, '--distill_temperature'),
    (dict(train_mode='finetune', random_init=True, knn_eval_steps=5), 1, '--knn_eval_steps monitors'),
    (dict(resnet_depth=19), 1, '--resnet_depth must be one of 18, 34, 50, 101, 152, 200, got 19'),
    (dict(width_multiplier=0.0), 1, '--width_multiplier must be > 0'),
    (dict(width_multiplier=0.01), 1, 'leave at least 2 stem channels'),
    (dict(sk_ratio=-0.1), 1, '--sk_ratio must be in'),
    (dict(se_ratio=2.0), 1, '--se_ratio must be in'),
    (dict(proj_out_dim=0), 1, '--proj_out_dim must be >= 1'),
    (dict(num_proj_layers=0), 1, '--num_proj_layers must be >= 1'),
    (dict(ft_proj_selector=4), 1, '--ft_proj_selector must be in 0..3'),
    (dict(ft_proj_selector=-5), 1, r'--ft_proj_selector must be in 0..3 \(or -1 for the last\)'),
    (dict(resnet_depth=50, width_multiplier=0.1, sk_ratio=0.0625), 1,
     r'--width_multiplier=0.1 with --sk_ratio: selective kernels need even widths, and \[12, 25, 51, 102\]'),
    (dict(fine_tune_after_block=5, train_mode='finetune', random_init=True), 1, '--fine_tune_after_block must be'),
    (dict(use_tpu=True), 1, '--use_tpu needs --tpu_name'),
    (dict(checkpoint_steps=-1), 1, '--checkpoint_steps and --train_summary_steps must be >= 0'),
    (dict(knn_max_examples=0), 1, '--knn_k and --knn_max_examples must be >= 1'),
])
def test_bad_flag_combinations_fail_with_one_line(overrides, replicas, message):
  with pytest.raises(config.UsageError, match=message) as error:
    config.validate(config.Config.defaults(**overrides), replicas)
  assert '\n' not in str(error.value)


@pytest.mark.parametrize('overrides', [
    dict(ft_proj_selector=-1),  # the authors' "final layer"
    dict(resnet_depth=18, width_multiplier=0.1, sk_ratio=0.0625),  # basic blocks: ResNet-D only, no odd split
])
def test_flags_of_the_authors_code_are_accepted(overrides):
  config.validate(config.Config.defaults(**overrides))


def test_flat_names_round_trip_through_the_groups():
  cfg = config.Config.defaults(resnet_depth=50, temperature=0.2, dataset='/x', knn_k=10, mode='eval')
  assert (cfg.model.resnet_depth, cfg.optim.temperature, cfg.data.dataset, cfg.eval.knn_k, cfg.run.mode) == (
      50, 0.2, '/x', 10, 'eval')
  assert config.Config.from_flat(cfg.flat()) == cfg
  changed = cfg.replace(temperature=0.5, width_multiplier=1.0)
  assert changed.optim.temperature == 0.5 and changed.model.width_multiplier == 1.0 and cfg.optim.temperature == 0.2
  names = [field.name for _, field in config.fields()]
  assert len(names) == len(set(names)) == len(cfg.flat())  # one group per name
  with pytest.raises(config.UsageError, match='Unknown setting.*resnet_dept'):
    config.Config.defaults(resnet_dept=50)


def test_every_setting_has_a_typed_default_and_help():
  for _, field in config.fields():
    assert field.metadata['help'], field.name
    allowed = [t for t in getattr(field.type, '__args__', (field.type,)) if t is not type(None)]
    assert field.default is None or isinstance(field.default, tuple(allowed)), field.name
    choices = field.metadata['choices']
    assert choices is None or field.default in choices, field.name
  assert dataclasses.asdict(config.Config().model)['resnet_depth'] == 18


def test_settings_load_no_tensorflow():
  """config.py is read before anything heavy (run.py's flags, scripts, notebooks): it imports no TensorFlow,
  Keras or TFDS, so building and checking a Config costs nothing."""
  code = ('import sys; sys.path.insert(0, %r); import config; config.validate(config.Config.defaults()); '
          'print(sorted(m for m in ("tensorflow", "keras", "tensorflow_datasets") if m in sys.modules))') % ROOT
  assert subprocess.run([sys.executable, '-c', code], capture_output=True, text=True).stdout == '[]\n'


@pytest.mark.parametrize('text, seconds', [('', 0.0), ('90s', 90.0), ('60m', 3600.0), ('1.5h', 5400.0), (' 2m ', 120.0)])
def test_a_time_budget_is_a_duration_in_seconds_minutes_or_hours(text, seconds):
  assert config.parse_duration(text) == seconds
  assert config.Config.defaults(train_time=text).optim.train_seconds == seconds
