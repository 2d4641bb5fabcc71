"""runtime.py: oneDNN's kernels where TensorFlow leaves them off, the user's setting kept, and what -v says."""

import os
import subprocess
import sys

import pytest

import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('machine', ['x86_64', 'AMD64'])
def test_turns_onednn_on_on_x86_when_unset(machine):
  environ = {}
  assert runtime.use_onednn(environ, machine) == 'project'
  assert environ == {runtime.ONEDNN_VARIABLE: '1'}


@pytest.mark.parametrize('value', ['0', '1', ''])
def test_a_value_in_the_environment_wins(value):
  environ = {runtime.ONEDNN_VARIABLE: value}
  assert runtime.use_onednn(environ, 'x86_64') == 'environment'
  assert environ == {runtime.ONEDNN_VARIABLE: value}


def test_other_machines_keep_tensorflows_default():
  environ = {}
  assert runtime.use_onednn(environ, 'aarch64') == 'tensorflow'
  assert not environ


def _kernels_in_a_fresh_process(env_value):
  """`describe_kernels()` of a new process that imports runtime first, as run.py does."""
  env = {k: v for k, v in os.environ.items() if k != runtime.ONEDNN_VARIABLE}
  if env_value is not None:
    env[runtime.ONEDNN_VARIABLE] = env_value
  code = ('import runtime; runtime.use_onednn(); import tensorflow; '
          'print(runtime.onednn_enabled()); print(runtime.describe_kernels())')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True)
  enabled, line = result.stdout.strip().splitlines()[-2:]
  return enabled == 'True', line


@pytest.mark.skipif(runtime.platform.machine().lower() not in runtime.X86_MACHINES, reason='x86 only')
def test_tensorflow_runs_onednn_unless_the_user_says_0():
  enabled, line = _kernels_in_a_fresh_process(None)
  assert enabled and line.startswith('CPU kernels: oneDNN (TF_ENABLE_ONEDNN_OPTS=1 set by this project')
  enabled, line = _kernels_in_a_fresh_process('0')
  assert not enabled and line.startswith('CPU kernels: Eigen (TF_ENABLE_ONEDNN_OPTS=0 from the environment')


def test_tensorflows_own_choice_follows_the_cpu_features(tmp_path):
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text('processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n')
  avx2 = runtime.cpu_features(str(cpuinfo))
  assert avx2 == {'fpu', 'sse2', 'avx', 'avx2', 'fma'}
  assert runtime.tensorflow_default(avx2) == 'Eigen'
  assert runtime.tensorflow_default(avx2 | {'avx512f', 'avx512_bf16'}) == 'oneDNN'
  assert runtime.tensorflow_default(avx2 | {'amx_tile'}) == 'oneDNN'
  assert runtime.cpu_features(str(tmp_path / 'missing')) is None and runtime.tensorflow_default(None) is None
  if runtime.platform.system() == 'Linux':
    assert 'own default here is Eigen (this CPU has no AVX-512 VNNI/BF16' in runtime.describe_kernels(avx2)
    assert 'own default here is oneDNN too (this CPU has avx512_bf16)' in runtime.describe_kernels(
        avx2 | {'avx512_bf16'})
