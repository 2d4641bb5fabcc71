"""Throughput of the parts of SimCLR that bound a run on a small machine.

  python benchmark.py input --image_size=224 --source_size=256 --batch_size=128 --use_blur=True --seconds=20

`input` times the pretraining input pipeline (two augmented views per image, as `data.py` builds it for
same-size images) on in-memory random uint8 images, so no disk I/O or decoding is measured. The last line
printed is `images_per_sec: N` (source images per second, each with its two views).
"""

import argparse
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

import data_util  # pylint: disable=g-import-not-at-top


def _bool(text):
  if text.lower() in ('1', 'true', 'yes'):
    return True
  if text.lower() in ('0', 'false', 'no'):
    return False
  raise argparse.ArgumentTypeError(f'expected True or False, got {text!r}')


def _steady_state_rate(next_batch, batch_size, seconds, warmup_batches):
  """Images per second over `seconds`, after `warmup_batches` batches (tracing, autotuning, caches)."""
  for _ in range(warmup_batches):
    next_batch()
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next_batch()
    count += batch_size
  return count / (time.perf_counter() - start)


def bench_input(args):
  rng = np.random.default_rng(0)
  pool = rng.integers(0, 256, size=(args.num_source_images, args.source_size, args.source_size, 3),
                      dtype=np.uint8)
  dataset = tf.data.Dataset.from_tensor_slices(pool).repeat().batch(args.batch_size, drop_remainder=True)
  dataset = dataset.map(
      lambda images: data_util.pretrain_views(images, args.image_size, args.image_size,
                                              args.color_jitter_strength, blur=args.use_blur),
      num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
  iterator = iter(dataset)
  rate = _steady_state_rate(lambda: next(iterator), args.batch_size, args.seconds, warmup_batches=5)
  print(f'input: image_size={args.image_size} source_size={args.source_size} batch_size={args.batch_size} '
        f'use_blur={args.use_blur} seconds={args.seconds}')
  print(f'images_per_sec: {rate:.0f}')


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True)
  inp = commands.add_parser('input', help='the pretraining input pipeline')
  inp.add_argument('--image_size', type=int, default=32)
  inp.add_argument('--source_size', type=int, default=None, help='source image side (default: image_size)')
  inp.add_argument('--batch_size', type=int, default=128)
  inp.add_argument('--use_blur', type=_bool, default=False)
  inp.add_argument('--color_jitter_strength', type=float, default=1.0)
  inp.add_argument('--num_source_images', type=int, default=512)
  inp.add_argument('--seconds', type=float, default=20.0)
  args = parser.parse_args()
  if args.command == 'input':
    args.source_size = args.source_size or args.image_size
    bench_input(args)


if __name__ == '__main__':
  main()
