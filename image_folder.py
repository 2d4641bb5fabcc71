"""An image folder `<root>/<split>/<class>/<image>`: its listing, and which files decode, remembered between starts.

A folder of a million images is listed at every start (one scandir per folder, one stat per file), but each
image is decoded to check it only once: the verdicts -- (height, width), or unreadable -- are cached in
`$XDG_CACHE_HOME/simclr_tf2/image_folders/<hash of the root>.json`, keyed by each file's size and mtime, so a
new, changed or removed file is noticed and only it is checked again. data.py builds the dataset from the
index.
"""

import hashlib
import json
import os
import tempfile
import time
import typing

from absl import logging
import tensorflow as tf

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif')


class DataError(ValueError):
  """Data that cannot be used as asked; the message says what to do."""


CACHE_VERSION = 1  # of the cache file's layout and of what a verdict means (tf.io.decode_image, 3 channels)
# A file modified this close to (or after) the scan that checked it keeps no cached verdict: rewritten within
# the filesystem's timestamp granularity at the same size, it would otherwise look unchanged.
RACY_NS = 2_000_000_000


def default_cache_dir() -> str:
  """Where image-folder indexes live: `$XDG_CACHE_HOME/simclr_tf2/image_folders` (default ~/.cache/...)."""
  base = os.environ.get('XDG_CACHE_HOME', '')
  if not os.path.isabs(base):  # the XDG spec says relative paths are to be ignored
    base = os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'simclr_tf2', 'image_folders')


def _stamp(entry: os.DirEntry) -> tuple[int, int]:
  """(size, mtime_ns) of a directory entry: what says a file changed. (-1, -1) when it cannot be stat'ed
  (e.g. a broken link), which the check then finds unreadable."""
  try:
    stat = entry.stat()
  except OSError:
    return -1, -1
  return stat.st_size, stat.st_mtime_ns


def _images_in(directory: str) -> list[os.DirEntry]:
  """The image entries of a directory, sorted by name."""
  with os.scandir(directory) as entries:
    return sorted((e for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS)), key=lambda e: e.name)


def _scan_split(root: str, split: str) -> list[tuple]:
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


def decode(contents: tf.Tensor) -> tf.Tensor:
  return tf.ensure_shape(tf.io.decode_image(contents, channels=3, expand_animations=False), [None, None, 3])


def _check_files(paths: typing.Sequence[str]) -> list[typing.Optional[tuple[int, int]]]:
  """Decodes each file once -> [(height, width), or None when it is corrupt or unreadable]."""
  checked = tf.data.Dataset.from_tensor_slices((tf.range(len(paths)), paths))
  checked = checked.map(lambda i, p: (i, tf.shape(decode(tf.io.read_file(p)))[:2]),
                        num_parallel_calls=tf.data.AUTOTUNE)
  shapes = [None] * len(paths)
  for index, shape in checked.ignore_errors().as_numpy_iterator():
    shapes[index] = (int(shape[0]), int(shape[1]))
  return shapes


def _cache_file(cache_dir: str, root: str) -> str:
  return os.path.join(cache_dir, hashlib.sha256(root.encode()).hexdigest()[:32] + '.json')


def _read_cache(path: str, root: str) -> dict:
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


def _write_cache(path: str, root: str, files: dict) -> None:
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


def index(root: str, cache_dir: str) -> dict[str, list[tuple]]:
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
