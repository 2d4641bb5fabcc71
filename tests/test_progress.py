"""progress.py: what a run prints -- the progress line's columns, and a quiet default that keeps this project's
warnings and every error but drops the libraries' noise."""

import io
import logging
import os
import warnings

import metrics
import progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_detail_flags_are_absl_verbosity_and_logtostderr():
  assert not progress.wants_detail(['run.py', '--train_steps=3', '--model_dir=v'])
  for flag in ('--verbosity=1', '-v', '-v=1', '--logtostderr', '--alsologtostderr', '--v=2'):
    assert progress.wants_detail(['run.py', flag]), flag


def test_pretraining_line_leads_with_the_contrastive_loss_and_shows_the_head_apart():
  out = io.StringIO()
  line = progress.Progress(0, 100, 128, metrics.COLUMNS, pretrain=True, stream=out)
  line.update(50, 10.0, {'train/total_loss': 44.8, 'train/contrast_loss': 4.2, 'train/contrast_acc': 0.6,
                         'train/supervised_loss': 40.1, 'train/supervised_acc': 0.2, 'train/weight_decay': 0.5},
              learning_rate=1.0)
  assert out.getvalue() == ('step 50/100 | contrast_loss 4.200 | contrast_acc 0.600 | head_loss 40.100 | '
                            'head_acc 0.200 | 640 img/s | lr 1 | ETA 0m10s\n')
  out = io.StringIO()
  progress.Progress(0, 10, 8, metrics.COLUMNS, stream=out).update(10, 1.0, {'train/supervised_loss': 0.5,
                                                          'train/supervised_acc': 0.75}, 0.1)
  assert out.getvalue().startswith('step 10/10 | loss 0.500 | acc 0.750 | 80 img/s')


def test_quiet_keeps_this_projects_warnings_and_errors_only(monkeypatch):
  stream = io.StringIO()
  handler = logging.StreamHandler(stream)
  loggers = {None: logging.Logger('root'), 'tensorflow': logging.Logger('tensorflow')}
  loggers[None].addHandler(handler)
  monkeypatch.setattr(progress.logging, 'getLogger', lambda name=None: loggers[name])
  monkeypatch.setattr(warnings, 'filters', list(warnings.filters))
  progress.quiet(ROOT)
  records = [('run.py', logging.WARNING, 'ours'), ('.venv/lib/tensorflow/x.py', logging.WARNING, 'theirs'),
             ('run.py', logging.INFO, 'detail'), ('/usr/lib/python3/somewhere.py', logging.ERROR, 'broken')]
  for path, level, message in records:
    handler.handle(logging.LogRecord('absl', level, os.path.join(ROOT, path), 1, message, None, None))
  assert stream.getvalue().splitlines() == ['WARNING: ours', 'ERROR: broken']
  with warnings.catch_warnings(record=True) as caught:
    warnings.warn_explicit('a deprecation', DeprecationWarning, 'reader.py', 1, module='tensorflow_datasets.core')
    warnings.warn_explicit('ours', UserWarning, 'data.py', 1, module='data')
  assert [str(w.message) for w in caught] == ['ours']


def test_what_native_code_writes_to_stderr_is_silenced_unless_asked_for(capfd):
  """What C++ writes to file descriptor 2 (TensorFlow's loading notices: os.write stands in for it) is dropped
  inside the block, and only there; Python's own stderr is not touched."""
  with progress.native_stderr_silenced(True):
    os.write(2, b'from C++, silenced\n')
  with progress.native_stderr_silenced(False):
    os.write(2, b'from C++, asked for\n')
  os.write(2, b'after the block\n')
  assert capfd.readouterr().err == 'from C++, asked for\nafter the block\n'


def test_a_time_budget_shows_unknown_steps_and_counts_down_to_its_deadline(monkeypatch):
  monkeypatch.setattr(progress.time, 'monotonic', lambda: 1000.0)
  out = io.StringIO()
  line = progress.Progress(0, None, 100, metrics.COLUMNS, deadline=1000.0 + 3599, stream=out)
  line.update(5, 2.0, {'train/supervised_loss': 0.5}, 0.1)
  line.total_steps = 9000
  line.update(10, 2.0, {'train/supervised_loss': 0.5}, 0.1)
  assert out.getvalue().splitlines() == ['step 5/? | loss 0.500 | 250 img/s | lr 0.1 | ETA 59m59s',
                                         'step 10/9000 | loss 0.500 | 250 img/s | lr 0.1 | ETA 59m59s']
