"""Image files for the tests of data.py and image_folder.py."""

import os

from PIL import Image


def write_image(path, array, fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format=fmt)


def age(root, when=1_600_000_000):
  """Dates every file under `root` (or the file `root`) at `when` (s), long ago as a dataset's files are:
  files modified within image_folder.RACY_NS of a scan are checked again at the next start."""
  paths = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files] if os.path.isdir(root) else [root]
  for path in paths:
    os.utime(path, ns=(when * 10 ** 9,) * 2)
