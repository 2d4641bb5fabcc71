"""Docs that cannot rot: every `bash` block of the README and the tutorial, and every config, names only run.py
flags that exist and configs/ files that are there; the commands on an image folder run, in order, at a tiny
size, on a folder made for the test (`/data/pets` in the README, `/path/to/folder` in the tutorial)."""

import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

import run
from test_run import USER_UNSET, write_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ('README.md', os.path.join('docs', 'tutorial.md'))
FOLDERS = ('/data/pets', '/path/to/folder')  # the image folders the docs' examples use
# Appended to each command that runs: the smallest network and run that still does every step.
TINY = ['--train_time=', '--train_steps=2', '--width_multiplier=0.125', '--resnet_depth=18', '--image_size=16',
        '--train_batch_size=8', '--eval_batch_size=8', '--warmup_epochs=0', '--linear_eval_max_examples=32',
        '--knn_max_examples=16']
ABSL_FLAGS = ('flagfile', 'helpfull', 'helpshort', 'verbosity', 'v')


def bash_blocks(path):
  with open(os.path.join(ROOT, path), encoding='utf-8') as f:
    return re.findall(r'```bash\n(.*?)```', f.read(), flags=re.S)


def run_py_commands(path):
  """[argument list after run.py] of every run.py command in the file's bash blocks (continued lines joined)."""
  commands = []
  for block in bash_blocks(path):
    for line in block.replace('\\\n', ' ').splitlines():
      line = line.split(' #')[0].strip()
      if re.search(r'(^|\s|/)run\.py(\s|$)', line) and not line.startswith('#'):
        words = shlex.split(line)
        commands.append(words[next(i for i, w in enumerate(words) if w.endswith('run.py')) + 1:])
  return commands


def flag_names(args):
  for arg in args:
    if arg.startswith('-'):
      yield arg.lstrip('-').split('=')[0]


def known(name):
  if name in ABSL_FLAGS or name in run.FLAGS:
    return True
  return name.startswith('no') and name[2:] in run.FLAGS and isinstance(run.FLAGS[name[2:]].value, bool)


@pytest.mark.parametrize('path', DOCS)
def test_every_run_py_flag_and_config_in_the_docs_exists(path):
  commands = run_py_commands(path)
  assert commands, f'{path} has no run.py command'
  for args in commands:
    unknown = [name for name in flag_names(args) if not known(name)]
    assert not unknown, (path, args, unknown)
    for arg in args:
      if arg.startswith('--flagfile='):
        assert os.path.isfile(os.path.join(ROOT, arg.split('=', 1)[1])), (path, arg)


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(ROOT, 'configs', '*.cfg'))), ids=os.path.basename)
def test_every_flag_in_the_configs_exists(path):
  with open(path) as f:
    names = [line.strip()[2:].split('=')[0] for line in f if line.strip() and not line.startswith('#')]
  assert names and all(known(name) for name in names), names


def runnable(args):
  """Commands on the docs' image folder, or the main job: nothing else is reachable here (gs://, TFDS, TPUs)."""
  text = ' '.join(args)
  return ((not args or any(folder in text for folder in FOLDERS) or args[0].startswith('--mode=eval')) and
          'gs://' not in text and '$' not in text)


@pytest.mark.slow
@pytest.mark.parametrize('path', DOCS)
def test_the_commands_on_an_image_folder_run_in_order(path, tmp_path, shapes_data_dir):
  """Each runnable command as the docs give it, plus TINY; in one working directory that sees the repository's
  configs/, in order (a fine-tuning starts from the pretraining before it); each one exits 0."""
  folder = write_image_folder(tmp_path / 'pets', classes=3, per_class=(8, 4), size=24)
  os.symlink(os.path.join(ROOT, 'configs'), tmp_path / 'configs')  # as from the repository's root
  env = {k: v for k, v in os.environ.items() if k not in USER_UNSET}
  ran = 0
  for args in run_py_commands(path):
    if not runnable(args):
      continue
    args = [re.sub('|'.join(FOLDERS), folder, arg) for arg in args]
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'run.py'), *args, *TINY,
                             f'--data_dir={shapes_data_dir}'], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-2000:])
    ran += 1
  assert ran >= 3, ran
