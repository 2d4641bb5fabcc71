"""One worker of the 2-process MultiWorkerMirroredStrategy test (test_run_distributed.py starts two).

  TF_CONFIG=... python tests/multiworker_main.py <out_dir> <run.py flags...>

Runs run.py's `main` (strategy from TF_CONFIG, training, eval, export), then writes what the test compares:
`<out_dir>/worker_<task>.npz` (final weights) and `<out_dir>/ids_<task>.json` (the example ids this worker's
input pipeline reads, through the strategy's own input context).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import runtime  # pylint: disable=g-import-not-at-top
runtime.use_onednn()  # before TensorFlow loads, as run.py does

from absl import app  # pylint: disable=g-import-not-at-top
import numpy as np
import tensorflow as tf

import run
import train


def main(argv):
  out_dir = argv[1]
  task = json.loads(os.environ['TF_CONFIG'])['task']['index']
  captured = {}
  train_fn = train.train

  def capture_train(cfg, strategy, source, chief, *args):
    model, step = train_fn(cfg, strategy, source, chief, *args)
    captured.update(model=model, cfg=cfg, strategy=strategy, source=source)
    return model, step

  train.train = capture_train
  run.main(argv[:1])
  model, cfg, strategy, source = (captured[k] for k in ('model', 'cfg', 'strategy', 'source'))
  np.savez(os.path.join(out_dir, f'worker_{task}.npz'), *[v.numpy() for v in model.weights])

  contexts = []  # the input context the strategy gives this worker's dataset function
  strategy.distribute_datasets_from_function(lambda context: contexts.append(context) or tf.data.Dataset.range(1))
  local = [ex['id'].numpy().decode() for ex in source.read(cfg.data.train_split, contexts[0], decode_images=False)]
  with open(os.path.join(out_dir, f'ids_{task}.json'), 'w') as f:
    json.dump(local, f)


if __name__ == '__main__':
  # run.py's flags follow the output directory; absl parses them for run.main.
  out = sys.argv[1]
  app.run(lambda argv: main([argv[0], out]), argv=[sys.argv[0], *sys.argv[2:]])
