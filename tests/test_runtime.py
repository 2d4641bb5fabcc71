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


@pytest.mark.parametrize('hardware, expected', [
    (dict(features={'avx512f', 'avx512_bf16'}), 'mixed_bfloat16'),   # AMD Zen 4/5, Intel Cooper Lake
    (dict(features={'avx512f', 'amx_bf16', 'amx_tile'}), 'mixed_bfloat16'),   # Intel Sapphire Rapids on
    (dict(features={'avx2', 'fma'}), 'float32'),   # AVX2 only
    (dict(features={'avx512f', 'avx512_vnni'}), 'float32'),   # Intel Ice Lake: int8, not bfloat16
    (dict(use_tpu=True, features=set()), 'mixed_bfloat16'),
    (dict(gpu_compute_capabilities=[(8, 0), (9, 0)], features=set()), 'mixed_bfloat16'),
    (dict(gpu_compute_capabilities=[(7, 5)], features={'avx512_bf16'}), 'mixed_float16'),   # the GPU decides
    (dict(gpu_compute_capabilities=[(8, 6), (6, 1)], features=set()), 'float32'),   # the slowest GPU decides
])
def test_auto_precision_is_what_the_hardware_computes_fast(hardware, expected, monkeypatch):
  monkeypatch.delenv(runtime.ONEDNN_VARIABLE, raising=False)
  precision, why = runtime.choose_precision(**hardware)
  assert precision == expected and why


def test_auto_precision_is_float32_where_the_cpus_flags_are_unknown(monkeypatch):
  monkeypatch.setattr(runtime, 'cpu_features', lambda: None)  # not Linux
  assert runtime.choose_precision()[0] == 'float32'


def test_auto_precision_stays_float32_on_eigens_kernels(monkeypatch):
  monkeypatch.setenv(runtime.ONEDNN_VARIABLE, '0')
  assert runtime.choose_precision(features={'avx512_bf16'})[0] == 'float32'
