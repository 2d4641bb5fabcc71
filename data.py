"""Where images come from, and how they become (distributed) batches.

`--dataset` is one of:
  - a TFDS name (`cifar10`, `imagenet2012_subset/10pct`, ...), read from `data_dir`; nothing is downloaded when
    the download host is unreachable: a clear error comes within seconds instead of TFDS's ~3.5 minutes of
    retries;
  - a folder `<root>/<split>/<class>/<image>` (PNG, JPEG, BMP, GIF); images directly in `<root>/<split>/` are
    unlabeled (label -1), which pretraining accepts;
  - `simclr_shapes`, the embedded default, generated into `data_dir` on first use (see shapes_dataset.py).

Every source yields examples `{'image': uint8 [H, W, 3], 'label': int64 (-1 = none), 'id': string}`; `id` is
stable across runs (TFDS id or relative path), which is what label-fraction subsets are written in.
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import socket
import tempfile
import time
import urllib.parse

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import data_util
import shapes_dataset

EMBEDDED_DATASET = shapes_dataset.NAME
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif')
LABEL_SUBSET_FILE = 'label_subset.json'
FOLDER_HINT = 'or pass an image folder laid out <root>/<split>/<class>/<image> as --dataset=/path/to/root'


class DataError(ValueError):
  """Data that cannot be used as asked; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Source:
  """A dataset's metadata and a way to read a split's examples.

  Attributes:
    name: the `--dataset` value.
    class_names: label names; index = label id. Empty for fully unlabeled data.
    split_sizes: {split: number of examples}.
    image_shape: `(H, W, 3)` when every image has that size (enables batched cropping), else None.
    read: `read(split, input_context=None, shuffle_files=False, decode_images=True, keep_ids=None,
      encoded=False)` -> tf.data.Dataset of examples; with `decode_images=False` they hold only 'label' and
      'id' (no image is decoded); with `keep_ids`, only those examples, chosen before any image is decoded;
      with `encoded=True`, the image file's bytes as 'encoded' in place of 'image' (so a JPEG crop can
      decode only its window).
  """
  name: str
  class_names: tuple
  split_sizes: dict
  image_shape: tuple
  read: object

  @property
  def num_classes(self):
    return len(self.class_names)

  def num_examples(self, split):
    if split not in self.split_sizes:
      raise DataError(f'Split {split!r} is not in dataset {self.name!r}; it has {sorted(self.split_sizes)}.')
    return self.split_sizes[split]


def load_source(dataset, data_dir=None, strict_images=False, cache_dir=None):
  """The `Source` for a TFDS name, an image folder, or the embedded dataset.

  An image folder's scan and image check are cached in `cache_dir` (default: `default_cache_dir()`).
  """
  if not dataset:
    raise DataError(f'--dataset is empty: give a TFDS name, {EMBEDDED_DATASET!r}, {FOLDER_HINT}.')
  if os.path.isdir(os.path.expanduser(dataset)):
    return _folder_source(os.path.expanduser(dataset), strict_images, cache_dir or default_cache_dir())
  if dataset.startswith(('/', '.', '~')):
    raise DataError(f'Image folder {dataset} does not exist (--dataset is a path).')
  return _tfds_source(dataset, data_dir)


# ----------------------------------------------------------------------------------------------- TFDS


def _tfds_source(name, data_dir):
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except (tfds.core.registered.DatasetNotFoundError, ValueError) as error:
    raise DataError(f'Unknown dataset {name!r}: not a TFDS dataset name and not an existing folder '
                    f'({error.__class__.__name__}). Use a TFDS name, {EMBEDDED_DATASET!r}, {FOLDER_HINT}.'
                    ) from None
  if not builder.is_prepared():
    _prepare(builder, name, data_dir)
  info = builder.info
  label = info.features['label'] if 'label' in info.features else None
  class_names = tuple(label.names) if isinstance(label, tfds.features.ClassLabel) else ()
  shape = tuple(info.features['image'].shape)
  image_shape = shape if None not in shape else None

  def read(split, input_context=None, shuffle_files=False, decode_images=True, keep_ids=None, encoded=False):
    split_info = info.splits[split]
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    by_file = num_pipelines > 1 and split_info.num_shards >= num_pipelines
    read_config = tfds.ReadConfig(add_tfds_id=True, input_context=input_context if by_file else None)
    skip_decoding = not decode_images or keep_ids is not None or encoded
    decoders = {'image': tfds.decode.SkipDecoding()} if skip_decoding else None
    ds = builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config, decoders=decoders)
    if num_pipelines > 1 and not by_file:
      ds = ds.shard(num_pipelines, input_context.input_pipeline_id)
    if keep_ids is not None:
      keep = _id_filter(keep_ids)
      ds = ds.filter(lambda ex: keep(ex['tfds_id']))
      if decode_images and not encoded:  # only the kept examples (1% of them for a 1% label fraction)
        image = info.features['image']
        ds = ds.map(lambda ex: {**ex, 'image': image.decode_example(ex['image'])},
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.map(lambda ex: _tfds_example(ex, image=decode_images, encoded=encoded),
                  num_parallel_calls=tf.data.AUTOTUNE)

  split_sizes = {split: info.splits[split].num_examples for split in info.splits}
  return Source(name, class_names, split_sizes, image_shape, read)


def _id_filter(keep_ids):
  """A predicate on string example ids: is the id in `keep_ids`?"""
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(list(keep_ids)), tf.ones([len(keep_ids)], tf.int32)),
      default_value=0)
  return lambda example_id: table.lookup(example_id) > 0


def _tfds_example(example, image=True, encoded=False):
  label = tf.cast(example.get('label', tf.constant(-1, tf.int64)), tf.int64)
  result = {'label': label, 'id': example['tfds_id']}
  if image and encoded:
    result['encoded'] = example['image']
  elif image:
    pixels = example['image']
    if pixels.shape[-1] == 1:
      pixels = tf.image.grayscale_to_rgb(pixels)
    result['image'] = pixels[..., :3]
  return result


def _prepare(builder, name, data_dir):
  """Prepares a TFDS dataset, failing fast when its data cannot be fetched."""
  where = f'--data_dir={data_dir}' if data_dir else 'the default --data_dir (~/tensorflow_datasets)'
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    manual_dir = os.path.join(data_dir or os.path.expanduser('~/tensorflow_datasets'), 'downloads', 'manual')
    if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
      raise DataError(f'Dataset {name!r} is not prepared in {where}, and it needs files you download yourself '
                      f'into {manual_dir} (see the TFDS catalog for {name}); {FOLDER_HINT}.')
  host = _unreachable_host(builder)
  if host:
    raise DataError(f'Dataset {name!r} is not prepared in {where}, and it cannot be downloaded from here '
                    f'({host} is unreachable). Prepare it where there is network access '
                    f'(`tfds build {name} --data_dir=DIR`) and point --data_dir at DIR, {FOLDER_HINT}.')
  logging.info('Preparing dataset %s in %s (once).', name, where)
  tfds.disable_progress_bar()  # TFDS's own bars and banners are noise in a run's output
  with contextlib.redirect_stdout(io.StringIO()):
    builder.download_and_prepare()


def _unreachable_host(builder, timeout=5.0):
  """The first download host of `builder` that does not answer a TCP connection within `timeout`, if any."""
  try:
    urls = list(builder.url_infos or ())
  except Exception:  # pylint: disable=broad-except
    urls = []
  for host in sorted({urllib.parse.urlparse(url).hostname for url in urls} - {None}):
    try:
      socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
      return host
  return None


# ----------------------------------------------------------------------------------------------- folders


CACHE_VERSION = 1  # of the cache file's layout and of what a verdict means (tf.io.decode_image, 3 channels)
# A file modified this close to (or after) the scan that checked it keeps no cached verdict: rewritten within
# the filesystem's timestamp granularity at the same size, it would otherwise look unchanged.
RACY_NS = 2_000_000_000


def default_cache_dir():
  """Where image-folder indexes live: `$XDG_CACHE_HOME/simclr_tf2/image_folders` (default ~/.cache/...)."""
  base = os.environ.get('XDG_CACHE_HOME', '')
  if not os.path.isabs(base):  # the XDG spec says relative paths are to be ignored
    base = os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'simclr_tf2', 'image_folders')


def _stamp(entry):
  """(size, mtime_ns) of a directory entry: what says a file changed. (-1, -1) when it cannot be stat'ed
  (e.g. a broken link), which the check then finds unreadable."""
  try:
    stat = entry.stat()
  except OSError:
    return -1, -1
  return stat.st_size, stat.st_mtime_ns


def _images_in(directory):
  """The image entries of a directory, sorted by name."""
  with os.scandir(directory) as entries:
    return sorted((e for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS)), key=lambda e: e.name)


def _scan_split(root, split):
  """[(relative path, class name or None, (size, mtime_ns))] of a split folder; class folders must not be
  empty. One scandir per folder and one stat per file: cheap even for a million files."""
  split_dir = os.path.join(root, split)
  with os.scandir(split_dir) as entries:
    entries = sorted(entries, key=lambda e: e.name)
  files = []
  for entry in entries:
    if entry.is_dir():
      images = _images_in(entry.path)
      if not images:
        raise DataError(f'Class folder {entry.path} has no images ({", ".join(IMAGE_EXTENSIONS)}).')
      files += [(os.path.join(split, entry.name, e.name), entry.name, _stamp(e)) for e in images]
    elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
      files.append((os.path.join(split, entry.name), None, _stamp(entry)))  # unlabeled
  if not files:
    raise DataError(f'Split folder {split_dir} has no images: expected {split_dir}/<class>/<image> or '
                    f'{split_dir}/<image> ({", ".join(IMAGE_EXTENSIONS)}).')
  return files


def _decode(contents):
  return tf.ensure_shape(tf.io.decode_image(contents, channels=3, expand_animations=False), [None, None, 3])


def _check_files(paths):
  """Decodes each file once -> [(height, width), or None when it is corrupt or unreadable]."""
  checked = tf.data.Dataset.from_tensor_slices((tf.range(len(paths)), paths))
  checked = checked.map(lambda i, p: (i, tf.shape(_decode(tf.io.read_file(p)))[:2]),
                        num_parallel_calls=tf.data.AUTOTUNE)
  shapes = [None] * len(paths)
  for index, shape in checked.ignore_errors().as_numpy_iterator():
    shapes[index] = (int(shape[0]), int(shape[1]))
  return shapes


def _cache_file(cache_dir, root):
  return os.path.join(cache_dir, hashlib.sha256(root.encode()).hexdigest()[:32] + '.json')


def _read_cache(path, root):
  """{relative path: [size, mtime_ns, height, width]} of an earlier start ({} if there is none or it is
  damaged or of another version); height = width = 0: unreadable."""
  try:
    with open(path, encoding='utf-8') as f:
      cached = json.load(f)
    if cached.get('version') == CACHE_VERSION and cached.get('root') == root:
      return cached['files']
  except FileNotFoundError:
    pass
  except (OSError, ValueError, KeyError, AttributeError) as error:
    logging.info('Ignoring the image-folder cache %s (%s).', path, error)
  return {}


def _write_cache(path, root, files):
  """Writes the cache atomically (temp file + rename: a reader never sees half a file, concurrent writers
  leave one whole file); where it cannot be written, warns and carries on uncached."""
  directory = os.path.dirname(path)
  try:
    os.makedirs(directory, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=directory, prefix='.', suffix='.tmp')
    try:
      with os.fdopen(fd, 'w', encoding='utf-8') as f:
        json.dump({'version': CACHE_VERSION, 'root': root, 'files': files}, f, separators=(',', ':'))
      os.replace(temp, path)
    except BaseException:
      if os.path.exists(temp):
        os.unlink(temp)
      raise
  except OSError as error:
    logging.warning('Cannot write the image-folder cache %s (%s); the next start checks every image again.',
                    path, error)


def _folder_index(root, cache_dir):
  """{split: [(relative path, class name or None, (height, width) or None when unreadable)]}.

  The folder is listed at every start; only files whose (size, mtime_ns) are not those cached (new or
  changed) are decoded, removed files drop out of the cache, which is keyed by the folder's absolute path.
  """
  scan_ns = time.time_ns()
  splits = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if not splits:
    raise DataError(f'Image folder {root} has no split folders: expected {root}/<split>/<class>/<image>.')
  listed = {split: _scan_split(root, split) for split in splits}
  path = _cache_file(cache_dir, root)
  cached = _read_cache(path, root)
  verdicts, unknown = {}, []
  for entries in listed.values():
    for rel, _, stamp in entries:
      entry = cached.get(rel)
      if entry is not None and tuple(entry[:2]) == stamp:
        verdicts[rel] = entry
      else:
        unknown.append((rel, stamp))
  if unknown:
    shapes = _check_files([os.path.join(root, rel) for rel, _ in unknown])
    for (rel, stamp), shape in zip(unknown, shapes):
      verdicts[rel] = [*stamp, *(shape or (0, 0))]
  logging.info('Image folder %s: %d files checked, %d verdicts from the cache %s', root, len(unknown),
               len(verdicts) - len(unknown), path)
  settled = {rel: entry for rel, entry in verdicts.items() if entry[1] < scan_ns - RACY_NS}
  if settled != cached:  # files were added, changed or removed
    _write_cache(path, root, settled)
  return {split: [(rel, name, tuple(verdicts[rel][2:]) if verdicts[rel][2] else None) for rel, name, _ in entries]
          for split, entries in listed.items()}


def _folder_source(root, strict, cache_dir):
  root = os.path.abspath(root)
  index = _folder_index(root, cache_dir)
  bad = [os.path.join(root, rel) for entries in index.values() for rel, _, shape in entries if shape is None]
  if bad and strict:
    raise DataError(f'Corrupt or unreadable image: {bad[0]} ({len(bad)} in all; drop --strict_images to '
                    f'skip them).')
  if bad:
    logging.warning('Skipping %d corrupt or unreadable image(s) under %s, e.g. %s', len(bad), root, bad[:3])
  checked = {split: [(rel, name) for rel, name, shape in entries if shape] for split, entries in index.items()}
  for split, entries in checked.items():
    if not entries:
      raise DataError(f'Split folder {os.path.join(root, split)} has no readable images.')
  class_names = tuple(sorted({name for entries in index.values() for _, name, _ in entries if name}))
  label_of = {name: i for i, name in enumerate(class_names)}
  shapes = {shape for entries in index.values() for _, _, shape in entries if shape}
  image_shape = (*next(iter(shapes)), 3) if len(shapes) == 1 else None
  logging.info('Image folder %s: splits %s, %d classes, image size %s', root,
               {s: len(e) for s, e in checked.items()}, len(class_names), image_shape or 'varies')

  def read(split, input_context=None, shuffle_files=False, decode_images=True, keep_ids=None, encoded=False):
    entries = checked[split]
    ids = [rel for rel, _ in entries]
    labels = [label_of[name] if name else -1 for _, name in entries]
    ds = tf.data.Dataset.from_tensor_slices((ids, tf.constant(labels, tf.int64)))
    if input_context and input_context.num_input_pipelines > 1:
      ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if keep_ids is not None:
      keep = _id_filter(keep_ids)
      ds = ds.filter(lambda rel, _: keep(rel))
    if shuffle_files:
      ds = ds.shuffle(len(ids), reshuffle_each_iteration=True)

    def load(rel, label):
      if not decode_images:
        return {'label': label, 'id': rel}
      contents = tf.io.read_file(tf.strings.join([root + os.sep, rel]))
      if encoded:
        return {'encoded': contents, 'label': label, 'id': rel}
      return {'image': _decode(contents), 'label': label, 'id': rel}

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)

  return Source(root, class_names, {s: len(e) for s, e in checked.items()}, image_shape, read)


# ----------------------------------------------------------------------------------------------- labels


# {(id(source), split): (source, {label: sorted ids})}: a split's labels are scanned once per process (the kNN
# monitor samples its memory bank every few epochs). The source is kept so its id is not reused.
_LABELS_SCANNED = {}


def _ids_by_class(source, split):
  """{label: sorted example ids} of the labelled examples of `split`, read without decoding any image."""
  key = (id(source), split)
  if key not in _LABELS_SCANNED:
    by_class = {}
    labels_only = source.read(split, decode_images=False).map(lambda ex: (ex['id'], ex['label'])).batch(4096)
    for example_ids, labels in labels_only.as_numpy_iterator():  # in batches: per element, 50,000 take seconds
      for example_id, label in zip(example_ids, labels.tolist()):
        by_class.setdefault(label, []).append(example_id.decode())
    by_class.pop(-1, None)
    _LABELS_SCANNED[key] = source, {label: sorted(ids) for label, ids in by_class.items()}
  return _LABELS_SCANNED[key][1]


def label_fraction_subset(source, split, fraction, seed=0):
  """Class-balanced, seeded subset of `split`: round(fraction * n_c) (at least 1) examples of each class.

  Returns the sorted example ids. Deterministic for a given dataset, split, fraction and seed.
  """
  if not 0 < fraction <= 1:
    raise DataError(f'label_fraction must be in (0, 1], got {fraction}.')
  by_class = _ids_by_class(source, split)
  if not by_class:
    raise DataError(f'Split {split!r} of {source.name!r} has no labels, so it has no label fraction.')
  rng = np.random.default_rng(seed)
  chosen = []
  for label in sorted(by_class):
    ids = by_class[label]
    take = max(1, int(round(fraction * len(ids))))
    chosen += [ids[i] for i in sorted(rng.permutation(len(ids))[:take])]
  return sorted(chosen)


def sample_ids(source, split, count, seed=0):
  """Ids of `count` labelled examples of `split` in the proportions of its classes (stratified, seeded), or
  None when `count` is None or covers the split: what a "first N examples" must be instead, since an image
  folder reads its splits sorted by class (the first 20,000 CIFAR-10 train images are 4 of its 10 classes).

  Each class gets floor(count * n_c / n) examples, the remainder going to the largest fractional parts; the
  examples within a class are a seeded random choice. Returns sorted ids.
  """
  if count is None or count >= source.num_examples(split):
    return None
  by_class = _ids_by_class(source, split)
  total = sum(len(ids) for ids in by_class.values())
  if count >= total:  # the unlabelled examples are what a sample would leave out
    return sorted(i for ids in by_class.values() for i in ids)
  labels = sorted(by_class)
  shares = np.array([count * len(by_class[label]) / total for label in labels])
  takes = np.floor(shares).astype(int)
  takes[np.argsort(takes - shares, kind='stable')[:count - takes.sum()]] += 1
  rng = np.random.default_rng(seed)
  chosen = []
  for label, take in zip(labels, takes):
    ids = by_class[label]
    chosen += [ids[i] for i in rng.permutation(len(ids))[:take]]
  return sorted(chosen)


def write_label_subset(model_dir, ids, **details):
  """Writes the ids (and how they were chosen) to `model_dir/label_subset.json`; returns the path."""
  tf.io.gfile.makedirs(model_dir)
  path = os.path.join(model_dir, LABEL_SUBSET_FILE)
  with tf.io.gfile.GFile(path, 'w') as f:
    json.dump(dict(details, num_examples=len(ids), ids=list(ids)), f, indent=1)
  return path


# ----------------------------------------------------------------------------------------------- batches

# Label subsets up to this size are cached in memory, decoded (5,000 CIFAR images: 15 MB; at 224 px: 750 MB)
# or, for training on images of varying sizes, as the files' bytes.
SUBSET_CACHE_MAX_EXAMPLES = 5000


def build_dataset(source, split, batch_size, is_training, train_mode='pretrain', image_size=32,
                  color_jitter_strength=1.0, use_blur=False, cache=False, subset_ids=None, input_context=None,
                  shuffle_buffer=10_000, crop_min_area=data_util.MIN_CROP_AREA):
  """Batches of `(images, one-hot labels)` for one replica.

  Pretraining training batches are `[B, S, S, 6]` (two views stacked on channels); fine-tuning training and
  all eval batches are `[B, S, S, 3]`. Labels are one-hot `[B, num_classes]` (all zeros when unlabeled).
  Training batches are shuffled, repeated and full (`drop_remainder`); eval batches cover the split once.
  """
  # Training crops of images of varying sizes start from the files' bytes: a JPEG decodes only its windows.
  encoded = is_training and source.image_shape is None
  ds = source.read(split, input_context=input_context, shuffle_files=is_training, keep_ids=subset_ids,
                   encoded=encoded)
  ds = ds.map(lambda ex: (ex['encoded' if encoded else 'image'], tf.one_hot(ex['label'], max(source.num_classes, 1))))
  # A small label subset is kept in memory: otherwise every pass over it rescans the whole split.
  if cache or (subset_ids is not None and len(subset_ids) <= SUBSET_CACHE_MAX_EXAMPLES):
    ds = ds.cache()
  if is_training:
    ds = ds.shuffle(shuffle_buffer).repeat()
  pretrain = is_training and train_mode == 'pretrain'
  eval_crop = image_size > 32  # the authors do not crop images of 32 px or less for eval

  def geometry(images):
    if not is_training:
      return data_util.preprocess_for_eval(images, image_size, image_size, crop=eval_crop)
    if pretrain:  # both views of each image, view-major
      images = tf.concat([images, images], axis=0)
    return data_util.random_geometry(images, image_size, image_size, min_area=crop_min_area)

  def photometric(images):
    if not pretrain:
      return images
    return data_util.random_photometric(images, color_distort=True, color_jitter_strength=color_jitter_strength,
                                        blur=use_blur, num_views=2)

  if source.image_shape is not None:  # same-size images: augment whole batches at once
    ds = ds.batch(batch_size, drop_remainder=is_training)
    ds = ds.map(lambda images, labels: (photometric(geometry(images)), labels),
                num_parallel_calls=tf.data.AUTOTUNE)
  else:  # crop each image on its own, then colour whole batches
    def encoded_views(contents):
      return tf.cond(tf.io.is_jpeg(contents),
                     lambda: data_util.decode_and_random_crop(contents, image_size, image_size, 2 if pretrain else 1,
                                                                     min_area=crop_min_area),
                     lambda: geometry(_decode(contents)[None]))  # PNG, BMP, GIF: decoded whole

    def per_example(image, label):
      views = encoded_views(image) if encoded else geometry(image[None])
      return (tf.concat(tf.split(views, 2, axis=0), -1)[0] if pretrain else views[0]), label
    ds = ds.map(per_example, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=is_training)
    if pretrain:
      ds = ds.map(lambda images, labels: (photometric(tf.concat(tf.split(images, 2, axis=-1), 0)), labels),
                  num_parallel_calls=tf.data.AUTOTUNE)
  if is_training:  # full batches whose shape is known when the step is compiled (TPU, XLA)
    shape = [batch_size, image_size, image_size, 6 if pretrain else 3]
    ds = ds.map(lambda images, labels: (tf.ensure_shape(images, shape), tf.ensure_shape(labels, [batch_size, None])))
  return ds.prefetch(tf.data.AUTOTUNE)


def build_distributed_dataset(strategy, global_batch_size, source, split, **kwargs):
  """`build_dataset` per replica through `strategy.distribute_datasets_from_function`: each worker reads its
  own shard and each replica gets `global_batch_size / num_replicas` examples."""
  replicas = strategy.num_replicas_in_sync
  if global_batch_size % replicas:
    raise DataError(f'The batch size {global_batch_size} is not divisible by the {replicas} replicas.')

  def dataset_fn(input_context):
    per_replica = input_context.get_per_replica_batch_size(global_batch_size)
    return build_dataset(source, split, per_replica, input_context=input_context, **kwargs)

  return strategy.distribute_datasets_from_function(dataset_fn)


def split_batch(strategy, batch):
  """An in-memory global batch as per-replica values: replica i gets the i-th contiguous slice (benchmarks and
  tests feed `strategy.run` this way, the same split `build_distributed_dataset` makes)."""
  per_replica = int(batch.shape[0]) // strategy.num_replicas_in_sync
  return strategy.experimental_distribute_values_from_function(
      lambda ctx: batch[ctx.replica_id_in_sync_group * per_replica:(ctx.replica_id_in_sync_group + 1) * per_replica])
