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
import io
import os
import socket
import typing
import urllib.parse

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import config as config_lib
import data_util
import image_folder
import shapes_dataset

DataError = image_folder.DataError  # data.DataError: what every data problem raises

EMBEDDED_DATASET = config_lib.EMBEDDED_DATASET
FOLDER_HINT = 'or pass an image folder laid out <root>/<split>/<class>/<image> as --dataset=/path/to/root'


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
  image_shape: typing.Optional[tuple]
  read: typing.Callable[..., tf.data.Dataset]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def num_examples(self, split: str) -> int:
    if split not in self.split_sizes:
      raise DataError(f'Split {split!r} is not in dataset {self.name!r}; it has {sorted(self.split_sizes)}.')
    return self.split_sizes[split]


def load_source(dataset: str, data_dir: typing.Optional[str] = None, strict_images: bool = False,
                cache_dir: typing.Optional[str] = None) -> Source:
  """The `Source` for a TFDS name, an image folder, or the embedded dataset.

  An image folder's scan and image check are cached in `cache_dir` (default:
  `image_folder.default_cache_dir()`).
  """
  if not dataset:
    raise DataError(f'--dataset is empty: give a TFDS name, {EMBEDDED_DATASET!r}, {FOLDER_HINT}.')
  if os.path.isdir(os.path.expanduser(dataset)):
    return _folder_source(os.path.expanduser(dataset), strict_images,
                          cache_dir or image_folder.default_cache_dir())
  if dataset.startswith(('/', '.', '~')):
    raise DataError(f'Image folder {dataset} does not exist (--dataset is a path).')
  return _tfds_source(dataset, data_dir)


# ----------------------------------------------------------------------------------------------- TFDS


def _tfds_source(name: str, data_dir: typing.Optional[str]) -> Source:
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

  def read(split: str, input_context: typing.Optional[tf.distribute.InputContext] = None,
           shuffle_files: bool = False, decode_images: bool = True,
           keep_ids: typing.Optional[typing.Sequence[str]] = None, encoded: bool = False) -> tf.data.Dataset:
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


def _id_filter(keep_ids: typing.Sequence[str]) -> typing.Callable[[tf.Tensor], tf.Tensor]:
  """A predicate on string example ids: is the id in `keep_ids`?"""
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(list(keep_ids)), tf.ones([len(keep_ids)], tf.int32)),
      default_value=0)
  return lambda example_id: table.lookup(example_id) > 0


def _tfds_example(example: dict, image: bool = True, encoded: bool = False) -> dict:
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


def _prepare(builder: tfds.core.DatasetBuilder, name: str, data_dir: typing.Optional[str]) -> None:
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


def _unreachable_host(builder: tfds.core.DatasetBuilder, timeout: float = 5.0) -> typing.Optional[str]:
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


def _folder_source(root: str, strict: bool, cache_dir: str) -> Source:
  root = os.path.abspath(root)
  index = image_folder.index(root, cache_dir)
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

  def read(split: str, input_context: typing.Optional[tf.distribute.InputContext] = None,
           shuffle_files: bool = False, decode_images: bool = True,
           keep_ids: typing.Optional[typing.Sequence[str]] = None, encoded: bool = False) -> tf.data.Dataset:
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
      return {'image': image_folder.decode(contents), 'label': label, 'id': rel}

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)

  return Source(root, class_names, {s: len(e) for s, e in checked.items()}, image_shape, read)


# ----------------------------------------------------------------------------------------------- labels


# {(id(source), split): (source, {label: sorted ids})}: a split's labels are scanned once per process (the kNN
# monitor samples its memory bank every few epochs). The source is kept so its id is not reused.
_LABELS_SCANNED = {}


def _ids_by_class(source: Source, split: str) -> dict[int, list[str]]:
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


def label_fraction_subset(source: Source, split: str, fraction: float, seed: int = 0) -> list[str]:
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


def sample_ids(source: Source, split: str, count: typing.Optional[int], seed: int = 0) -> typing.Optional[list[str]]:
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


# ----------------------------------------------------------------------------------------------- batches

# Label subsets up to this size are cached in memory, decoded (5,000 CIFAR images: 15 MB; at 224 px: 750 MB)
# or, for training on images of varying sizes, as the files' bytes.
SUBSET_CACHE_MAX_EXAMPLES = 5000


def build_dataset(source: Source, split: str, batch_size: int, settings: config_lib.DataConfig, is_training: bool,
                  train_mode: typing.Optional[str] = None, subset_ids: typing.Optional[typing.Sequence[str]] = None,
                  input_context: typing.Optional[tf.distribute.InputContext] = None,
                  shuffle_buffer: int = 10_000) -> tf.data.Dataset:
  """Batches of `(images, one-hot labels)` for one replica, augmented as `settings` (a DataConfig: image size,
  colour strength, blur, smallest crop, in-memory cache) says; `train_mode` says how many views training needs.

  Pretraining training batches are `[B, S, S, 6]` (two views stacked on channels); fine-tuning training and
  all eval batches are `[B, S, S, 3]`. Labels are one-hot `[B, num_classes]` (all zeros when unlabeled).
  Training batches are shuffled, repeated and full (`drop_remainder`); eval batches cover the split once.
  """
  image_size, crop_min_area = settings.image_size, settings.crop_min_area
  color_jitter_strength, use_blur, cache = settings.color_jitter_strength, settings.use_blur, settings.cache_dataset
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
  if is_training and train_mode is None:
    raise ValueError('build_dataset(is_training=True) needs the train_mode (how many views a batch holds).')
  views = config_lib.TRAIN_MODE[train_mode].views if is_training else 1
  pretrain = views == 2
  eval_crop = image_size > 32  # the authors do not crop images of 32 px or less for eval

  def eval_view(images):
    return data_util.preprocess_for_eval(images, image_size, image_size, crop=eval_crop)

  def crops(images):  # every training view of each image, view-major: random crop and flip
    return data_util.random_geometry(tf.concat([images] * views, axis=0), image_size, image_size,
                                     min_area=crop_min_area)

  if source.image_shape is not None:  # same-size images: augment whole batches at once
    if not is_training:
      augment = eval_view
    elif pretrain:
      augment = lambda images: data_util.pretrain_views(
          images, image_size, image_size, color_jitter_strength, use_blur, views, min_area=crop_min_area)
    else:
      augment = crops
    ds = ds.batch(batch_size, drop_remainder=is_training)
    ds = ds.map(lambda images, labels: (augment(images), labels), num_parallel_calls=tf.data.AUTOTUNE)
  else:  # crop each image on its own, then colour whole batches
    def per_example(image, label):
      if not is_training:
        return eval_view(image[None])[0], label
      if encoded:  # a JPEG decodes only its crop windows; PNG, BMP, GIF are decoded whole
        image_views = tf.cond(
            tf.io.is_jpeg(image),
            lambda: data_util.decode_and_random_crop(image, image_size, image_size, views, min_area=crop_min_area),
            lambda: crops(image_folder.decode(image)[None]))
      else:
        image_views = crops(image[None])
      return data_util.stack_views(image_views, views)[0], label
    ds = ds.map(per_example, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=is_training)
    if pretrain:
      ds = ds.map(lambda images, labels: (data_util.random_photometric(
          data_util.unstack_views(images, views), color_jitter_strength=color_jitter_strength, blur=use_blur,
          num_views=views), labels), num_parallel_calls=tf.data.AUTOTUNE)
  if is_training:  # full batches whose shape is known when the step is compiled (TPU, XLA)
    shape = [batch_size, image_size, image_size, 3 * views]
    ds = ds.map(lambda images, labels: (tf.ensure_shape(images, shape), tf.ensure_shape(labels, [batch_size, None])))
  return ds.prefetch(tf.data.AUTOTUNE)


def build_distributed_dataset(strategy: tf.distribute.Strategy, global_batch_size: int, source: Source, split: str,
                              **kwargs) -> tf.distribute.DistributedDataset:
  """`build_dataset` per replica through `strategy.distribute_datasets_from_function`: each worker reads its
  own shard and each replica gets `global_batch_size / num_replicas` examples."""
  replicas = strategy.num_replicas_in_sync
  if global_batch_size % replicas:
    raise DataError(f'The batch size {global_batch_size} is not divisible by the {replicas} replicas.')

  def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    per_replica = input_context.get_per_replica_batch_size(global_batch_size)
    return build_dataset(source, split, per_replica, input_context=input_context, **kwargs)

  return strategy.distribute_datasets_from_function(dataset_fn)


def split_batch(strategy: tf.distribute.Strategy, batch: tf.Tensor) -> tf.distribute.DistributedValues:
  """An in-memory global batch as per-replica values: replica i gets the i-th contiguous slice (benchmarks and
  tests feed `strategy.run` this way, the same split `build_distributed_dataset` makes)."""
  per_replica = int(batch.shape[0]) // strategy.num_replicas_in_sync
  return strategy.experimental_distribute_values_from_function(
      lambda ctx: batch[ctx.replica_id_in_sync_group * per_replica:(ctx.replica_id_in_sync_group + 1) * per_replica])
