"""benchmark.py: the arithmetic count on a model small enough to count by hand; the JPEG folder maker and the
input benchmark from files, tiny."""

import os

import logging
import keras
import numpy as np
import pytest
import tensorflow as tf

import benchmark
import data


def test_conv_gflops_counts_forward_and_both_gradients_from_the_graph():
  model = keras.Sequential([keras.Input([8, 8, 3]),
                            keras.layers.Conv2D(8, 3, padding='same'),
                            keras.layers.Conv2D(16, 3, strides=2, padding='same'),
                            keras.layers.Dense(4)])
  # Stem: 2 * (2 images * 8 * 8 outputs * 8 channels) * (3 * 3 * 3) MACs, forward + kernel gradient only.
  stem = 2 * (2 * 8 * 8 * 8) * 27 * 2
  # Second conv, stride 2: 4 x 4 outputs, 16 channels, 3 * 3 * 8 taps; forward + both gradients.
  second = 2 * (2 * 4 * 4 * 16) * 72 * 3
  assert benchmark.conv_gflops_per_step(model, tf.zeros([2, 8, 8, 3])) == pytest.approx((stem + second) / 1e9)


def test_make_folder_writes_decodable_jpegs_deterministically(tmp_path):
  total = benchmark.make_folder(str(tmp_path / 'a'), 6, min_size=40, max_size=56, classes=2, seed=3)
  paths = sorted((tmp_path / 'a').glob('train/*/*.jpg'))
  assert len(paths) == 6 and total == sum(p.stat().st_size for p in paths)
  assert sorted({p.parent.name for p in paths}) == ['class_000', 'class_001']
  for path in paths:
    contents = path.read_bytes()
    assert tf.io.is_jpeg(contents)
    height, width, _ = tf.io.decode_jpeg(contents).shape
    assert 40 <= height <= 56 and 40 <= width <= 56
  benchmark.make_folder(str(tmp_path / 'b'), 6, min_size=40, max_size=56, classes=2, seed=3)
  assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in sorted((tmp_path / 'b').glob('train/*/*'))]
  with pytest.raises(data.DataError, match='--out=.* is not empty'):
    benchmark.make_folder(str(tmp_path / 'a'), 1)


def test_textured_images_compress_like_photographs():
  rng = np.random.default_rng(0)
  sizes = [len(tf.io.encode_jpeg(benchmark.textured_image(rng, 256, 288), quality=95).numpy()) for _ in range(3)]
  assert all(20_000 < size < 60_000 for size in sizes)  # flat colour: 2 KB; uniform noise: 87 KB


def test_input_benchmark_reads_a_folder_and_caches_its_scan(tmp_path, capsys, caplog):
  out, cache = str(tmp_path / 'jpegs'), str(tmp_path / 'cache')
  benchmark.main(['make_folder', f'--out={out}', '--num_images=6', '--min_size=40', '--max_size=48', '--classes=2'])
  for path in (tmp_path / 'jpegs').glob('train/*/*.jpg'):
    os.utime(path, ns=(1_600_000_000 * 10 ** 9,) * 2)  # long-written files: their verdicts are cached
  absl_logger, root = logging.getLogger('absl'), logging.getLogger()
  level, handlers = absl_logger.level, list(root.handlers)
  try:
    for _ in range(2):
      benchmark.main(['input', f'--dataset={out}', '--image_size=16', '--batch_size=2', '--seconds=0.2',
                      f'--cache_dir={cache}'])
  finally:  # benchmark.main raises absl's verbosity; later tests capture INFO logs
    absl_logger.setLevel(level)
    root.handlers[:] = handlers
  printed = capsys.readouterr().out
  assert printed.count('first_batch_sec: ') == 2 and printed.strip().splitlines()[-1].startswith('images_per_sec: ')
  assert '6 files checked, 0 verdicts' in caplog.text and '0 files checked, 6 verdicts' in caplog.text


def test_curve_reads_the_knn_monitor_against_wall_time_and_draws_it(tmp_path, capsys):
  writer = tf.summary.create_file_writer(str(tmp_path / 'run'))
  with writer.as_default():
    for step, value in ((100, 0.31), (200, 0.42), (300, 0.47)):
      tf.summary.scalar('knn/top_1_accuracy', value, step=step)
      tf.summary.scalar('train/contrast_loss', 9.0, step=step)
  writer.close()
  points = benchmark.knn_curve(str(tmp_path / 'run'))
  assert [(step, round(value, 4)) for _, step, value in points] == [(100, 0.31), (200, 0.42), (300, 0.47)]
  assert 0 <= points[0][0] <= points[-1][0] < 1  # minutes since the first event
  out = tmp_path / 'curve.png'
  benchmark.main(['curve', f'--model_dir={tmp_path / "run"}', f'--out={out}', '--title=t'])
  assert tf.io.decode_png(out.read_bytes()).shape == (400, 640, 4)
  assert 'step 300 knn_top1 0.4700' in capsys.readouterr().out
  with pytest.raises(SystemExit, match='has no kNN monitor values'):
    benchmark.main(['curve', f'--model_dir={tmp_path}', f'--out={out}'])
  with pytest.raises(SystemExit, match='1 --labels for 2 --model_dir'):
    benchmark.main(['curve', f'--model_dir={tmp_path}', f'--model_dir={tmp_path}', '--labels=a', f'--out={out}'])
