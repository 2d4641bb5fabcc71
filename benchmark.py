"""Throughput of the parts of SimCLR that bound a run on a small machine.

  python benchmark.py input --image_size=224 --source_size=256 --batch_size=128 --use_blur=True --seconds=20
  python benchmark.py train --resnet_depth=18 --image_size=32 --train_batch_size=128 --use_blur=False --seconds=40
  python benchmark.py peak
  python benchmark.py make_folder --out=/tmp/jpegs --num_images=10000 --min_size=256 --max_size=320
  python benchmark.py input --dataset=/tmp/jpegs --image_size=224 --batch_size=128 --seconds=20
  python benchmark.py curve --model_dir=runs/cifar10_cpu --out=cifar10_cpu_knn.png

`input` times the pretraining input pipeline (two augmented views per image, as `data.py` builds it for
same-size images) on in-memory random uint8 images, so no disk I/O or decoding is measured. The last line
printed is `images_per_sec: N` (source images per second, each with its two views).

`input --dataset=<folder>` (or any `--dataset` of run.py) times the whole training input path instead:
`data.load_source` (for a folder: the scan and image check, cached after the first start) and
`data.build_dataset(..., is_training=True)` reading, decoding (JPEGs only their crop windows) and augmenting
the files. It prints the seconds to `load_source` and to the first batch -- run it twice to see the first
and the second start (a new `--cache_dir` makes a first start again) -- then `images_per_sec: N` in the
steady state.

`make_folder` writes a folder of JPEGs `<out>/train/<class>/<i>.jpg` of random sides in [min_size, max_size]
(smooth gradients, waves, shapes and noise: ~30-40 KB at 256-320 px, like photographs rather than flat
colour or pure noise), deterministic for `--seed`.

`train` times the steady-state pretraining step of run.py (same model, NT-Xent, LARS, weight decay, online
linear head; `train.make_train_step`) on one synthetic in-memory batch, so no input pipeline is measured.
`--replicas=N` splits the batch over N logical CPU devices with MirroredStrategy (synchronized BatchNorm,
negatives gathered across replicas), so the cost of synchronization shows; `--precision` and `--jit_compile`
are run.py's flags. It also prints which CPU kernels TensorFlow runs (oneDNN or Eigen, and who decided), the
process's peak resident memory, the convolution arithmetic it achieved (forward and backward convolutions of
the encoder, counted from the traced graph's Conv2D ops) and that rate as a fraction of numpy's float32 matrix
product timed right after (`--peak_seconds`).

`curve` reads the kNN monitor (`--knn_eval_steps`) of one or more runs from their TensorBoard events and
plots its top-1 against the wall-clock minutes since the run's first event (time to accuracy), to a PNG; it
prints the points. It needs matplotlib (`pip install matplotlib`; requirements-dev.txt has it).

`peak` measures what the machine can do at all: a 4096 x 4096 matrix product in float32 and bfloat16 through
TensorFlow, and in float32 through numpy's BLAS, in GFLOP/s. A training step whose convolutions already run
near the float32 figure cannot get faster at identical numerics; only fewer operations or a cheaper number
format can.
"""

import argparse
import math
import os
import resource
import sys
import time
import typing

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # C++ info, warnings and CUDA probing errors
import progress  # pylint: disable=g-import-not-at-top
import runtime  # pylint: disable=g-import-not-at-top
runtime.use_onednn()  # before TensorFlow loads

with progress.native_stderr_silenced():  # what TensorFlow's C++ prints while loading, before any level
  from absl import logging  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

import config  # pylint: disable=g-import-not-at-top
import data  # pylint: disable=g-import-not-at-top
import data_util  # pylint: disable=g-import-not-at-top
import metrics  # pylint: disable=g-import-not-at-top
import model as model_lib  # pylint: disable=g-import-not-at-top
import optimization  # pylint: disable=g-import-not-at-top
import train  # pylint: disable=g-import-not-at-top


def _bool(text: str) -> bool:
  if text.lower() in ('1', 'true', 'yes'):
    return True
  if text.lower() in ('0', 'false', 'no'):
    return False
  raise argparse.ArgumentTypeError(f'expected True or False, got {text!r}')


def _steady_state_rate(next_batch: typing.Callable[[], typing.Any], batch_size: float, seconds: float,
                       warmup_batches: int) -> float:
  """Images per second over `seconds`, after `warmup_batches` batches (tracing, autotuning, caches)."""
  for _ in range(warmup_batches):
    next_batch()
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next_batch()
    count += batch_size
  return count / (time.perf_counter() - start)


def bench_input(args: argparse.Namespace) -> None:
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


def bench_dataset_input(args: argparse.Namespace) -> None:
  """The training input path from the files on: load_source (scan, check or cache), read, decode, augment."""
  logging.set_verbosity(logging.INFO)  # load_source says how many files it checked and took from the cache
  start = time.perf_counter()
  source = data.load_source(args.dataset, args.data_dir, cache_dir=args.cache_dir)
  loaded = time.perf_counter() - start
  settings = config.DataConfig(image_size=args.image_size, color_jitter_strength=args.color_jitter_strength,
                               use_blur=args.use_blur)
  dataset = data.build_dataset(source, args.split, args.batch_size, settings, is_training=True,
                               train_mode=args.train_mode)
  iterator = iter(dataset)
  next(iterator)
  first = time.perf_counter() - start
  rate = _steady_state_rate(lambda: next(iterator), args.batch_size, args.seconds, warmup_batches=5)
  print(f'input: dataset={args.dataset} split={args.split} train_mode={args.train_mode} '
        f'image_size={args.image_size} batch_size={args.batch_size} use_blur={args.use_blur} seconds={args.seconds}')
  print(f'load_source_sec: {loaded:.2f}  first_batch_sec: {first:.2f}')
  print(f'images_per_sec: {rate:.0f}')


def textured_image(rng: np.random.Generator, height: int, width: int, noise: float = 6.0) -> np.ndarray:
  """A uint8 `[height, width, 3]` image: a colour gradient, low-frequency waves, filled shaded ellipses and
  rectangles, and Gaussian noise -- so JPEG files come out the size of photographs' (neither flat colour's
  nor pure noise's)."""
  y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
  x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
  angle = rng.uniform(0, 2 * math.pi)
  ramp = x * math.cos(angle) + y * math.sin(angle)
  ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
  low, high = rng.uniform(0, 255, (2, 3)).astype(np.float32)
  image = low + (high - low) * ramp[..., None]
  for _ in range(rng.integers(2, 5)):
    fy, fx = rng.uniform(-10, 10, 2)
    wave = np.sin(2 * math.pi * (fx * x + fy * y) + rng.uniform(0, 2 * math.pi))
    image += wave[..., None] * rng.uniform(-20, 20, 3).astype(np.float32)
  for _ in range(rng.integers(3, 9)):
    cy, cx = rng.uniform(0, 1, 2)
    ry, rx = rng.uniform(0.04, 0.3, 2)
    if rng.random() < 0.5:
      inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
    else:
      inside = (np.abs(y - cy) < ry) & (np.abs(x - cx) < rx)
    shade = 1.0 + rng.uniform(-0.5, 0.5) * (x - cx) / rx
    image = np.where(inside[..., None], rng.uniform(0, 255, 3).astype(np.float32) * shade[..., None], image)
  image += rng.normal(0.0, noise, image.shape).astype(np.float32)
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def make_folder(out: str, num_images: int, min_size: int = 256, max_size: int = 320, classes: int = 10, seed: int = 0,
                quality: int = 95) -> int:
  """Writes `<out>/train/<class>/<i>.jpg`, image i of class i mod `classes`, height and width uniform in
  [min_size, max_size]; the same bytes for the same arguments. Returns the total bytes written."""
  if min_size < 1 or max_size < min_size or classes < 1:
    raise data.DataError(f'make_folder needs 1 <= --min_size <= --max_size and --classes >= 1 (got '
                         f'{min_size}, {max_size}, {classes}).')
  if os.path.isdir(out) and os.listdir(out):
    raise data.DataError(f'--out={out} is not empty; make_folder writes a new folder.')
  total = 0
  for i in range(num_images):
    rng = np.random.default_rng([seed, i])  # per image: any image can be remade alone
    height, width = (int(side) for side in rng.integers(min_size, max_size + 1, 2))
    contents = tf.io.encode_jpeg(textured_image(rng, height, width), quality=quality).numpy()
    path = os.path.join(out, 'train', f'class_{i % classes:03d}', f'{i:07d}.jpg')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
      f.write(contents)
    total += len(contents)
  return total


def bench_make_folder(args: argparse.Namespace) -> None:
  total = make_folder(args.out, args.num_images, args.min_size, args.max_size, args.classes, args.seed)
  print(f'make_folder: out={args.out} num_images={args.num_images} sizes={args.min_size}-{args.max_size} '
        f'classes={args.classes} seed={args.seed}')
  print(f'mean_kb: {total / max(args.num_images, 1) / 1024:.1f}  total_mb: {total / 2 ** 20:.1f}')


def conv_gflops_per_step(model: model_lib.SimCLRModel, images: tf.Tensor) -> float:
  """Forward + backward convolution GFLOPs of one step on `images`: 2 x MACs of each Conv2D in the traced
  forward graph, three times over (forward, input gradient, kernel gradient; none for the image's gradient)."""
  graph = tf.function(lambda x: model(x, training=True)).get_concrete_function(
      tf.TensorSpec(images.shape, images.dtype)).graph
  total = 0.0
  for op in graph.get_operations():
    if op.type == 'Conv2D':
      kh, kw, cin, _ = op.inputs[1].shape
      forward = 2.0 * np.prod(op.outputs[0].shape) * kh * kw * cin
      total += forward * (2 if cin == 3 else 3)  # the stem (3 input channels) has no input gradient
  return total / 1e9


def numpy_matmul_gflops(seconds: float = 10.0, n: int = 4096) -> float:
  """GFLOP/s of numpy's float32 `n x n` matrix product (its BLAS, all cores): the machine's reachable peak,
  measured outside TensorFlow."""
  a = np.random.default_rng(0).random((n, n), dtype=np.float32)
  return _steady_state_rate(lambda: a @ a, 2 * n ** 3 / 1e9, seconds, warmup_batches=1)


def bench_peak(args: argparse.Namespace) -> None:
  del args
  print(runtime.describe_kernels())
  for dtype in (tf.float32, tf.bfloat16):
    a = tf.cast(tf.random.uniform([4096, 4096]), dtype)
    product = tf.function(lambda a=a: tf.reduce_sum(tf.cast(tf.matmul(a, a)[0, :1], tf.float32)))
    rate = _steady_state_rate(lambda: product().numpy(), 2 * 4096 ** 3 / 1e9, 10.0, warmup_batches=2)
    print(f'matmul_gflops_per_sec_{dtype.name}: {rate:.0f}')
  print(f'numpy_matmul_gflops_per_sec_float32: {numpy_matmul_gflops():.0f}')


def bench_train(args: argparse.Namespace) -> None:
  if args.replicas > 1:  # before TensorFlow initialises its devices
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.replicas)
  precision, why = model_lib.resolve_precision(args.precision)
  cfg = config.Config.defaults(resnet_depth=args.resnet_depth, width_multiplier=args.width_multiplier,
                               image_size=args.image_size, train_batch_size=args.train_batch_size,
                               use_blur=args.use_blur, global_bn=args.global_bn or args.replicas > 1,
                               precision=precision, jit_compile=args.jit_compile, train_steps=1_000_000,
                               weight_decay=1e-6, temperature=0.1, learning_rate=0.3)
  if args.replicas > 1:
    strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices('CPU')])
  else:
    strategy = tf.distribute.get_strategy()
  config.validate(cfg, strategy.num_replicas_in_sync)
  with strategy.scope():
    model, optimizer, _ = train.build_training(cfg, strategy, num_classes=10, num_examples=50_000)
  if args.global_bn and args.replicas == 1:  # the authors' reference: synchronized BatchNorm on one replica
    model = model_lib.build(cfg, 10, num_replicas=2)
    optimizer = optimization.build_optimizer('lars', 0.3, 0.9, 1e-6, cfg.model.precision)
    optimizer.build(model.trainable_variables)
  step = train.make_train_step(cfg.optim, cfg.run.train_mode, model, optimizer, strategy)
  rng = np.random.default_rng(0)
  images = tf.constant(rng.uniform(size=(args.train_batch_size, args.image_size, args.image_size, 6)),
                       tf.float32)
  labels = tf.one_hot(rng.integers(0, 10, args.train_batch_size), 10)
  replica_batch = data.split_batch(strategy, images), data.split_batch(strategy, labels)
  compiled = tf.function(
      lambda: strategy.reduce('MEAN', strategy.run(step, args=replica_batch)[metrics.TOTAL_LOSS], axis=None))
  rate = _steady_state_rate(lambda: compiled().numpy(), args.train_batch_size, args.seconds, warmup_batches=3)
  print(f'train: resnet_depth={args.resnet_depth} width_multiplier={args.width_multiplier} '
        f'image_size={args.image_size} train_batch_size={args.train_batch_size} global_bn={cfg.model.global_bn} '
        f'replicas={args.replicas} precision={precision} jit_compile={args.jit_compile} '
        f'seconds={args.seconds}')
  print(runtime.describe_kernels())
  print(f'Precision: {precision} ({why}).')
  print(f'peak_rss_mb: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}')
  if args.replicas == 1:
    gflops = conv_gflops_per_step(model, images)
    achieved = gflops * rate / args.train_batch_size
    print(f'conv_gflops_per_step: {gflops:.0f}  conv_gflops_per_sec: {achieved:.0f}')
    if args.peak_seconds > 0:
      peak = numpy_matmul_gflops(args.peak_seconds)
      print(f'numpy_matmul_gflops_per_sec_float32: {peak:.0f}  conv_fraction_of_numpy_matmul: {achieved / peak:.2f}')
  print(f'images_per_sec: {rate:.1f}')


def knn_curve(model_dir: str, tag: str = 'knn/top_1_accuracy') -> list[tuple[float, int, float]]:
  """[(minutes since the run's first event, step, value)] of `tag` in model_dir's training events, oldest
  first; a resumed run's events (several files) continue the clock of the first."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  points, start = [], None
  for path in sorted(tf.io.gfile.glob(os.path.join(model_dir, 'events.out.tfevents.*'))):
    events = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    start = events.FirstEventTimestamp() if start is None else start
    if tag in events.Tags()['tensors']:
      points += [((e.wall_time - start) / 60, e.step, float(tf.make_ndarray(e.tensor_proto)))
                 for e in events.Tensors(tag)]
  return sorted(points)


def bench_curve(args: argparse.Namespace) -> None:
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise data.DataError('benchmark.py curve needs matplotlib: pip install matplotlib') from None
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  if args.labels and len(args.labels) != len(args.model_dir):
    raise data.DataError(f'{len(args.labels)} --labels for {len(args.model_dir)} --model_dir: give one each.')
  figure, axes = pyplot.subplots(figsize=(6.4, 4.0), dpi=100)
  for model_dir in args.model_dir:
    points = knn_curve(model_dir)
    if not points:
      raise data.DataError(f'{model_dir} has no kNN monitor values (train with --knn_eval_steps).')
    for minutes, step, value in points:
      print(f'{model_dir} minute {minutes:.1f} step {step} knn_top1 {value:.4f}')
    axes.plot([p[0] for p in points], [100 * p[2] for p in points], marker='o',
              label=args.labels[len(axes.lines)] if args.labels else os.path.basename(model_dir.rstrip('/')))
  axes.set_xlabel('wall-clock minutes of the run')
  axes.set_ylabel('kNN top-1 on the eval split (%)')
  axes.set_title(args.title)
  axes.grid(alpha=0.3)
  axes.legend(loc='lower right')
  figure.tight_layout()
  figure.savefig(args.out)
  print(f'curve: {args.out}')


DEFAULTS = config.Config()  # run.py's defaults are the benchmarks' too


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True)
  inp = commands.add_parser('input', help='the pretraining input pipeline (from files with --dataset)')
  inp.add_argument('--dataset', default=None,
                   help='time the whole training input path of this --dataset (an image folder, a TFDS name)')
  inp.add_argument('--data_dir', default=None, help='with --dataset: where TFDS datasets are')
  inp.add_argument('--split', default='train', help='with --dataset: the split to read')
  inp.add_argument('--train_mode', default='pretrain', choices=('pretrain', 'finetune'), help='with --dataset')
  inp.add_argument('--cache_dir', default=None,
                   help='with --dataset: image-folder cache (default $XDG_CACHE_HOME/simclr_tf2/image_folders)')
  inp.add_argument('--image_size', type=int, default=DEFAULTS.data.image_size)
  inp.add_argument('--source_size', type=int, default=None, help='source image side (default: image_size)')
  inp.add_argument('--batch_size', type=int, default=DEFAULTS.optim.train_batch_size)
  inp.add_argument('--use_blur', type=_bool, default=DEFAULTS.data.use_blur)
  inp.add_argument('--color_jitter_strength', type=float, default=DEFAULTS.data.color_jitter_strength)
  inp.add_argument('--num_source_images', type=int, default=512)
  inp.add_argument('--seconds', type=float, default=20.0)
  tr = commands.add_parser('train', help='the pretraining step, without input pipeline')
  tr.add_argument('--resnet_depth', type=int, default=DEFAULTS.model.resnet_depth)
  tr.add_argument('--width_multiplier', type=float, default=DEFAULTS.model.width_multiplier)
  tr.add_argument('--image_size', type=int, default=DEFAULTS.data.image_size)
  tr.add_argument('--train_batch_size', type=int, default=DEFAULTS.optim.train_batch_size)
  tr.add_argument('--use_blur', type=_bool, default=DEFAULTS.data.use_blur,
                  help='(blur is in the input pipeline: no effect)')
  tr.add_argument('--global_bn', type=_bool, default=False,
                  help='synchronized BatchNorm on one replica, as the authors\' code always does')
  tr.add_argument('--replicas', type=int, default=1, help='logical CPU devices to split the batch over')
  tr.add_argument('--precision', default='auto', choices=config.PRECISIONS,
                  help='auto: what run.py picks on this machine (runtime.choose_precision)')
  tr.add_argument('--jit_compile', type=_bool, default=False, help='compile the step with XLA')
  tr.add_argument('--seconds', type=float, default=40.0)
  tr.add_argument('--peak_seconds', type=float, default=5.0,
                  help='then time numpy\'s float32 matmul this long, for the step\'s fraction of it (0: skip)')
  commands.add_parser('peak', help='float32 and bfloat16 matrix-product GFLOP/s of this machine')
  mk = commands.add_parser('make_folder', help='write a folder of JPEGs of random sizes for `input --dataset`')
  mk.add_argument('--out', required=True)
  mk.add_argument('--num_images', type=int, default=10_000)
  mk.add_argument('--min_size', type=int, default=256)
  mk.add_argument('--max_size', type=int, default=320)
  mk.add_argument('--classes', type=int, default=10)
  mk.add_argument('--seed', type=int, default=0)
  cv = commands.add_parser('curve', help='kNN monitor top-1 against wall-clock time of runs, to a PNG')
  cv.add_argument('--model_dir', action='append', required=True, help='a run\'s model_dir (repeat for several)')
  cv.add_argument('--labels', action='append', help='a legend label per --model_dir (default: folder names)')
  cv.add_argument('--title', default='')
  cv.add_argument('--out', required=True)
  args = parser.parse_args(argv)
  try:
    if args.command == 'curve':
      bench_curve(args)
    elif args.command == 'peak':
      bench_peak(args)
    elif args.command == 'make_folder':
      bench_make_folder(args)
    elif args.command == 'input' and args.dataset:
      bench_dataset_input(args)
    elif args.command == 'input':
      args.source_size = args.source_size or args.image_size
      bench_input(args)
    else:
      bench_train(args)
  except data.DataError as error:
    sys.exit(f'Error: {error}')


if __name__ == '__main__':
  main()
